"""Datasets and dataset mappers; importing this package registers the datasets."""
from . import datasets
from .dataset_mappers import COCOPanopticLSJDatasetMapper, build_train_mapper

__all__ = ["COCOPanopticLSJDatasetMapper", "build_train_mapper"]

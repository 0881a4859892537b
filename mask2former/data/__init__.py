"""Datasets and dataset mappers; importing this package registers the datasets."""
from . import datasets
from .dataset_mappers import (
    COCOInstanceNewBaselineDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    COCOPanopticNewBaselineDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    build_train_mapper,
)

__all__ = [
    "COCOInstanceNewBaselineDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "COCOPanopticNewBaselineDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "build_train_mapper",
]

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
from .datasets import register_instance_dataset, register_panoptic_annos_sem_seg, register_semantic_dataset

__all__ = [
    "COCOInstanceNewBaselineDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "COCOPanopticNewBaselineDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "build_train_mapper",
    "register_instance_dataset",
    "register_panoptic_annos_sem_seg",
    "register_semantic_dataset",
]

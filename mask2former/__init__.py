"""Mask2Former on detectron2: importing the package registers its components and datasets."""
from . import data, modeling
from .config import add_maskformer2_config, get_maskformer2_cfg
from .data import (
    COCOInstanceNewBaselineDatasetMapper,
    COCOPanopticNewBaselineDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from .evaluation import InstanceSegEvaluator
from .test_time_augmentation import SemanticSegmentorWithTTA

__all__ = [
    "COCOInstanceNewBaselineDatasetMapper",
    "COCOPanopticNewBaselineDatasetMapper",
    "InstanceSegEvaluator",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "SemanticSegmentorWithTTA",
    "add_maskformer2_config",
    "get_maskformer2_cfg",
]

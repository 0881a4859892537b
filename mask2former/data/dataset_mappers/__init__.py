"""Training dataset mappers, selected by INPUT.DATASET_MAPPER_NAME (the original's names and classes)."""
from .coco_instance_lsj_dataset_mapper import COCOInstanceLSJDatasetMapper
from .coco_panoptic_lsj_dataset_mapper import (
    COCOPanopticLSJDatasetMapper,
    COCOPanopticNewBaselineDatasetMapper,
    build_lsj_augmentations,
)
from .mask_former_instance_dataset_mapper import MaskFormerInstanceDatasetMapper
from .mask_former_panoptic_dataset_mapper import MaskFormerPanopticDatasetMapper
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper, build_crop_augmentations
from .unreadable import SkippedFileCounter, TrainingFileReader, UnreadableFileError

# The original's name of the coco_instance_lsj mapper.
COCOInstanceNewBaselineDatasetMapper = COCOInstanceLSJDatasetMapper

__all__ = [
    "COCOInstanceLSJDatasetMapper",
    "COCOInstanceNewBaselineDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "COCOPanopticNewBaselineDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "SkippedFileCounter",
    "TRAIN_MAPPERS",
    "TrainingFileReader",
    "UnreadableFileError",
    "build_crop_augmentations",
    "build_lsj_augmentations",
    "build_train_mapper",
]

TRAIN_MAPPERS = {
    "mask_former_semantic": MaskFormerSemanticDatasetMapper,
    "mask_former_instance": MaskFormerInstanceDatasetMapper,
    "mask_former_panoptic": MaskFormerPanopticDatasetMapper,
    "coco_instance_lsj": COCOInstanceLSJDatasetMapper,
    "coco_panoptic_lsj": COCOPanopticLSJDatasetMapper,
}


def build_train_mapper(cfg):
    """The training mapper named by INPUT.DATASET_MAPPER_NAME."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in TRAIN_MAPPERS:
        raise ValueError(
            f"INPUT.DATASET_MAPPER_NAME={name!r} is not a training mapper; choose one of {sorted(TRAIN_MAPPERS)}"
        )
    return TRAIN_MAPPERS[name](cfg, is_train=True)

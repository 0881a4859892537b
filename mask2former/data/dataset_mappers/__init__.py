"""Training dataset mappers, selected by INPUT.DATASET_MAPPER_NAME."""
from .coco_panoptic_lsj_dataset_mapper import COCOPanopticLSJDatasetMapper, build_lsj_augmentations

__all__ = ["COCOPanopticLSJDatasetMapper", "build_lsj_augmentations", "build_train_mapper", "TRAIN_MAPPERS"]

TRAIN_MAPPERS = {"coco_panoptic_lsj": COCOPanopticLSJDatasetMapper}


def build_train_mapper(cfg):
    """The training mapper named by INPUT.DATASET_MAPPER_NAME."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in TRAIN_MAPPERS:
        raise ValueError(
            f"INPUT.DATASET_MAPPER_NAME={name!r} is not available; choose one of {sorted(TRAIN_MAPPERS)} "
            "(the COCO panoptic configs use 'coco_panoptic_lsj')"
        )
    return TRAIN_MAPPERS[name](cfg, is_train=True)

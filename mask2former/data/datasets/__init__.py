"""Dataset registrations; importing this package registers them (lazily: no annotation file is read)."""
from . import (
    register_ade20k_full,
    register_ade20k_instance,
    register_ade20k_panoptic,
    register_ade20k_sem_seg,
    register_coco_panoptic_annos_semseg,
    register_custom,
    register_detectron2_builtins,
    register_mapillary_vistas,
    register_mapillary_vistas_panoptic,
    register_toy_panoptic,
)
from .register_coco_panoptic_annos_semseg import (
    coco_panoptic_metadata,
    load_panoptic_json,
    register_panoptic_annos_sem_seg,
)
from .register_custom import (
    load_instance_json,
    load_semantic_folders,
    register_instance_dataset,
    register_semantic_dataset,
)

__all__ = [
    "coco_panoptic_metadata",
    "load_instance_json",
    "load_panoptic_json",
    "load_semantic_folders",
    "register_instance_dataset",
    "register_panoptic_annos_sem_seg",
    "register_semantic_dataset",
]

"""Dataset registrations; importing this package registers them (lazily: no annotation file is read)."""
from . import (
    register_ade20k_full,
    register_ade20k_instance,
    register_ade20k_panoptic,
    register_ade20k_sem_seg,
    register_coco_panoptic_annos_semseg,
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

__all__ = ["coco_panoptic_metadata", "load_panoptic_json", "register_panoptic_annos_sem_seg"]

"""
Mapillary Vistas v1.2 panoptic segmentation, ``mapillary_vistas_panoptic_{train,val}``, under the original
Mask2Former's names and metadata (``evaluator_type`` "mapillary_vistas_panoptic_seg", ignore label 65).

Layout under ``$DETECTRON2_DATASETS/mapillary_vistas/{training,validation}``: ``images/*.jpg``, the panoptic PNGs
and ``panoptic_2018.json`` in ``panoptic/``, and the semantic ``labels/*.png``. Registration only records paths.
"""
import os

from .categories import mapillary_vistas_panoptic_metadata
from .loaders import datasets_root, register_panoptic_folders
from .register_mapillary_vistas import MAPILLARY_IGNORE_LABEL, MAPILLARY_SPLITS, mapillary_how_to_prepare

__all__ = ["register_all_mapillary_vistas_panoptic"]


def register_all_mapillary_vistas_panoptic(root):
    """Register ``mapillary_vistas_panoptic_{train,val}`` for the mapillary_vistas folder under ``root``."""
    vistas_root = os.path.join(root, "mapillary_vistas")
    how_to_prepare = mapillary_how_to_prepare(vistas_root)
    metadata = mapillary_vistas_panoptic_metadata()
    for split, dirname in MAPILLARY_SPLITS.items():
        register_panoptic_folders(
            f"mapillary_vistas_panoptic_{split}",
            metadata,
            image_root=os.path.join(vistas_root, dirname, "images"),
            panoptic_root=os.path.join(vistas_root, dirname, "panoptic"),
            panoptic_json=os.path.join(vistas_root, dirname, "panoptic", "panoptic_2018.json"),
            sem_seg_root=os.path.join(vistas_root, dirname, "labels"),
            json_file=None,
            evaluator_type="mapillary_vistas_panoptic_seg",
            ignore_label=MAPILLARY_IGNORE_LABEL,
            how_to_prepare=how_to_prepare,
        )


register_all_mapillary_vistas_panoptic(datasets_root())

"""
Mapillary Vistas v1.2 semantic segmentation, ``mapillary_vistas_sem_seg_{train,val}``, under the original
Mask2Former's names and metadata: 65 classes, label value 65 ("unlabeled") ignored.

Layout under ``$DETECTRON2_DATASETS/mapillary_vistas``: ``{training,validation}/images/*.jpg`` and
``{training,validation}/labels/*.png`` (the release's v1.2 labels; ``datasets/prepare_mapillary_vistas.py`` checks
the layout and links the v1.2 folders of a v2.0 download into place). Registration only records paths.
"""
import os

from .categories import mapillary_vistas_sem_seg_metadata
from .loaders import datasets_root, register_sem_seg_folders

__all__ = ["MAPILLARY_IGNORE_LABEL", "MAPILLARY_SPLITS", "mapillary_how_to_prepare", "register_all_mapillary_vistas"]

MAPILLARY_SPLITS = {"train": "training", "val": "validation"}
MAPILLARY_IGNORE_LABEL = 65


def mapillary_how_to_prepare(vistas_root):
    """The fix named by errors about a missing mapillary_vistas folder."""
    return (
        f"unpack the Mapillary Vistas release so that {vistas_root}/{{training,validation}} exist, then run "
        f"`python datasets/prepare_mapillary_vistas.py --root {vistas_root}` (datasets/README.md); "
        "or point DETECTRON2_DATASETS at the folder that contains mapillary_vistas/"
    )


def register_all_mapillary_vistas(root):
    """Register ``mapillary_vistas_sem_seg_{train,val}`` for the mapillary_vistas folder under ``root``."""
    vistas_root = os.path.join(root, "mapillary_vistas")
    how_to_prepare = mapillary_how_to_prepare(vistas_root)
    for split, dirname in MAPILLARY_SPLITS.items():
        image_root = os.path.join(vistas_root, dirname, "images")
        sem_seg_root = os.path.join(vistas_root, dirname, "labels")
        register_sem_seg_folders(
            f"mapillary_vistas_sem_seg_{split}",
            image_root,
            sem_seg_root,
            mapillary_vistas_sem_seg_metadata(),
            ignore_label=MAPILLARY_IGNORE_LABEL,
            how_to_prepare=how_to_prepare,
        )


register_all_mapillary_vistas(datasets_root())

"""
ADE20K panoptic segmentation, ``ade20k_panoptic_{train,val}``, under the original Mask2Former's names and metadata
(``evaluator_type`` "ade20k_panoptic_seg": PQ, plus mask AP against the instance json and mIoU against the
semantic PNGs).

Layout under ``$DETECTRON2_DATASETS/ADEChallengeData2016``: ``images/{training,validation}``, the panoptic PNGs
``ade20k_panoptic_{train,val}/`` and ``ade20k_panoptic_{train,val}.json`` (``datasets/prepare_ade20k_pan_seg.py``),
the semantic PNGs ``annotations_detectron2/`` (``datasets/prepare_ade20k_sem_seg.py``) and
``ade20k_instance_{train,val}.json`` (``datasets/prepare_ade20k_ins_seg.py``). Registration only records paths.
"""
import os

from .categories import ade20k_panoptic_metadata
from .loaders import datasets_root, register_panoptic_folders
from .register_ade20k_sem_seg import ADE20K_SPLITS, ade20k_how_to_prepare

__all__ = ["register_all_ade20k_panoptic"]


def register_all_ade20k_panoptic(root):
    """Register ``ade20k_panoptic_{train,val}`` for the ADEChallengeData2016 folder under ``root``."""
    ade_root = os.path.join(root, "ADEChallengeData2016")
    how_to_prepare = ade20k_how_to_prepare(
        ade_root, "prepare_ade20k_sem_seg.py", "prepare_ade20k_pan_seg.py", "prepare_ade20k_ins_seg.py"
    )
    metadata = ade20k_panoptic_metadata()
    for split, dirname in ADE20K_SPLITS.items():
        register_panoptic_folders(
            f"ade20k_panoptic_{split}",
            metadata,
            image_root=os.path.join(ade_root, "images", dirname),
            panoptic_root=os.path.join(ade_root, f"ade20k_panoptic_{split}"),
            panoptic_json=os.path.join(ade_root, f"ade20k_panoptic_{split}.json"),
            sem_seg_root=os.path.join(ade_root, "annotations_detectron2", dirname),
            json_file=os.path.join(ade_root, f"ade20k_instance_{split}.json"),
            evaluator_type="ade20k_panoptic_seg",
            ignore_label=255,
            how_to_prepare=how_to_prepare,
        )


register_all_ade20k_panoptic(datasets_root())

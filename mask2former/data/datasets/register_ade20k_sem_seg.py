"""
ADE20K (SceneParse150) semantic segmentation, ``ade20k_sem_seg_{train,val}``: detectron2's names, layout and
metadata, plus the class colors, with loading that names a missing folder and the command that prepares it.

Layout under ``$DETECTRON2_DATASETS/ADEChallengeData2016``: ``images/{training,validation}/*.jpg`` and
``annotations_detectron2/{training,validation}/*.png`` (class 0..149, 255 ignored), written by
``datasets/prepare_ade20k_sem_seg.py``. Registration only records paths.
"""
import os

from .categories import ade20k_sem_seg_metadata
from .loaders import datasets_root, register_sem_seg_folders

__all__ = ["ade20k_how_to_prepare", "register_all_ade20k_sem_seg"]

ADE20K_SPLITS = {"train": "training", "val": "validation"}


def ade20k_how_to_prepare(ade_root, *scripts):
    """The fix named by errors about a missing file under ADEChallengeData2016: the prep ``scripts`` to run."""
    commands = " and ".join(f"`python datasets/{script} --root {ade_root}`" for script in scripts)
    return (
        f"unpack ADEChallengeData2016.zip (and, for panoptic or instance segmentation, annotations_instance.tar) "
        f"so that {ade_root} exists, then run {commands} (datasets/README.md); "
        "or point DETECTRON2_DATASETS at the folder that contains ADEChallengeData2016/"
    )


def register_all_ade20k_sem_seg(root):
    """Register ``ade20k_sem_seg_{train,val}`` for the ADEChallengeData2016 folder under ``root``."""
    ade_root = os.path.join(root, "ADEChallengeData2016")
    how_to_prepare = ade20k_how_to_prepare(ade_root, "prepare_ade20k_sem_seg.py")
    for split, dirname in ADE20K_SPLITS.items():
        image_root = os.path.join(ade_root, "images", dirname)
        sem_seg_root = os.path.join(ade_root, "annotations_detectron2", dirname)
        register_sem_seg_folders(
            f"ade20k_sem_seg_{split}",
            image_root,
            sem_seg_root,
            ade20k_sem_seg_metadata(),
            ignore_label=255,
            how_to_prepare=how_to_prepare,
        )


register_all_ade20k_sem_seg(datasets_root())

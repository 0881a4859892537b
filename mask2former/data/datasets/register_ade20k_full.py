"""
ADE20K-full semantic segmentation (847 classes), ``ade20k_full_sem_seg_{train,val}``, under the original
Mask2Former's names and metadata. Labels are 16-bit TIFFs (class 0..846, 65535 ignored).

Layout under ``$DETECTRON2_DATASETS/ADE20K_2021_17_01``: ``images_detectron2/{training,validation}/*.jpg`` and
``annotations_detectron2/{training,validation}/*.tif``, written from the ADE20K 2021 release by
``datasets/prepare_ade20k_full_sem_seg.py``. Registration only records paths.
"""
import os

from .categories import ade20k_full_metadata
from .loaders import datasets_root, register_sem_seg_folders
from .register_ade20k_sem_seg import ADE20K_SPLITS

__all__ = ["register_all_ade20k_full"]


def register_all_ade20k_full(root):
    """Register ``ade20k_full_sem_seg_{train,val}`` for the ADE20K_2021_17_01 folder under ``root``."""
    full_root = os.path.join(root, "ADE20K_2021_17_01")
    how_to_prepare = (
        f"unpack the ADE20K 2021 release (ADE20K_2021_17_01.zip) so that {full_root} exists, then run "
        f"`python datasets/prepare_ade20k_full_sem_seg.py --root {full_root}` (datasets/README.md); "
        "or point DETECTRON2_DATASETS at the folder that contains ADE20K_2021_17_01/"
    )
    for split, dirname in ADE20K_SPLITS.items():
        image_root = os.path.join(full_root, "images_detectron2", dirname)
        sem_seg_root = os.path.join(full_root, "annotations_detectron2", dirname)
        register_sem_seg_folders(
            f"ade20k_full_sem_seg_{split}",
            image_root,
            sem_seg_root,
            ade20k_full_metadata(),
            ignore_label=65535,
            how_to_prepare=how_to_prepare,
            gt_ext="tif",
        )


register_all_ade20k_full(datasets_root())

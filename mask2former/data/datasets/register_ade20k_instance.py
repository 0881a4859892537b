"""
ADE20K instance segmentation (the 100 thing classes), ``ade20k_instance_{train,val}``: COCO-format instance jsons
registered as the original Mask2Former does (detectron2's COCO loader, ``evaluator_type`` "coco").

Layout under ``$DETECTRON2_DATASETS/ADEChallengeData2016``: ``images/{training,validation}`` and
``ade20k_instance_{train,val}.json``, written by ``datasets/prepare_ade20k_ins_seg.py``. Registration only
records paths.
"""
import os
from functools import partial

from .categories import ade20k_instance_metadata
from .loaders import datasets_root, load_coco_json_checked, register_replacing
from .register_ade20k_sem_seg import ADE20K_SPLITS, ade20k_how_to_prepare

__all__ = ["register_all_ade20k_instance"]


def register_all_ade20k_instance(root):
    """Register ``ade20k_instance_{train,val}`` for the ADEChallengeData2016 folder under ``root``."""
    ade_root = os.path.join(root, "ADEChallengeData2016")
    how_to_prepare = ade20k_how_to_prepare(ade_root, "prepare_ade20k_ins_seg.py")
    for split, dirname in ADE20K_SPLITS.items():
        name = f"ade20k_instance_{split}"
        json_file = os.path.join(ade_root, f"ade20k_instance_{split}.json")
        image_root = os.path.join(ade_root, "images", dirname)
        register_replacing(
            name,
            partial(load_coco_json_checked, json_file, image_root, name, how_to_prepare=how_to_prepare),
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
            **ade20k_instance_metadata(),
        )


register_all_ade20k_instance(datasets_root())

"""
Cityscapes label files that detectron2's Cityscapes datasets read, made with the official ``cityscapesscripts``
(pip install cityscapesscripts==2.3.0): ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` from the polygons
(what its ``createTrainIdLabelImgs`` does, here in parallel) and, with its ``createPanopticImgs``,
``gtFine/cityscapes_panoptic_<split>/`` + ``gtFine/cityscapes_panoptic_<split>.json`` from the instance-id PNGs.
"""
import glob
import os

from ..datasets.loaders import require_paths
from .common import map_with_progress

__all__ = ["create_panoptic_images", "create_train_id_label_images", "label_train_ids"]

_HOW_TO = (
    "download gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip from cityscapes-dataset.com and unpack them "
    "as described in datasets/README.md"
)


def _cityscapesscripts():
    try:
        from cityscapesscripts.preparation import createPanopticImgs, json2labelImg
    except ImportError as e:
        raise ImportError(
            f"preparing Cityscapes needs cityscapesscripts ({e}): pip install cityscapesscripts==2.3.0"
        ) from e
    return createPanopticImgs, json2labelImg


def label_train_ids(polygons_json):
    """Write the ``_labelTrainIds.png`` of one ``_polygons.json``."""
    _, json2labelImg = _cityscapesscripts()
    target = polygons_json.replace("_polygons.json", "_labelTrainIds.png")
    json2labelImg.json2labelImg(polygons_json, target, "trainIds")


def create_train_id_label_images(cityscapes_root, *, workers=1):
    """Write every ``gtFine/*/*/*_gtFine_labelTrainIds.png``; returns how many."""
    gt_dir = os.path.join(cityscapes_root, "gtFine")
    require_paths([gt_dir], _HOW_TO)
    files = sorted(glob.glob(os.path.join(gt_dir, "*", "*", "*_gtFine_polygons.json")))
    if not files:
        raise FileNotFoundError(f"{gt_dir} holds no */*/*_gtFine_polygons.json: {_HOW_TO}")
    _cityscapesscripts()
    map_with_progress(label_train_ids, files, workers=workers, label="labelTrainIds")
    return len(files)


def create_panoptic_images(cityscapes_root, splits=("train", "val")):
    """Write the panoptic PNGs and json of each split (category ids are Cityscapes label ids, as detectron2 reads)."""
    createPanopticImgs, _ = _cityscapesscripts()
    gt_dir = os.path.join(cityscapes_root, "gtFine")
    for split in splits:
        if not glob.glob(os.path.join(gt_dir, split, "*", "*_gtFine_instanceIds.png")):
            split_dir = os.path.join(gt_dir, split)
            raise FileNotFoundError(f"{split_dir} holds no */*_gtFine_instanceIds.png: {_HOW_TO}")
    createPanopticImgs.convert2panoptic(cityscapesPath=gt_dir, outputFolder=gt_dir, setNames=list(splits))
    return [os.path.join(gt_dir, f"cityscapes_panoptic_{split}.json") for split in splits]

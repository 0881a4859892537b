"""
The detectron2 built-in datasets that Mask2Former's configs use — COCO instance segmentation
``coco_2017_{train,val}`` and Cityscapes ``cityscapes_fine_{sem_seg,instance_seg,panoptic}_{train,val}`` — kept
under detectron2's names, layouts, loaders and metadata. Their loaders are wrapped so that a missing folder or
unprepared label file raises ``FileNotFoundError`` naming it and the command that prepares it, instead of an
empty listing or a bare assertion deep inside detectron2.
"""
import glob
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.builtin import register_all_cityscapes as d2_register_all_cityscapes
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.data.datasets.cityscapes_panoptic import register_all_cityscapes_panoptic

from .loaders import datasets_root, require_paths

__all__ = ["register_all_cityscapes_checked", "register_coco_instances_checked"]

COCO_INSTANCE_SPLITS = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}
CITYSCAPES_TASKS = ("sem_seg", "instance_seg", "panoptic")
CITYSCAPES_SPLITS = ("train", "val")


def _wrap_loader(name, check):
    """Re-register the loader of ``name`` so that ``check(metadata)`` runs first; the metadata is kept."""
    loader = DatasetCatalog[name]

    def load():
        check(MetadataCatalog.get(name))
        return loader()

    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, load)


def _remove(names):
    for name in names:
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def register_coco_instances_checked(root):
    """(Re-)register ``coco_2017_{train,val}`` for the coco folder under ``root``, with detectron2's metadata."""
    how_to_prepare = (
        "download the COCO 2017 images and annotations and lay them out as described in datasets/README.md, "
        "or point DETECTRON2_DATASETS at the folder that contains coco/"
    )
    _remove(COCO_INSTANCE_SPLITS)
    for name, (image_root, json_file) in COCO_INSTANCE_SPLITS.items():
        metadata = _get_builtin_metadata("coco")
        register_coco_instances(name, metadata, os.path.join(root, json_file), os.path.join(root, image_root))
        _wrap_loader(name, lambda meta: require_paths([meta.json_file, meta.image_root], how_to_prepare))


def _check_train_ids(gt_dir, how_to_prepare):
    """The ``*_labelTrainIds.png`` of the first annotated image under ``gt_dir`` exists (written by the prep script)."""
    polygons = sorted(glob.glob(os.path.join(gt_dir, "*", "*_gtFine_polygons.json")))
    if not polygons:
        raise FileNotFoundError(f"{gt_dir} holds no */*_gtFine_polygons.json: {how_to_prepare}")
    require_paths([polygons[0].replace("_polygons.json", "_labelTrainIds.png")], how_to_prepare)


def register_all_cityscapes_checked(root):
    """
    (Re-)register the Cityscapes fine splits for the cityscapes folder under ``root`` with detectron2's own
    registration functions, then wrap their train/val loaders with the checks.
    """
    cityscapes_root = os.path.join(root, "cityscapes")
    how_to_prepare = (
        f"download gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip into {cityscapes_root}, then run "
        f"`python datasets/prepare_cityscapes.py --root {cityscapes_root}` (datasets/README.md); "
        "or point DETECTRON2_DATASETS at the folder that contains cityscapes/"
    )
    _remove(f"cityscapes_fine_{t}_{s}" for t in ("sem_seg", "instance_seg") for s in ("train", "val", "test"))
    _remove(f"cityscapes_fine_panoptic_{split}" for split in CITYSCAPES_SPLITS)
    d2_register_all_cityscapes(root)
    register_all_cityscapes_panoptic(root)

    def check_sem_seg(meta):
        require_paths([meta.image_dir, meta.gt_dir], how_to_prepare)
        _check_train_ids(meta.gt_dir, how_to_prepare)

    def check_instance_seg(meta):
        require_paths([meta.image_dir, meta.gt_dir], how_to_prepare)

    def check_panoptic(meta):
        require_paths([meta.image_root, meta.gt_dir, meta.panoptic_json, meta.panoptic_root], how_to_prepare)
        _check_train_ids(meta.gt_dir, how_to_prepare)

    checks = {"sem_seg": check_sem_seg, "instance_seg": check_instance_seg, "panoptic": check_panoptic}
    for task in CITYSCAPES_TASKS:
        for split in CITYSCAPES_SPLITS:
            _wrap_loader(f"cityscapes_fine_{task}_{split}", checks[task])


register_coco_instances_checked(datasets_root())
register_all_cityscapes_checked(datasets_root())

"""
COCO panoptic segmentation with semantic labels, registered under the original Mask2Former's names.

``coco_2017_{train,val}_panoptic`` (panoptic annotations: training with the ``coco_panoptic_lsj`` mapper) and
``coco_2017_{train,val}_panoptic_with_sem_seg`` (plus the semantic PNGs: PQ, mask AP and mIoU in one evaluation
pass), all under ``$DETECTRON2_DATASETS/coco`` laid out as in ``datasets/README.md``. The instance annotations
they point to for mask AP are those of detectron2's own ``coco_2017_{train,val}`` datasets.

detectron2 already registers ``coco_2017_{train,val}_panoptic`` with every class listed as a "thing"; these
names are registered again here with the thing/stuff metadata below, which the panoptic and instance outputs
rely on. Registration only records paths: nothing is read until a dataset is loaded.
"""
import json
import os
from functools import partial

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

__all__ = [
    "coco_panoptic_metadata",
    "load_panoptic_json",
    "register_all_coco_panoptic_annos_sem_seg",
    "register_panoptic_annos_sem_seg",
]

_COCO_HOW_TO_PREPARE = (
    "lay out COCO as described in datasets/README.md (and run "
    "`python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py` for the semantic PNGs), "
    "or point DETECTRON2_DATASETS at the folder that contains coco/"
)

# name: (image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json), relative to the dataset root.
_COCO_PANOPTIC_SPLITS = {
    "coco_2017_train_panoptic": (
        "coco/train2017",
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        "coco/panoptic_semseg_train2017",
        "coco/annotations/instances_train2017.json",
    ),
    "coco_2017_val_panoptic": (
        "coco/val2017",
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        "coco/panoptic_semseg_val2017",
        "coco/annotations/instances_val2017.json",
    ),
}


def coco_panoptic_metadata():
    """
    The 133 COCO panoptic classes with contiguous ids in COCO's order: the 80 things (0..79), then the 53 stuff
    classes (80..132). ``thing_*`` covers the things; ``stuff_*`` covers every class, which is the label set of the
    semantic PNGs and of the semantic-segmentation evaluator.
    """
    things = [c for c in COCO_CATEGORIES if c["isthing"]]
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c["color"] for c in things],
        "stuff_classes": [c["name"] for c in COCO_CATEGORIES],
        "stuff_colors": [c["color"] for c in COCO_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(COCO_CATEGORIES) if c["isthing"]},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(COCO_CATEGORIES)},
    }


def load_panoptic_json(
    panoptic_json, image_root, panoptic_root, metadata, *, sem_seg_root=None, how_to_prepare=_COCO_HOW_TO_PREPARE
):
    """
    detectron2 dataset dicts of a COCO-format panoptic dataset: ``file_name``, ``image_id``,
    ``pan_seg_file_name``, ``segments_info`` (contiguous ``category_id`` and ``isthing``), and, when
    ``sem_seg_root`` is given, ``sem_seg_file_name`` (the PNG with the panoptic PNG's name).
    A missing file or folder raises ``FileNotFoundError`` naming it, an unreadable json ``ValueError`` naming it,
    both followed by ``how_to_prepare``; a segment whose category is not in ``metadata`` raises ``ValueError``.
    """
    required = [panoptic_json, image_root, panoptic_root] + ([sem_seg_root] if sem_seg_root else [])
    for path in required:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist: {how_to_prepare}")
    try:
        dicts = load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, metadata)
    except json.JSONDecodeError as e:
        raise ValueError(f"{panoptic_json} is not valid JSON ({e}): {how_to_prepare}") from e
    except KeyError as e:
        raise ValueError(
            f"{panoptic_json} has a segment of category_id {e.args[0]}, which is not among the dataset's "
            "categories (thing_/stuff_dataset_id_to_contiguous_id of the metadata): add it to the metadata's classes "
            "or fix the annotation"
        ) from e
    for d in dicts:
        if sem_seg_root:
            d["sem_seg_file_name"] = os.path.join(sem_seg_root, os.path.basename(d["pan_seg_file_name"]))
        for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
            if key in d and not os.path.isfile(d[key]):
                raise FileNotFoundError(f"{d[key]} (image {d['image_id']} of {panoptic_json}) does not exist")
    return dicts


def register_panoptic_annos_sem_seg(
    name,
    metadata,
    *,
    image_root,
    panoptic_root,
    panoptic_json,
    sem_seg_root,
    instances_json=None,
    how_to_prepare=_COCO_HOW_TO_PREPARE,
):
    """
    Register a COCO-format panoptic dataset twice: ``name`` (panoptic annotations) and ``name + "_with_sem_seg"``
    (plus ``sem_seg_file_name``), both with ``metadata`` (``coco_panoptic_metadata()`` for COCO) and the
    evaluation metadata (``evaluator_type`` "coco_panoptic_seg", ``ignore_label`` 255, ``label_divisor`` 1000,
    ``json_file`` = ``instances_json`` for mask AP). Names registered before are replaced.
    """
    common = dict(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **metadata,
    )
    load = partial(
        load_panoptic_json, panoptic_json, image_root, panoptic_root, metadata, how_to_prepare=how_to_prepare
    )
    for dataset_name, extra in ((name, {}), (name + "_with_sem_seg", {"sem_seg_root": sem_seg_root})):
        if dataset_name in DatasetCatalog:
            DatasetCatalog.remove(dataset_name)
            MetadataCatalog.remove(dataset_name)
        DatasetCatalog.register(dataset_name, partial(load, **extra))
        MetadataCatalog.get(dataset_name).set(**common, **extra)


def register_all_coco_panoptic_annos_sem_seg(root):
    """Register the COCO panoptic splits (see the module docstring) found under ``root``."""
    for name, paths in _COCO_PANOPTIC_SPLITS.items():
        keys = ("image_root", "panoptic_root", "panoptic_json", "sem_seg_root", "instances_json")
        register_panoptic_annos_sem_seg(
            name, coco_panoptic_metadata(), **{k: os.path.join(root, p) for k, p in zip(keys, paths)}
        )


register_all_coco_panoptic_annos_sem_seg(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))

"""
Class lists of ADE20K (SceneParse150 and its 100 instance classes), ADE20K-full (847 classes) and Mapillary Vistas
v1.2 (65 classes + void), and the detectron2 metadata built from them. The lists live in ``meta/*.json`` (public
dataset facts: names, dataset ids, colors); each file is read once, when first needed.
"""
import json
import os
from functools import lru_cache

from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

__all__ = [
    "ade20k_150_categories",
    "ade20k_full_metadata",
    "ade20k_instance_metadata",
    "ade20k_panoptic_metadata",
    "ade20k_sem_seg_metadata",
    "load_categories",
    "mapillary_vistas_panoptic_metadata",
    "mapillary_vistas_sem_seg_metadata",
]

_META_DIR = os.path.join(os.path.dirname(__file__), "meta")


@lru_cache(maxsize=None)
def load_categories(name):
    """The parsed ``meta/<name>.json`` (cached: callers must not modify it)."""
    with open(os.path.join(_META_DIR, f"{name}.json")) as f:
        return json.load(f)


def ade20k_150_categories():
    """The 150 SceneParse150 classes: ``id`` 0..149 (PNG value - 1), ``name``, ``color``, ``isthing``."""
    return load_categories("ade20k_150")["categories"]


def ade20k_sem_seg_metadata():
    """detectron2's ADE20K class names (the same list as ours) and the colors the visualizer uses."""
    return {
        "stuff_classes": list(ADE20K_SEM_SEG_CATEGORIES),
        "stuff_colors": [c["color"] for c in ade20k_150_categories()],
    }


def ade20k_panoptic_metadata():
    """
    Contiguous ids equal the SceneParse150 ids (0..149). ``stuff_*`` covers every class (the semantic label set,
    used by the semantic evaluator), ``thing_*`` the 100 instance classes.
    """
    categories = ade20k_150_categories()
    things = [c for c in categories if c["isthing"]]
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c["color"] for c in things],
        "stuff_classes": [c["name"] for c in categories],
        "stuff_colors": [c["color"] for c in categories],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories) if c["isthing"]},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def ade20k_instance_metadata():
    """
    The 100 instance classes, contiguous 0..99 in the order of the instance PNGs' class values 1..100; their
    dataset ids are SceneParse150 ids, shared with the panoptic annotations.
    """
    instance = load_categories("ade20k_150")["instance_categories"]
    return {
        "thing_classes": [c["name"] for c in instance],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(instance)},
    }


def ade20k_full_metadata():
    """The 847 ADE20K-full classes in training-id order (the value of the prepared 16-bit label TIFFs)."""
    return {"stuff_classes": [c["name"] for c in load_categories("ade20k_full_847")["categories"]]}


def _mapillary_evaluated():
    """The 65 classes of Mapillary Vistas v1.2 that are evaluated (label PNG values 0..64; 65 is void)."""
    return [c for c in load_categories("mapillary_vistas")["categories"] if c["key"] != "void--unlabeled"]


def mapillary_vistas_sem_seg_metadata():
    categories = _mapillary_evaluated()
    return {"stuff_classes": [c["name"] for c in categories], "stuff_colors": [c["color"] for c in categories]}


def mapillary_vistas_panoptic_metadata():
    """
    Panoptic category ids are the label values + 1 (1..65); contiguous ids are the label values. As in the
    original, ``thing_classes`` / ``thing_colors`` list all 65 classes (the visualizer indexes them by contiguous
    id), while ``thing_dataset_id_to_contiguous_id`` holds only the 37 classes with instances.
    """
    categories = _mapillary_evaluated()
    names = [c["name"] for c in categories]
    colors = [c["color"] for c in categories]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": names,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {c["label"] + 1: c["label"] for c in categories if c["isthing"]},
        "stuff_dataset_id_to_contiguous_id": {c["label"] + 1: c["label"] for c in categories},
    }

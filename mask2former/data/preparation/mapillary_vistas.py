"""
Mapillary Vistas into the layout of the ``mapillary_vistas_*`` registrations, which read the release's v1.2
annotations as they are: ``<split>/images/*.jpg``, ``<split>/labels/*.png`` (one palette index per pixel: class
0..64, 65 unlabeled) and ``<split>/panoptic/*.png`` + ``<split>/panoptic/panoptic_2018.json``.

A v2.0 download keeps the v1.2 annotations in ``<split>/v1.2/{labels,panoptic}``: those folders are linked into
place. Then the layout is checked: every image has a label and a panoptic PNG, the json lists them, and labels
hold class indices rather than colours.
"""
import json
import os

from PIL import Image

from ..datasets.loaders import require_paths
from ..datasets.register_mapillary_vistas import MAPILLARY_SPLITS

__all__ = ["check_split", "link_v12_annotations", "prepare_mapillary_vistas"]

_HOW_TO = "unpack the Mapillary Vistas release as described in datasets/README.md"


def _stems(folder, extension):
    return {os.path.splitext(f)[0] for f in os.listdir(folder) if f.endswith(extension)}


def link_v12_annotations(split_dir):
    """
    Link ``v1.2/labels`` and ``v1.2/panoptic`` to ``labels`` and ``panoptic`` where only the former exist; returns
    the links made.
    """
    made = []
    for folder in ("labels", "panoptic"):
        target = os.path.join(split_dir, folder)
        versioned = os.path.join(split_dir, "v1.2", folder)
        if not os.path.exists(target) and os.path.isdir(versioned):
            os.symlink(os.path.join("v1.2", folder), target)
            made.append(target)
    return made


def check_split(split_dir):
    """
    Check one split folder; returns the number of images. Raises ``FileNotFoundError`` for a missing folder or
    file and ``ValueError`` for labels stored as colours, both naming the path.
    """
    image_dir, label_dir, panoptic_dir = (os.path.join(split_dir, f) for f in ("images", "labels", "panoptic"))
    panoptic_json = os.path.join(panoptic_dir, "panoptic_2018.json")
    require_paths([image_dir, label_dir, panoptic_dir, panoptic_json], _HOW_TO)
    images = _stems(image_dir, ".jpg")
    if not images:
        raise FileNotFoundError(f"{image_dir} holds no .jpg image: {_HOW_TO}")
    for folder in (label_dir, panoptic_dir):
        missing = sorted(images - _stems(folder, ".png"))
        if missing:
            first = os.path.join(folder, missing[0] + ".png")
            raise FileNotFoundError(f"{first} does not exist ({len(missing)} images lack theirs): {_HOW_TO}")
    with open(panoptic_json) as f:
        listed = {os.path.splitext(a["file_name"])[0] for a in json.load(f)["annotations"]}
    unlisted = sorted(images - listed)
    if unlisted:
        raise ValueError(f"{panoptic_json} does not list {unlisted[0]} ({len(unlisted)} images): {_HOW_TO}")
    first_label = os.path.join(label_dir, sorted(images)[0] + ".png")
    with Image.open(first_label) as label:
        if label.mode not in ("P", "L"):
            raise ValueError(
                f"{first_label} is a {label.mode} image; the registrations need the release's single-channel "
                "labels (one class index per pixel)"
            )
    return len(images)


def prepare_mapillary_vistas(vistas_root):
    """Link v1.2 annotations where needed and check both splits; returns ``{split: image count}``."""
    counts = {}
    for dirname in MAPILLARY_SPLITS.values():
        split_dir = os.path.join(vistas_root, dirname)
        require_paths([split_dir], _HOW_TO)
        link_v12_annotations(split_dir)
        counts[dirname] = check_split(split_dir)
    return counts

"""
Registering your own data, one function per kind (``docs/custom_datasets.md`` has a worked example of each):

- ``register_semantic_dataset``: an image folder and a folder of label PNGs (one class id per pixel);
- ``register_instance_dataset``: a COCO instance json and its image folder;
- panoptic data in COCO panoptic format: ``register_panoptic_annos_sem_seg``.

Each call registers one set (call it once for the train split and once for the val split) with the metadata and
``evaluator_type`` that ``Trainer`` and ``build_evaluator`` read. Registration only records paths; the files are
read and checked when the set is loaded, and a mismatch raises an error that names the file and the fix.
"""
import os
from functools import partial

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data.datasets import load_coco_json
from PIL import Image

from .loaders import register_replacing, require_paths

__all__ = ["load_instance_json", "load_semantic_folders", "register_instance_dataset", "register_semantic_dataset"]


_HOW_TO_FIX = "check the path given when the dataset was registered"


def _image_size(path):
    """(height, width) from the file's header."""
    with Image.open(path) as image:
        return image.height, image.width


def load_semantic_folders(image_root, sem_seg_root, num_classes, ignore_label, image_ext=".jpg", label_ext=".png"):
    """
    detectron2 dataset dicts (``file_name``, ``sem_seg_file_name``, ``height``, ``width``, ``image_id``) of every
    ``*<image_ext>`` image in ``image_root``, each paired with the label PNG of the same stem in ``sem_seg_root``.
    Every label is read once and checked: the same size as its image, and only ids ``0..num_classes-1`` or
    ``ignore_label``.
    """
    require_paths([image_root, sem_seg_root], _HOW_TO_FIX)
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(image_root) if f.endswith(image_ext))
    if not stems:
        raise FileNotFoundError(f"no '*{image_ext}' image in {image_root}; set image_ext to your images' extension")
    allowed = np.append(np.arange(num_classes), ignore_label)
    dicts = []
    for stem in stems:
        image_file = os.path.join(image_root, stem + image_ext)
        label_file = os.path.join(sem_seg_root, stem + label_ext)
        if not os.path.isfile(label_file):
            raise FileNotFoundError(
                f"{label_file} does not exist: every image in {image_root} needs a label '<stem>{label_ext}' in "
                f"{sem_seg_root} (remove {image_file} or add its label)"
            )
        height, width = _image_size(image_file)
        with Image.open(label_file) as label_image:
            label = np.asarray(label_image)
        if label.shape != (height, width):
            raise ValueError(
                f"{label_file} is {label.shape[1]}x{label.shape[0]} (WxH, {label.ndim} dims) but its image "
                f"{image_file} is {width}x{height}: labels must be single-channel PNGs of the image's size"
            )
        unknown = np.setdiff1d(np.unique(label), allowed)
        if unknown.size:
            raise ValueError(
                f"{label_file} holds label ids {unknown.tolist()} outside the {num_classes} classes (ids 0.."
                f"{num_classes - 1}) and the ignore value {ignore_label}: relabel them, or register the dataset "
                "with the full class list and its ignore_label"
            )
        dicts.append(
            {
                "file_name": image_file,
                "sem_seg_file_name": label_file,
                "height": height,
                "width": width,
                "image_id": stem,
            }
        )
    return dicts


def register_semantic_dataset(
    name, image_root, sem_seg_root, classes, *, ignore_label=255, colors=None, image_ext=".jpg", label_ext=".png"
):
    """
    Register a semantic-segmentation set as ``name``: images ``image_root/<stem><image_ext>``, labels
    ``sem_seg_root/<stem><label_ext>`` (8- or 16-bit single-channel PNGs whose pixel values are indices into
    ``classes``, or ``ignore_label`` for pixels that are not scored). Evaluated by ``SemSegEvaluator`` (mIoU,
    fwIoU, mACC, pACC); trains with the ``mask_former_semantic`` mapper.
    """
    if not classes:
        raise ValueError(f"register_semantic_dataset({name!r}): give the class names (classes=[...])")
    if 0 <= ignore_label < len(classes):
        raise ValueError(
            f"register_semantic_dataset({name!r}): ignore_label={ignore_label} is the id of class "
            f"{classes[ignore_label]!r}; choose a value outside 0..{len(classes) - 1} (e.g. 255)"
        )
    if colors is not None and len(colors) != len(classes):
        raise ValueError(f"register_semantic_dataset({name!r}): {len(colors)} colors for {len(classes)} classes")
    metadata = dict(
        stuff_classes=list(classes),
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        ignore_label=ignore_label,
        evaluator_type="sem_seg",
    )
    if colors is not None:
        metadata["stuff_colors"] = [list(c) for c in colors]
    loader = partial(
        load_semantic_folders, image_root, sem_seg_root, len(classes), ignore_label, image_ext, label_ext
    )
    register_replacing(name, loader, **metadata)


def load_instance_json(json_file, image_root, dataset_name, classes=None):
    """
    detectron2's ``load_coco_json`` (which also sets ``thing_classes`` and ``thing_dataset_id_to_contiguous_id``
    on the metadata of ``dataset_name``), with the inputs checked: the json's categories are ``classes`` (when
    given), every image exists and has the size the json says, every annotation's category is listed, and every
    RLE mask has its image's size.
    """
    require_paths([json_file, image_root], _HOW_TO_FIX)
    # load_coco_json sets thing_classes from the json; the names given at registration are compared below.
    vars(MetadataCatalog.get(dataset_name)).pop("thing_classes", None)
    try:
        dicts = load_coco_json(json_file, image_root, dataset_name)
    except KeyError as e:
        raise ValueError(f"{json_file}: {e.args[0]} Add the category to 'categories' or fix the annotation") from e
    found = MetadataCatalog.get(dataset_name).thing_classes
    if classes is not None and list(found) != list(classes):
        raise ValueError(
            f"{json_file} lists the categories {found} (sorted by id), but the dataset was registered with "
            f"classes={list(classes)}; register it with the json's classes in that order"
        )
    for d in dicts:
        if not os.path.isfile(d["file_name"]):
            raise FileNotFoundError(f"{d['file_name']} (image {d['image_id']} of {json_file}) does not exist")
        size = _image_size(d["file_name"])
        if size != (d["height"], d["width"]):
            raise ValueError(
                f"{d['file_name']} is {size[1]}x{size[0]} (WxH) but {json_file} says {d['width']}x{d['height']}: "
                "fix the image's 'width' and 'height' in the json"
            )
        for ann in d["annotations"]:
            segmentation = ann.get("segmentation")
            if isinstance(segmentation, dict) and tuple(segmentation["size"]) != size:
                raise ValueError(
                    f"{json_file}: an RLE mask of image {d['image_id']} ({d['file_name']}) has size (HxW) "
                    f"{tuple(segmentation['size'])} but the image is {size}: masks must have their image's size"
                )
    return dicts


def register_instance_dataset(name, json_file, image_root, *, classes=None):
    """
    Register a COCO-format instance-segmentation set as ``name``: ``json_file`` with ``images``, ``annotations``
    (polygon or RLE ``segmentation``) and ``categories``, image files under ``image_root``. The classes are the
    json's categories sorted by id; give ``classes`` to have their names before the json is read (and checked
    against it when it is). Evaluated by ``COCOEvaluator`` (mask AP); trains with an instance mapper
    (``coco_instance_lsj`` or ``mask_former_instance``).
    """
    metadata = dict(json_file=json_file, image_root=image_root, evaluator_type="coco")
    if classes is not None:
        metadata["thing_classes"] = list(classes)
    loader = partial(load_instance_json, json_file, image_root, name, classes)
    register_replacing(name, loader, **metadata)

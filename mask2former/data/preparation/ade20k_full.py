"""
ADE20K-full (the ADE20K 2021 release, ``ADE20K_2021_17_01``) into the layout of ``ade20k_full_sem_seg_*``.

The release holds ``images/ADE/{training,validation}/<scene folders>/<name>.jpg`` with ``<name>_seg.png`` next to
each image, whose pixels encode the full-ADE20K class as ``red // 10 * 256 + green``. Each image is written to
``images_detectron2/<split>/<name>.jpg`` and its label to ``annotations_detectron2/<split>/<name>.tif``: 16-bit,
the training id 0..846 of the 847 evaluated classes, 65535 elsewhere. Images whose shorter side exceeds 512
pixels are resized to a shorter side of 512 (bilinear for the image, nearest for the label), as in the original
preparation. The split is read from the name: ``ADE_val_*`` is validation, everything else training.
"""
import os

import numpy as np
from PIL import Image

from ..datasets.categories import load_categories
from .common import map_with_progress

__all__ = [
    "IGNORE_LABEL",
    "MAX_SHORTER_SIDE",
    "convert_image",
    "find_images",
    "prepare_ade20k_full_sem_seg",
    "train_ids",
]

IGNORE_LABEL = 65535
MAX_SHORTER_SIDE = 512


def find_images(full_root):
    """(image path, split folder name) of every ``*.jpg`` under ``images/ADE``, sorted by path."""
    ade_dir = os.path.join(full_root, "images", "ADE")
    if not os.path.isdir(ade_dir):
        raise FileNotFoundError(
            f"{ade_dir} does not exist; unpack the ADE20K 2021 release (ADE20K_2021_17_01) as described in "
            "datasets/README.md"
        )
    found = []
    for folder, _, files in os.walk(ade_dir):
        for name in files:
            if name.endswith(".jpg"):
                split = "validation" if name.split("_")[1:2] == ["val"] else "training"
                found.append((os.path.join(folder, name), split))
    if not found:
        raise FileNotFoundError(f"{ade_dir} holds no .jpg image; see datasets/README.md")
    return sorted(found)


def train_ids(class_ids):
    """Training ids (uint16; 65535 for classes outside the 847) of full-ADE20K class ids."""
    lookup = {c["id"]: i for i, c in enumerate(load_categories("ade20k_full_847")["categories"])}
    output = np.full(class_ids.shape, IGNORE_LABEL, dtype=np.uint16)
    for class_id in np.unique(class_ids):
        if int(class_id) in lookup:
            output[class_ids == class_id] = lookup[int(class_id)]
    return output


def _resized_size(height, width):
    """The (height, width) with the shorter side brought down to 512, or None when it is 512 or less."""
    if width >= height > MAX_SHORTER_SIDE:
        return MAX_SHORTER_SIDE, round(width / float(height) * MAX_SHORTER_SIDE)
    if height >= width > MAX_SHORTER_SIDE:
        return round(height / float(width) * MAX_SHORTER_SIDE), MAX_SHORTER_SIDE
    return None


def convert_image(job):
    """Write one image and its label; ``job`` is (image path, output image path, output label path)."""
    import cv2  # the original preparation's resizing; imported here so the module loads without OpenCV

    image_path, output_image, output_label = job
    segmentation_png = image_path[: -len(".jpg")] + "_seg.png"
    if not os.path.exists(segmentation_png):
        raise FileNotFoundError(f"{segmentation_png} does not exist: every image of the release has one")
    image = np.asarray(Image.open(image_path))
    seg = np.asarray(Image.open(segmentation_png).convert("RGB"))
    class_ids = (seg[..., 0] // 10).astype(np.int32) * 256 + seg[..., 1].astype(np.int32)
    size = _resized_size(*image.shape[:2])
    if size is not None:
        height, width = size
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        class_ids = cv2.resize(class_ids, (width, height), interpolation=cv2.INTER_NEAREST)
    Image.fromarray(image).save(output_image)
    Image.fromarray(train_ids(class_ids)).save(output_label)


def prepare_ade20k_full_sem_seg(full_root, *, workers=1):
    """Write ``images_detectron2/`` and ``annotations_detectron2/`` under ``full_root``; returns the image count."""
    jobs = []
    for image_path, split in find_images(full_root):
        name = os.path.basename(image_path)
        image_dir = os.path.join(full_root, "images_detectron2", split)
        label_dir = os.path.join(full_root, "annotations_detectron2", split)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        jobs.append((image_path, os.path.join(image_dir, name), os.path.join(label_dir, name[: -len(".jpg")] + ".tif")))
    map_with_progress(convert_image, jobs, workers=workers, label="ADE20K-full")
    return len(jobs)

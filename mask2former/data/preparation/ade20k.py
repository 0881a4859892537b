"""
ADE20K (ADEChallengeData2016, SceneParse150) into the layouts of the ``ade20k_*`` registrations.

Inputs, as released: ``images/{training,validation}/*.jpg``, ``annotations/{training,validation}/*.png`` (0 =
void, 1..150 = class) and, from annotations_instance.tar, ``annotations_instance/{training,validation}/*.png``
(red = instance class 1..100, green = instance id, 0 = none; instance class k is the k-th of the 100 thing
classes in SceneParse150 order).

- semantic: ``annotations_detectron2/<split>/*.png``, class 0..149 and 255 for void;
- panoptic: ``ade20k_panoptic_{train,val}/*.png`` + ``ade20k_panoptic_{train,val}.json`` (COCO panoptic format,
  category ids = SceneParse150 ids 0..149): stuff segments from the semantic PNG, then the instances from the
  instance PNG painted over them, segment ids 1, 2, ... per image;
- instance: ``ade20k_instance_{train,val}.json`` (COCO format, RLE masks, the 100 thing classes).
"""
import json
import os

import numpy as np
from panopticapi.utils import id2rgb
from PIL import Image
from pycocotools import mask as mask_util

from ..datasets.categories import ade20k_150_categories, load_categories
from ..datasets.loaders import require_paths
from ..datasets.register_ade20k_sem_seg import ADE20K_SPLITS
from .common import bbox_xywh, map_with_progress

__all__ = [
    "convert_semantic_png",
    "instance_annotations",
    "panoptic_annotation",
    "prepare_ade20k_ins_seg",
    "prepare_ade20k_pan_seg",
    "prepare_ade20k_sem_seg",
]

_HOW_TO = (
    "unpack ADEChallengeData2016.zip (and annotations_instance.tar for panoptic and instance segmentation) as "
    "described in datasets/README.md"
)


def _image_stems(ade_root, dirname):
    image_dir = os.path.join(ade_root, "images", dirname)
    require_paths([image_dir], _HOW_TO)
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(image_dir) if f.endswith(".jpg"))
    if not stems:
        raise FileNotFoundError(f"{image_dir} holds no .jpg image: {_HOW_TO}")
    return image_dir, stems


def _image_entry(image_path):
    with Image.open(image_path) as image:
        width, height = image.size
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return {"id": stem, "file_name": os.path.basename(image_path), "width": width, "height": height}


def _thing_ids_by_instance_class():
    """SceneParse150 id (0-based) of each instance class value 1..100, at index value - 1."""
    return [c["id"] for c in load_categories("ade20k_150")["instance_categories"]]


def _instances(instance_png):
    """(instance id, instance class value, mask) of each instance of an instance PNG."""
    pixels = np.asarray(Image.open(instance_png).convert("RGB"))
    classes, instance_ids = pixels[..., 0], pixels[..., 1]
    for instance_id in np.unique(instance_ids):
        if instance_id == 0:
            continue
        mask = instance_ids == instance_id
        values = np.unique(classes[mask])
        if len(values) != 1 or not 1 <= values[0] <= 100:
            raise ValueError(
                f"{instance_png}: instance {instance_id} has class values {values.tolist()}, not one of 1..100"
            )
        yield int(instance_id), int(values[0]), mask


def convert_semantic_png(job):
    """Write one SceneParse150 label PNG (0 void, 1..150) as detectron2's (0..149, 255 void)."""
    source, target = job
    labels = np.asarray(Image.open(source))
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ValueError(f"{source} is not a single-channel 8-bit label PNG")
    Image.fromarray(labels - np.uint8(1)).save(target)  # 0 wraps around to 255


def prepare_ade20k_sem_seg(ade_root, *, workers=1):
    """Write ``annotations_detectron2/{training,validation}``; returns the folders written."""
    written = []
    for dirname in ADE20K_SPLITS.values():
        source_dir = os.path.join(ade_root, "annotations", dirname)
        require_paths([source_dir], _HOW_TO)
        target_dir = os.path.join(ade_root, "annotations_detectron2", dirname)
        os.makedirs(target_dir, exist_ok=True)
        names = sorted(f for f in os.listdir(source_dir) if f.endswith(".png"))
        jobs = [(os.path.join(source_dir, f), os.path.join(target_dir, f)) for f in names]
        map_with_progress(convert_semantic_png, jobs, workers=workers, label=f"semantic {dirname}")
        written.append(target_dir)
    return written


def panoptic_annotation(job):
    """
    Write the panoptic PNG of one image; returns its json ``image`` and ``annotation`` entries. ``job`` is
    (image, semantic PNG, instance PNG, output PNG).
    """
    image_path, semantic_png, instance_png, output_png = job
    categories = ade20k_150_categories()
    thing_ids = _thing_ids_by_instance_class()
    semantic = np.asarray(Image.open(semantic_png)).astype(np.int64) - 1  # void -> -1
    segment_ids = np.zeros(semantic.shape, dtype=np.uint32)
    segments = []  # (category id, mask)
    for category_id in np.unique(semantic):
        if category_id >= 0 and not categories[category_id]["isthing"]:
            segments.append((int(category_id), semantic == category_id))
    for _, instance_class, mask in _instances(instance_png):
        segments.append((thing_ids[instance_class - 1], mask))
    for segment_id, (_, mask) in enumerate(segments, 1):
        segment_ids[mask] = segment_id  # instances come last: they win where annotations overlap
    segments_info = []
    for segment_id, (category_id, _) in enumerate(segments, 1):
        mask = segment_ids == segment_id
        if mask.any():
            segments_info.append(
                {
                    "id": segment_id,
                    "category_id": category_id,
                    "area": int(mask.sum()),
                    "bbox": bbox_xywh(mask),
                    "iscrowd": 0,
                }
            )
    Image.fromarray(id2rgb(segment_ids)).save(output_png)
    image = _image_entry(image_path)
    annotation = {"image_id": image["id"], "file_name": os.path.basename(output_png), "segments_info": segments_info}
    return image, annotation


def prepare_ade20k_pan_seg(ade_root, *, workers=1):
    """Write ``ade20k_panoptic_{train,val}/`` and ``ade20k_panoptic_{train,val}.json``; returns the jsons."""
    written = []
    for split, dirname in ADE20K_SPLITS.items():
        image_dir, stems = _image_stems(ade_root, dirname)
        semantic_dir = os.path.join(ade_root, "annotations", dirname)
        instance_dir = os.path.join(ade_root, "annotations_instance", dirname)
        require_paths([semantic_dir, instance_dir], _HOW_TO)
        output_dir = os.path.join(ade_root, f"ade20k_panoptic_{split}")
        os.makedirs(output_dir, exist_ok=True)
        jobs = [
            (
                os.path.join(image_dir, f"{stem}.jpg"),
                os.path.join(semantic_dir, f"{stem}.png"),
                os.path.join(instance_dir, f"{stem}.png"),
                os.path.join(output_dir, f"{stem}.png"),
            )
            for stem in stems
        ]
        results = map_with_progress(panoptic_annotation, jobs, workers=workers, label=f"panoptic {dirname}")
        panoptic_json = os.path.join(ade_root, f"ade20k_panoptic_{split}.json")
        with open(panoptic_json, "w") as f:
            json.dump(
                {
                    "images": [image for image, _ in results],
                    "annotations": [annotation for _, annotation in results],
                    "categories": ade20k_150_categories(),
                },
                f,
            )
        written.append(panoptic_json)
    return written


def instance_annotations(job):
    """
    The json ``image`` entry of one image and its instances' annotations (without ``id``); ``job`` is (image,
    instance PNG).
    """
    image_path, instance_png = job
    thing_ids = _thing_ids_by_instance_class()
    image = _image_entry(image_path)
    annotations = []
    for _, instance_class, mask in _instances(instance_png):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(
            {
                "image_id": image["id"],
                "category_id": thing_ids[instance_class - 1],
                "iscrowd": 0,
                "bbox": bbox_xywh(mask),
                "area": int(mask.sum()),
                "segmentation": rle,
            }
        )
    return image, annotations


def prepare_ade20k_ins_seg(ade_root, *, workers=1):
    """Write ``ade20k_instance_{train,val}.json``; returns them. Annotation ids count from 1 within each split."""
    written = []
    categories = load_categories("ade20k_150")["instance_categories"]
    for split, dirname in ADE20K_SPLITS.items():
        image_dir, stems = _image_stems(ade_root, dirname)
        instance_dir = os.path.join(ade_root, "annotations_instance", dirname)
        require_paths([instance_dir], _HOW_TO)
        jobs = [(os.path.join(image_dir, f"{s}.jpg"), os.path.join(instance_dir, f"{s}.png")) for s in stems]
        results = map_with_progress(instance_annotations, jobs, workers=workers, label=f"instance {dirname}")
        annotations = [a for _, image_annotations in results for a in image_annotations]
        for annotation_id, annotation in enumerate(annotations, 1):
            annotation["id"] = annotation_id
        instance_json = os.path.join(ade_root, f"ade20k_instance_{split}.json")
        with open(instance_json, "w") as f:
            json.dump({"images": [i for i, _ in results], "annotations": annotations, "categories": categories}, f)
        written.append(instance_json)
    return written

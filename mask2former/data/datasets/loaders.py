"""
Pieces shared by the dataset registrations: the check that a dataset's folders exist (an error that names the
missing path and the command that prepares it), registration that replaces an earlier one, and the loaders of the
semantic and panoptic layouts that ADE20K and Mapillary Vistas use.
"""
import json
import os
from functools import partial

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg

__all__ = [
    "datasets_root",
    "load_coco_json_checked",
    "load_panoptic_annotations",
    "load_sem_seg_checked",
    "register_replacing",
    "require_paths",
]


def datasets_root():
    """``$DETECTRON2_DATASETS`` (default ``datasets``), where the datasets' folders are looked up."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def require_paths(paths, how_to_prepare):
    """Raise ``FileNotFoundError`` naming the first of ``paths`` that does not exist, followed by ``how_to_prepare``."""
    for path in paths:
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist: {how_to_prepare}")


def register_replacing(name, loader, **metadata):
    """Register ``name`` with ``loader`` and ``metadata``, replacing any dataset registered under that name."""
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def load_coco_json_checked(json_file, image_root, name, *, how_to_prepare):
    """detectron2's ``load_coco_json`` (instance annotations), after checking the json and the image folder exist."""
    require_paths([json_file, image_root], how_to_prepare)
    return load_coco_json(json_file, image_root, name)


def load_sem_seg_checked(gt_root, image_root, *, gt_ext, image_ext, how_to_prepare):
    """detectron2's ``load_sem_seg`` (images matched to label files by name), after checking both folders exist."""
    require_paths([image_root, gt_root], how_to_prepare)
    return load_sem_seg(gt_root, image_root, gt_ext=gt_ext, image_ext=image_ext)


def register_sem_seg_folders(
    name, image_root, sem_seg_root, metadata, *, ignore_label, how_to_prepare, gt_ext="png", image_ext="jpg"
):
    """
    Register ``name``: the images of ``image_root`` with the label maps of the same name in ``sem_seg_root``,
    evaluated as semantic segmentation (``evaluator_type`` "sem_seg"); ``metadata`` holds the class names.
    """
    register_replacing(
        name,
        partial(
            load_sem_seg_checked,
            sem_seg_root,
            image_root,
            gt_ext=gt_ext,
            image_ext=image_ext,
            how_to_prepare=how_to_prepare,
        ),
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        evaluator_type="sem_seg",
        ignore_label=ignore_label,
        **metadata,
    )


def load_panoptic_annotations(panoptic_json, image_root, panoptic_root, sem_seg_root, metadata, *, how_to_prepare):
    """
    Dataset dicts of a COCO-format panoptic dataset whose image ids are names (ADE20K, Mapillary Vistas):
    ``file_name`` (``<image_root>/<stem>.jpg``), ``image_id``, ``pan_seg_file_name``, ``sem_seg_file_name``
    (the PNG of the same name under ``sem_seg_root``) and ``segments_info`` with contiguous ``category_id`` and
    ``isthing``. Missing folders, an unreadable json and a category the metadata does not know raise errors that
    name them.
    """
    require_paths([panoptic_json, image_root, panoptic_root, sem_seg_root], how_to_prepare)
    try:
        with open(panoptic_json) as f:
            annotations = json.load(f)["annotations"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{panoptic_json} is not a panoptic annotation file ({e!r}): {how_to_prepare}") from e
    things = metadata["thing_dataset_id_to_contiguous_id"]
    stuff = metadata["stuff_dataset_id_to_contiguous_id"]
    dicts = []
    for annotation in annotations:
        segments = []
        for segment in annotation["segments_info"]:
            dataset_id = segment["category_id"]
            if dataset_id not in stuff and dataset_id not in things:
                raise ValueError(
                    f"{panoptic_json}: image {annotation['image_id']} has a segment of unknown category {dataset_id}"
                )
            isthing = dataset_id in things
            contiguous = things[dataset_id] if isthing else stuff[dataset_id]
            segments.append(dict(segment, category_id=contiguous, isthing=isthing))
        stem = os.path.splitext(annotation["file_name"])[0]
        dicts.append(
            {
                "file_name": os.path.join(image_root, stem + ".jpg"),
                "image_id": annotation["image_id"],
                "pan_seg_file_name": os.path.join(panoptic_root, annotation["file_name"]),
                "sem_seg_file_name": os.path.join(sem_seg_root, annotation["file_name"]),
                "segments_info": segments,
            }
        )
    if not dicts:
        raise ValueError(f"{panoptic_json} lists no image: {how_to_prepare}")
    return dicts


def register_panoptic_folders(
    name,
    metadata,
    *,
    image_root,
    panoptic_root,
    panoptic_json,
    sem_seg_root,
    json_file,
    evaluator_type,
    ignore_label,
    how_to_prepare,
):
    """
    Register ``name``: a COCO-format panoptic dataset whose image ids are names (``load_panoptic_annotations``),
    with the semantic PNGs of ``sem_seg_root``, the instance json ``json_file`` (mask AP; None: none) and
    ``metadata`` (the classes), evaluated as ``evaluator_type``.
    """
    register_replacing(
        name,
        partial(
            load_panoptic_annotations,
            panoptic_json,
            image_root,
            panoptic_root,
            sem_seg_root,
            metadata,
            how_to_prepare=how_to_prepare,
        ),
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        json_file=json_file,
        evaluator_type=evaluator_type,
        ignore_label=ignore_label,
        label_divisor=1000,
        **metadata,
    )

"""Training inputs for semantic segmentation (INPUT.DATASET_MAPPER_NAME "mask_former_semantic"): one target per class."""
import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform
from detectron2.structures import Instances

from .tensors import image_to_tensor, masks_to_tensor, pad_to_divisibility
from .unreadable import TrainingFileReader

__all__ = ["MaskFormerSemanticDatasetMapper", "build_crop_augmentations", "train_ignore_label"]


def build_crop_augmentations(cfg, category_area_crop):
    """
    The augmentations of the MaskFormer mappers, in the original's order: a shortest-edge resize
    (INPUT.MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING); with INPUT.CROP.ENABLED a random crop,
    which with ``category_area_crop`` is redrawn (up to 10 times) while one class covers more than
    INPUT.CROP.SINGLE_CATEGORY_MAX_AREA of it; with INPUT.COLOR_AUG_SSD SSD's photometric distortion; a flip
    (INPUT.RANDOM_FLIP).
    """
    augmentations = [
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if cfg.INPUT.CROP.ENABLED:
        if category_area_crop:
            crop = T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        else:
            crop = T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE)
        augmentations.append(crop)
    if cfg.INPUT.COLOR_AUG_SSD:
        augmentations.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    if cfg.INPUT.RANDOM_FLIP != "none":
        augmentations.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal", vertical=cfg.INPUT.RANDOM_FLIP == "vertical"
            )
        )
    return augmentations


def train_ignore_label(cfg):
    """The ``ignore_label`` of the first training dataset's metadata."""
    if not cfg.DATASETS.TRAIN:
        raise ValueError("DATASETS.TRAIN is empty: the semantic and panoptic mappers read its ignore_label")
    name = cfg.DATASETS.TRAIN[0]
    meta = MetadataCatalog.get(name)
    if not hasattr(meta, "ignore_label"):
        raise ValueError(
            f"the metadata of training dataset {name!r} has no ignore_label; register the dataset with one "
            f"(e.g. MetadataCatalog.get({name!r}).set(ignore_label=255))"
        )
    return meta.ignore_label


class MaskFormerSemanticDatasetMapper:
    """
    Maps a semantic-segmentation dataset dict (``file_name``, ``sem_seg_file_name``) to a training input:
    ``image`` (C, H, W) uint8 in INPUT.FORMAT, ``sem_seg`` (H, W) int64, and ``instances`` with one binary mask
    per class present (``gt_classes``, ``gt_masks``), the ignore label excluded. With INPUT.SIZE_DIVISIBILITY > 0
    the image is padded with 128 and ``sem_seg`` with the ignore label to a multiple of it.
    Training only: evaluation uses detectron2's ``DatasetMapper``.
    """

    @configurable
    def __init__(
        self, is_train=True, *, augmentations, image_format, ignore_label, size_divisibility, file_reader=None
    ):
        """
        Args:
            is_train: must be True.
            augmentations: applied to the image and the label map alike.
            image_format: INPUT.FORMAT of the image tensor.
            ignore_label: the label of pixels that are no target.
            size_divisibility: pad image and labels to a multiple of this (<= 0: no padding).
            file_reader: a ``TrainingFileReader``; by default unreadable files stop training.
        """
        if not is_train:
            raise ValueError(f"{type(self).__name__} is for training only; evaluate with detectron2's DatasetMapper")
        self.is_train = is_train
        self.tfm_gens = augmentations
        self.img_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        self.file_reader = file_reader or TrainingFileReader()
        logging.getLogger(__name__).info(f"[{type(self).__name__}] augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "is_train": is_train,
            "augmentations": build_crop_augmentations(cfg, category_area_crop=True),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": train_ignore_label(cfg),
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "file_reader": TrainingFileReader.from_config(cfg),
        }

    def __call__(self, dataset_dict):
        return self.file_reader.map_or_skip(self.map, dataset_dict)

    def read_image_and_sem_seg(self, dataset_dict):
        """The image, and the label map as float64 (resizing has no integer path for uint16) or None."""
        image = self.file_reader.read_image(dataset_dict["file_name"], format=self.img_format)
        utils.check_image_size(dataset_dict, image)
        sem_seg = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg = self.file_reader.read_image(dataset_dict.pop("sem_seg_file_name")).astype("double")
        return image, sem_seg

    def map(self, dataset_dict):
        """The training input of one dataset dict (unreadable files raise ``UnreadableFileError``)."""
        if "annotations" in dataset_dict:
            raise ValueError(
                f"{dataset_dict['file_name']}: a semantic segmentation dataset dict must not have 'annotations'"
            )
        dataset_dict = copy.deepcopy(dataset_dict)
        image, sem_seg = self.read_image_and_sem_seg(dataset_dict)
        if sem_seg is None:
            raise ValueError(
                f"{dataset_dict['file_name']} has no 'sem_seg_file_name': {type(self).__name__} needs a semantic "
                "segmentation dataset"
            )
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        T.apply_transform_gens(self.tfm_gens, aug_input)
        image = pad_to_divisibility(image_to_tensor(aug_input.image), self.size_divisibility, 128)
        sem_seg = pad_to_divisibility(
            torch.as_tensor(aug_input.sem_seg.astype("long")), self.size_divisibility, self.ignore_label
        )
        dataset_dict["image"] = image
        dataset_dict["sem_seg"] = sem_seg
        dataset_dict["instances"] = self.class_targets(sem_seg.numpy())
        return dataset_dict

    def class_targets(self, sem_seg):
        """Instances with one mask per class of the (H, W) label map, in increasing class order."""
        classes = np.unique(sem_seg)
        classes = classes[classes != self.ignore_label]
        instances = Instances(sem_seg.shape)
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        instances.gt_masks = masks_to_tensor([sem_seg == c for c in classes], sem_seg.shape)
        return instances

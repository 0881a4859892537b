"""Training inputs for instance segmentation with the MaskFormer augmentations ("mask_former_instance")."""
import copy
import logging

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances, polygons_to_bitmask

from .mask_former_semantic_dataset_mapper import build_crop_augmentations
from .tensors import image_to_tensor, masks_to_tensor, pad_to_divisibility
from .unreadable import TrainingFileReader

__all__ = ["MaskFormerInstanceDatasetMapper", "transformed_annotations"]


def transformed_annotations(dataset_dict, transforms, image_shape):
    """The non-crowd annotations of ``dataset_dict`` (popped from it) moved by ``transforms``, without keypoints."""
    annotations = []
    for annotation in dataset_dict.pop("annotations", []):
        if annotation.get("iscrowd", 0):
            continue
        annotation.pop("keypoints", None)
        annotations.append(utils.transform_instance_annotations(annotation, transforms, image_shape))
    return annotations


def _segmentation_to_mask(segmentation, height, width):
    """A (height, width) mask from a polygon list, a COCO RLE dict or a 2-D array."""
    if isinstance(segmentation, list):
        return polygons_to_bitmask(segmentation, height, width)
    if isinstance(segmentation, dict):
        return mask_util.decode(segmentation)
    if isinstance(segmentation, np.ndarray) and segmentation.ndim == 2:
        return segmentation
    raise ValueError(
        f"cannot make a mask of a segmentation of type {type(segmentation).__name__}"
        f"{f' with {segmentation.ndim} dimensions' if isinstance(segmentation, np.ndarray) else ''}: use polygons "
        "(list of lists of floats), a COCO RLE dict or an (H, W) array"
    )


class MaskFormerInstanceDatasetMapper:
    """
    Maps an instance dataset dict (``file_name``, ``annotations`` with ``segmentation``, ``bbox``, ``bbox_mode``)
    to a training input: ``image`` (C, H, W) uint8 and ``instances`` with one mask per non-crowd annotation
    (``gt_classes``, ``gt_masks``). Augmentations as ``MaskFormerSemanticDatasetMapper``'s, with a plain random
    crop; with INPUT.SIZE_DIVISIBILITY > 0 the image is padded with 128 and the masks with 0.
    Training only: evaluation uses detectron2's ``DatasetMapper``.
    """

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, size_divisibility, file_reader=None):
        """
        Args:
            is_train: must be True.
            augmentations: applied to the image and the annotations alike.
            image_format: INPUT.FORMAT of the image tensor.
            size_divisibility: pad image and masks to a multiple of this (<= 0: no padding).
            file_reader: a ``TrainingFileReader``; by default unreadable files stop training.
        """
        if not is_train:
            raise ValueError(f"{type(self).__name__} is for training only; evaluate with detectron2's DatasetMapper")
        self.is_train = is_train
        self.tfm_gens = augmentations
        self.img_format = image_format
        self.size_divisibility = size_divisibility
        self.file_reader = file_reader or TrainingFileReader()
        logging.getLogger(__name__).info(f"[{type(self).__name__}] augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "is_train": is_train,
            "augmentations": build_crop_augmentations(cfg, category_area_crop=False),
            "image_format": cfg.INPUT.FORMAT,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "file_reader": TrainingFileReader.from_config(cfg),
        }

    def __call__(self, dataset_dict):
        return self.file_reader.map_or_skip(self.map, dataset_dict)

    def map(self, dataset_dict):
        """The training input of one dataset dict (unreadable files raise ``UnreadableFileError``)."""
        if "annotations" not in dataset_dict:
            raise ValueError(f"{dataset_dict['file_name']} has no 'annotations': {type(self).__name__} needs them")
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self.file_reader.read_image(dataset_dict["file_name"], format=self.img_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = T.apply_transform_gens(self.tfm_gens, aug_input)[1]
        image = aug_input.image
        height, width = image.shape[:2]

        annotations = transformed_annotations(dataset_dict, transforms, (height, width))
        masks = masks_to_tensor(
            [_segmentation_to_mask(a["segmentation"], height, width) for a in annotations], (height, width)
        )
        image = pad_to_divisibility(image_to_tensor(image), self.size_divisibility, 128)
        masks = pad_to_divisibility(masks, self.size_divisibility, 0)

        instances = Instances(tuple(image.shape[-2:]))
        instances.gt_classes = torch.tensor([int(a["category_id"]) for a in annotations], dtype=torch.int64)
        instances.gt_masks = masks
        dataset_dict["image"] = image
        dataset_dict["instances"] = instances
        return dataset_dict

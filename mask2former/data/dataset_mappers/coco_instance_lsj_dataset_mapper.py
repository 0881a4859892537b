"""Training inputs for COCO-format instance data with large-scale jitter ("coco_instance_lsj")."""
import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import polygons_to_bitmask

from .coco_panoptic_lsj_dataset_mapper import build_lsj_augmentations
from .mask_former_instance_dataset_mapper import transformed_annotations
from .tensors import image_to_tensor, masks_to_tensor
from .unreadable import TrainingFileReader

__all__ = ["COCOInstanceLSJDatasetMapper"]


class COCOInstanceLSJDatasetMapper:
    """
    Maps an instance dataset dict (``file_name``, ``annotations`` with polygons; also COCO RLE or (H, W) array
    masks, which the original rejects) to a training input with the LSJ augmentations of
    ``build_lsj_augmentations``: ``image`` (C, S, S) uint8, S = INPUT.IMAGE_SIZE,
    ``padding_mask`` (S, S) bool, True on padded pixels, and ``instances`` with one target per non-crowd
    annotation that stays visible (``gt_classes``, ``gt_masks`` (n, S, S) uint8 0/1 as in the original,
    ``gt_boxes`` of the masks). An image without visible annotations trains "no object" for every query.
    Training only: evaluation uses detectron2's ``DatasetMapper``.
    """

    @configurable
    def __init__(self, is_train=True, *, tfm_gens, image_format, file_reader=None):
        """
        Args:
            is_train: must be True.
            tfm_gens: augmentations, applied to the image and the annotations alike.
            image_format: INPUT.FORMAT of the image tensor.
            file_reader: a ``TrainingFileReader``; by default unreadable files stop training.
        """
        if not is_train:
            raise ValueError(f"{type(self).__name__} is for training only; evaluate with detectron2's DatasetMapper")
        self.is_train = is_train
        self.tfm_gens = tfm_gens
        self.img_format = image_format
        self.file_reader = file_reader or TrainingFileReader()
        logging.getLogger(__name__).info(f"[{type(self).__name__}] augmentations: {tfm_gens}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "is_train": is_train,
            "tfm_gens": build_lsj_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "file_reader": TrainingFileReader.from_config(cfg),
        }

    def __call__(self, dataset_dict):
        return self.file_reader.map_or_skip(self.map, dataset_dict)

    def map(self, dataset_dict):
        """The training input of one dataset dict (unreadable files raise ``UnreadableFileError``)."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self.file_reader.read_image(dataset_dict["file_name"], format=self.img_format)
        utils.check_image_size(dataset_dict, image)
        content = np.ones(image.shape[:2], dtype=np.uint8)
        image, transforms = T.apply_transform_gens(self.tfm_gens, image)
        image_shape = image.shape[:2]
        dataset_dict["image"] = image_to_tensor(image)
        # Padding fills segmentations with 0 (build_lsj_augmentations), so padded pixels are the zeros here.
        dataset_dict["padding_mask"] = torch.as_tensor(transforms.apply_segmentation(content) == 0)

        annotations = transformed_annotations(dataset_dict, transforms, image_shape)
        # Polygons as in the original; RLE or array masks (which the original rejects) as bitmasks.
        polygons = not annotations or isinstance(annotations[0]["segmentation"], list)
        instances = utils.annotations_to_instances(annotations, image_shape, "polygon" if polygons else "bitmask")
        masks = []
        if annotations:
            # Boxes of the cropped polygons or masks: tighter than the crop of the boxes.
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
            instances = utils.filter_empty_instances(instances)
            if polygons:
                masks = [polygons_to_bitmask(p, *image_shape) for p in instances.gt_masks.polygons]
            else:
                masks = list(instances.gt_masks.tensor)
        instances.gt_masks = masks_to_tensor(masks, image_shape).to(torch.uint8)
        dataset_dict["instances"] = instances
        return dataset_dict

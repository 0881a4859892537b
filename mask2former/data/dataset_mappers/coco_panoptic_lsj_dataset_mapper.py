"""Training inputs for COCO-format panoptic data with large-scale jitter (LSJ), as Mask2Former trains on COCO."""
import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances
from panopticapi.utils import rgb2id

__all__ = ["COCOPanopticLSJDatasetMapper", "build_lsj_augmentations"]

# Value of padded pixels in the panoptic PNG: black, i.e. segment id 0, which COCO panoptic reserves for "void".
_VOID_RGB = 0


def build_lsj_augmentations(cfg):
    """
    Random flip (INPUT.RANDOM_FLIP), then a resize that fits the image into a square of INPUT.IMAGE_SIZE scaled by
    a factor drawn from [INPUT.MIN_SCALE, INPUT.MAX_SCALE], then a random crop to / padding up to
    IMAGE_SIZE x IMAGE_SIZE (image padded with 128).
    """
    size = cfg.INPUT.IMAGE_SIZE
    if not 0 < cfg.INPUT.MIN_SCALE <= cfg.INPUT.MAX_SCALE:
        raise ValueError(
            f"INPUT.MIN_SCALE={cfg.INPUT.MIN_SCALE} and INPUT.MAX_SCALE={cfg.INPUT.MAX_SCALE} must satisfy "
            "0 < MIN_SCALE <= MAX_SCALE"
        )
    augmentations = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augmentations.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal", vertical=cfg.INPUT.RANDOM_FLIP == "vertical"
            )
        )
    augmentations += [
        T.ResizeScale(
            min_scale=cfg.INPUT.MIN_SCALE, max_scale=cfg.INPUT.MAX_SCALE, target_height=size, target_width=size
        ),
        T.FixedSizeCrop(crop_size=(size, size), seg_pad_value=_VOID_RGB),
    ]
    return augmentations


class COCOPanopticLSJDatasetMapper:
    """
    Maps a panoptic dataset dict (``file_name``, ``pan_seg_file_name``, ``segments_info``) to a training input:
    ``image``, a (C, S, S) uint8 tensor in INPUT.FORMAT, S = INPUT.IMAGE_SIZE, and ``instances`` with one
    binary mask per visible segment (``gt_masks`` (n, S, S) bool, ``gt_classes`` contiguous ids, ``gt_boxes``).

    Crowd segments are not targets. An image without any non-crowd segment is skipped (``None``: detectron2's
    loader then draws another one); a crop that shows none of its segments gives an image with empty targets.
    Training only: evaluation uses detectron2's ``DatasetMapper``.
    """

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format):
        """
        Args:
            is_train: must be True.
            augmentations: applied to the image and the panoptic PNG alike.
            image_format: INPUT.FORMAT of the image tensor.
        """
        if not is_train:
            raise ValueError(
                "COCOPanopticLSJDatasetMapper is for training only; evaluate with detectron2's DatasetMapper"
            )
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        logging.getLogger(__name__).info(f"[{type(self).__name__}] augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "is_train": is_train,
            "augmentations": build_lsj_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict):
        segments = [s for s in dataset_dict["segments_info"] if not s.get("iscrowd", 0)]
        if not segments:
            return None
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        pan_seg = utils.read_image(dataset_dict["pan_seg_file_name"], format="RGB")
        if pan_seg.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"panoptic PNG {dataset_dict['pan_seg_file_name']} is {pan_seg.shape[1]}x{pan_seg.shape[0]} but "
                f"image {dataset_dict['file_name']} is {image.shape[1]}x{image.shape[0]}"
            )

        aug_input = T.AugInput(image, sem_seg=pan_seg)
        self.augmentations(aug_input)
        image = aug_input.image
        # Nearest-neighbour resizing of the RGB-encoded ids keeps every pixel's id exact.
        segment_ids = rgb2id(aug_input.sem_seg)

        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict["instances"] = self.targets(segment_ids, segments)
        return dataset_dict

    @staticmethod
    def targets(segment_ids, segments):
        """Instances of the segments visible in the (H, W) id map."""
        instances = Instances(segment_ids.shape)
        masks = [segment_ids == s["id"] for s in segments]
        keep = [i for i, m in enumerate(masks) if m.any()]
        instances.gt_classes = torch.tensor([segments[i]["category_id"] for i in keep], dtype=torch.int64)
        if keep:
            gt_masks = BitMasks(torch.stack([torch.from_numpy(np.ascontiguousarray(masks[i])) for i in keep]))
        else:
            gt_masks = BitMasks(torch.zeros((0, *segment_ids.shape), dtype=torch.bool))
        instances.gt_masks = gt_masks.tensor
        instances.gt_boxes = gt_masks.get_bounding_boxes()
        return instances

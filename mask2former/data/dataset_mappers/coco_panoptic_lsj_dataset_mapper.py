"""Training inputs for COCO-format panoptic data with large-scale jitter (LSJ), as Mask2Former trains on COCO."""
import copy
import logging

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks
from panopticapi.utils import rgb2id

from .mask_former_panoptic_dataset_mapper import segment_targets
from .tensors import image_to_tensor
from .unreadable import TrainingFileReader

__all__ = ["COCOPanopticLSJDatasetMapper", "COCOPanopticNewBaselineDatasetMapper", "build_lsj_augmentations"]

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
    ``image``, a (C, S, S) uint8 tensor in INPUT.FORMAT, S = INPUT.IMAGE_SIZE, and ``instances`` with one target
    per non-crowd segment, in the order of ``segments_info`` (``gt_classes`` contiguous ids, ``gt_masks``
    (n, S, S) bool, ``gt_boxes``). A segment the crop leaves out keeps an empty mask, and an image without
    non-crowd segments trains "no object" for every query, as in the original.

    With ``drop_empty_targets`` (INPUT.LSJ_DROP_EMPTY_TARGETS) segments the crop leaves out are no targets, and
    images without any non-crowd segment are skipped (``None``: detectron2's loader then draws another one).
    Training only: evaluation uses detectron2's ``DatasetMapper``.
    """

    @configurable
    def __init__(self, is_train=True, *, tfm_gens, image_format, drop_empty_targets=False, file_reader=None):
        """
        Args:
            is_train: must be True.
            tfm_gens: augmentations, applied to the image and the panoptic PNG alike.
            image_format: INPUT.FORMAT of the image tensor.
            drop_empty_targets: see the class docstring.
            file_reader: a ``TrainingFileReader``; by default unreadable files stop training.
        """
        if not is_train:
            raise ValueError(f"{type(self).__name__} is for training only; evaluate with detectron2's DatasetMapper")
        self.is_train = is_train
        self.tfm_gens = tfm_gens
        self.img_format = image_format
        self.drop_empty_targets = drop_empty_targets
        self.file_reader = file_reader or TrainingFileReader()
        logging.getLogger(__name__).info(f"[{type(self).__name__}] augmentations: {tfm_gens}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "is_train": is_train,
            "tfm_gens": build_lsj_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "drop_empty_targets": cfg.INPUT.LSJ_DROP_EMPTY_TARGETS,
            "file_reader": TrainingFileReader.from_config(cfg),
        }

    def __call__(self, dataset_dict):
        return self.file_reader.map_or_skip(self.map, dataset_dict)

    def map(self, dataset_dict):
        """The training input of one dataset dict (unreadable files raise ``UnreadableFileError``)."""
        if self.drop_empty_targets and all(s.get("iscrowd", 0) for s in dataset_dict["segments_info"]):
            return None
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self.file_reader.read_image(dataset_dict["file_name"], format=self.img_format)
        utils.check_image_size(dataset_dict, image)
        pan_seg = self.file_reader.read_image(dataset_dict.pop("pan_seg_file_name"), format="RGB")
        if pan_seg.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"the panoptic PNG of {dataset_dict['file_name']} is {pan_seg.shape[1]}x{pan_seg.shape[0]} but the "
                f"image is {image.shape[1]}x{image.shape[0]}"
            )
        image, transforms = T.apply_transform_gens(self.tfm_gens, image)
        dataset_dict["image"] = image_to_tensor(image)
        # Nearest-neighbour resizing of the RGB-encoded ids keeps every pixel's id exact.
        segment_ids = rgb2id(transforms.apply_segmentation(pan_seg))
        instances = segment_targets(segment_ids, dataset_dict["segments_info"])
        if self.drop_empty_targets:
            instances = instances[instances.gt_masks.flatten(1).any(1)]
        instances.gt_boxes = BitMasks(instances.gt_masks).get_bounding_boxes()
        dataset_dict["instances"] = instances
        return dataset_dict


# The original's name of this mapper.
COCOPanopticNewBaselineDatasetMapper = COCOPanopticLSJDatasetMapper

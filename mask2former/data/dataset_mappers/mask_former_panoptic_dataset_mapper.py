"""Training inputs for panoptic segmentation with the MaskFormer augmentations ("mask_former_panoptic")."""
import copy

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.structures import Instances
from panopticapi.utils import rgb2id

from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper
from .tensors import image_to_tensor, masks_to_tensor, pad_to_divisibility

__all__ = ["MaskFormerPanopticDatasetMapper", "segment_targets"]

# Segment id of padded pixels: 0, which COCO panoptic reserves for "void".
_VOID_ID = 0


def segment_targets(segment_ids, segments_info):
    """
    Instances with one mask per non-crowd segment of ``segments_info``, in its order, on the (H, W) id map; a
    segment that the augmentations moved out of view keeps an empty mask.
    """
    segments = [s for s in segments_info if not s.get("iscrowd", 0)]
    instances = Instances(segment_ids.shape)
    instances.gt_classes = torch.tensor([s["category_id"] for s in segments], dtype=torch.int64)
    instances.gt_masks = masks_to_tensor([segment_ids == s["id"] for s in segments], segment_ids.shape)
    return instances


class MaskFormerPanopticDatasetMapper(MaskFormerSemanticDatasetMapper):
    """
    Maps a panoptic dataset dict (``file_name``, ``pan_seg_file_name``, ``segments_info``, optionally
    ``sem_seg_file_name``) to a training input with the augmentations of ``MaskFormerSemanticDatasetMapper``
    (the category-area crop looks at the semantic labels): ``image``, ``sem_seg`` when the dict has one, and
    ``instances`` with one mask per non-crowd segment (``gt_classes``, ``gt_masks``). Padding for
    INPUT.SIZE_DIVISIBILITY gives the panoptic map the void id 0.
    """

    def map(self, dataset_dict):
        if "annotations" in dataset_dict:
            raise ValueError(f"{dataset_dict['file_name']}: a panoptic dataset dict must not have 'annotations'")
        if "pan_seg_file_name" not in dataset_dict:
            raise ValueError(
                f"{dataset_dict['file_name']} has no 'pan_seg_file_name': {type(self).__name__} needs a panoptic "
                "segmentation dataset"
            )
        dataset_dict = copy.deepcopy(dataset_dict)
        image, sem_seg = self.read_image_and_sem_seg(dataset_dict)
        pan_seg = self.file_reader.read_image(dataset_dict.pop("pan_seg_file_name"), "RGB")

        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = T.apply_transform_gens(self.tfm_gens, aug_input)[1]
        segment_ids = torch.as_tensor(rgb2id(transforms.apply_segmentation(pan_seg)).astype("long"))

        dataset_dict["image"] = pad_to_divisibility(image_to_tensor(aug_input.image), self.size_divisibility, 128)
        if sem_seg is not None:
            dataset_dict["sem_seg"] = pad_to_divisibility(
                torch.as_tensor(aug_input.sem_seg.astype("long")), self.size_divisibility, self.ignore_label
            )
        segment_ids = pad_to_divisibility(segment_ids, self.size_divisibility, _VOID_ID).numpy()
        dataset_dict["instances"] = segment_targets(segment_ids, dataset_dict["segments_info"])
        return dataset_dict

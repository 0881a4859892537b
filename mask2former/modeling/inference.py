"""
From the head's raw predictions of a batch to the per-image output dicts (``sem_seg``, ``panoptic_seg``,
``instances``). One function, :func:`maskformer_inference`, used by ``MaskFormer`` and by the exported predictor
(``mask2former.export``), so that an exported network post-processes exactly as the model.
"""
from dataclasses import dataclass
from typing import FrozenSet

import torch
from detectron2.data import MetadataCatalog
from detectron2.utils.memory import retry_if_cuda_oom
from torch.nn import functional as F

from .postprocessing import instance_inference, panoptic_inference, resize_to_output, semantic_inference


@dataclass(frozen=True)
class InferenceSettings:
    """What post-processing returns and its thresholds (``MODEL.MASK_FORMER.TEST`` and friends)."""

    num_classes: int
    thing_classes: FrozenSet[int]
    object_mask_threshold: float
    overlap_threshold: float
    semantic_on: bool
    panoptic_on: bool
    instance_on: bool
    test_topk_per_image: int
    sem_seg_postprocess_before_inference: bool

    @classmethod
    def from_config(cls, cfg):
        test = cfg.MODEL.MASK_FORMER.TEST
        if not (test.SEMANTIC_ON or test.INSTANCE_ON or test.PANOPTIC_ON):
            raise ValueError(
                "MODEL.MASK_FORMER.TEST: all of SEMANTIC_ON, INSTANCE_ON and PANOPTIC_ON are off; turn one on"
            )
        thing_classes = ()
        if test.PANOPTIC_ON or test.INSTANCE_ON:
            thing_classes = thing_contiguous_ids(cfg, test.PANOPTIC_ON)
        return cls(
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            thing_classes=frozenset(thing_classes),
            object_mask_threshold=test.OBJECT_MASK_THRESHOLD,
            overlap_threshold=test.OVERLAP_THRESHOLD,
            semantic_on=test.SEMANTIC_ON,
            panoptic_on=test.PANOPTIC_ON,
            instance_on=test.INSTANCE_ON,
            test_topk_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            sem_seg_postprocess_before_inference=(
                test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or test.PANOPTIC_ON or test.INSTANCE_ON
            ),
        )


def maskformer_inference(pred_logits, pred_masks, padded_size, image_sizes, output_sizes, settings):
    """
    Args:
        pred_logits: (N, Q, K+1) class logits of the last decoder layer.
        pred_masks: (N, Q, h, w) mask logits at 1/4 of the padded input size.
        padded_size: (Hp, Wp) of the padded input batch.
        image_sizes: per image, its (H, W) inside the padded batch.
        output_sizes: per image, the (height, width) to return the outputs at.
        settings: :class:`InferenceSettings`.

    Returns:
        per image, a dict with the outputs ``settings`` switches on.
    """
    # No-ops in float32; 16-bit predictions go to post-processing in float32.
    mask_cls_results = pred_logits.float()
    mask_pred_results = F.interpolate(pred_masks.float(), size=tuple(padded_size), mode="bilinear", align_corners=False)
    return [
        _inference_single(mask_cls, mask_pred, image_size, height, width, settings)
        for mask_cls, mask_pred, image_size, (height, width) in zip(
            mask_cls_results, mask_pred_results, image_sizes, output_sizes
        )
    ]


def _inference_single(mask_cls, mask_pred, image_size, height, width, settings):
    """
    Outputs of one image from its (Q, K+1) logits and (Q, Hp, Wp) mask logits at the padded input size. The mask
    logits are this function's to overwrite: once instance inference has binarized them, the probabilities that
    semantic and panoptic inference share replace them in place, so that post-processing holds one full-resolution
    (Q, H, W) tensor instead of two (on CPU, each is hundreds of MB of fresh memory per image).
    """
    result = {}
    if settings.sem_seg_postprocess_before_inference:
        mask_pred = retry_if_cuda_oom(resize_to_output)(mask_pred, image_size, height, width)
        mask_cls = mask_cls.to(mask_pred)
    if settings.instance_on:
        instances = retry_if_cuda_oom(instance_inference)(
            mask_cls,
            mask_pred,
            num_classes=settings.num_classes,
            topk=settings.test_topk_per_image,
            thing_classes=settings.thing_classes if settings.panoptic_on else None,
        )
    if settings.semantic_on or settings.panoptic_on:
        mask_prob = mask_pred.sigmoid_()
    if settings.semantic_on:
        sem_seg = retry_if_cuda_oom(semantic_inference)(mask_cls, mask_prob, mask_prob=mask_prob)
        if not settings.sem_seg_postprocess_before_inference:
            sem_seg = retry_if_cuda_oom(resize_to_output)(sem_seg, image_size, height, width)
        result["sem_seg"] = sem_seg
    if settings.panoptic_on:
        result["panoptic_seg"] = retry_if_cuda_oom(panoptic_inference)(
            mask_cls,
            mask_prob,
            num_classes=settings.num_classes,
            thing_classes=settings.thing_classes,
            object_mask_threshold=settings.object_mask_threshold,
            overlap_threshold=settings.overlap_threshold,
            mask_prob=mask_prob,
        )
    if settings.instance_on:
        result["instances"] = instances
    return result


def thing_contiguous_ids(cfg, required):
    """Contiguous ids of the thing classes of the training set's metadata (instance/panoptic outputs need them)."""
    name = cfg.DATASETS.TRAIN[0] if len(cfg.DATASETS.TRAIN) else None
    meta = MetadataCatalog.get(name) if name else None
    mapping = getattr(meta, "thing_dataset_id_to_contiguous_id", None) if meta is not None else None
    if mapping is None:
        if required:
            raise ValueError(
                f"MODEL.MASK_FORMER.TEST.PANOPTIC_ON needs thing/stuff metadata, but DATASETS.TRAIN[0]={name!r} has "
                "no 'thing_dataset_id_to_contiguous_id'; register the dataset (e.g. import mask2former) or set "
                "DATASETS.TRAIN to a panoptic dataset"
            )
        # Instance outputs of a dataset without thing/stuff split: every class is a thing.
        return tuple(range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES))
    return tuple(mapping.values())

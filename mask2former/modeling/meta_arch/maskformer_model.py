"""The MaskFormer meta-architecture: backbone + MaskFormerHead, Hungarian-matched losses, and inference."""
import functools
import logging
from contextlib import nullcontext
from typing import Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.structures import BitMasks, ImageList
from torch import nn

from ..cpu_features import native_bf16_matmul
from ..criterion import SetCriterion
from ..inference import InferenceSettings, maskformer_inference
from ..matcher import HungarianMatcher


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """
    Universal segmentation by mask classification: a fixed set of queries each predicts a class (or "no object")
    and a mask; semantic, instance and panoptic outputs are all derived from these pairs.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_queries: int,
        object_mask_threshold: float,
        overlap_threshold: float,
        thing_classes: Tuple[int, ...],
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: Tuple[float],
        pixel_std: Tuple[float],
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        test_topk_per_image: int,
        autocast_dtype: Optional[torch.dtype] = None,
    ):
        """
        Args:
            backbone: a detectron2 Backbone.
            sem_seg_head: MaskFormerHead, mapping backbone features to per-query predictions.
            criterion: the matching loss (SetCriterion); its ``weight_dict`` weighs the losses.
            num_queries: number of queries.
            object_mask_threshold: panoptic: minimum class probability of a query to be kept.
            overlap_threshold: panoptic: minimum visible fraction of a kept query's mask.
            thing_classes: contiguous ids of the "thing" classes (panoptic and instance outputs).
            size_divisibility: images are padded to a multiple of this (< 0: the backbone's).
            sem_seg_postprocess_before_inference: resize mask logits to the output size before, rather than
                after, computing the semantic scores (always true when panoptic or instance outputs are on).
            pixel_mean, pixel_std: per-channel normalization of the input image.
            semantic_on, panoptic_on, instance_on: which outputs inference returns.
            test_topk_per_image: instance outputs per image.
            autocast_dtype: the fast inference path: run the backbone and the head under ``torch.autocast`` with
                this dtype (post-processing stays in float32). None: float32 throughout. Training is unaffected.
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        self.overlap_threshold = overlap_threshold
        self.object_mask_threshold = object_mask_threshold
        self.thing_classes = frozenset(thing_classes)
        if size_divisibility < 0:
            size_divisibility = self.backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.semantic_on = semantic_on
        self.instance_on = instance_on
        self.panoptic_on = panoptic_on
        self.test_topk_per_image = test_topk_per_image
        self.autocast_dtype = autocast_dtype
        if not (semantic_on or instance_on or panoptic_on):
            raise ValueError(
                "MODEL.MASK_FORMER.TEST: all of SEMANTIC_ON, INSTANCE_ON and PANOPTIC_ON are off; turn one on"
            )

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        mf = cfg.MODEL.MASK_FORMER

        matcher = HungarianMatcher(
            cost_class=mf.CLASS_WEIGHT,
            cost_mask=mf.MASK_WEIGHT,
            cost_dice=mf.DICE_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
        )
        weight_dict = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
        if mf.DEEP_SUPERVISION:
            # One set of losses for every earlier prediction (DEC_LAYERS counts them all).
            weight_dict.update(
                {f"{k}_{i}": v for i in range(mf.DEC_LAYERS - 1) for k, v in list(weight_dict.items())}
            )
        criterion = SetCriterion(
            sem_seg_head.num_classes,
            matcher=matcher,
            weight_dict=weight_dict,
            eos_coef=mf.NO_OBJECT_WEIGHT,
            losses=["labels", "masks"],
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        )

        settings = InferenceSettings.from_config(cfg)
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "object_mask_threshold": settings.object_mask_threshold,
            "overlap_threshold": settings.overlap_threshold,
            "thing_classes": tuple(settings.thing_classes),
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": settings.sem_seg_postprocess_before_inference,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_on": settings.semantic_on,
            "instance_on": settings.instance_on,
            "panoptic_on": settings.panoptic_on,
            "test_topk_per_image": settings.test_topk_per_image,
            "autocast_dtype": _autocast_dtype(mf.TEST.AUTOCAST_DTYPE),
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def forward(self, batched_inputs):
        """
        Args:
            batched_inputs: a list of dataset dicts (DatasetMapper output): "image" (C, H, W) in the config's
                INPUT.FORMAT, "instances" with gt_classes and gt_masks for training, and optionally
                "height"/"width", the output size.

        Returns:
            training: a dict of weighted losses.
            inference: per image, a dict with "sem_seg" (K, H, W), "panoptic_seg" (id map, segments_info) and
            "instances", each when switched on by MODEL.MASK_FORMER.TEST.
        """
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
        with self._inference_autocast():
            outputs = self.sem_seg_head(self.backbone(images.tensor))

        if self.training:
            if "instances" not in batched_inputs[0]:
                raise ValueError("training needs 'instances' in every input dict (use a training dataset mapper)")
            targets = self.prepare_targets([x["instances"].to(self.device) for x in batched_inputs], images)
            losses = self.criterion(outputs, targets)
            weights = self.criterion.weight_dict
            return {k: v * weights[k] for k, v in losses.items() if k in weights}

        output_sizes = [
            (x.get("height", size[0]), x.get("width", size[1])) for x, size in zip(batched_inputs, images.image_sizes)
        ]
        return maskformer_inference(
            outputs["pred_logits"],
            outputs["pred_masks"],
            images.tensor.shape[-2:],
            images.image_sizes,
            output_sizes,
            self.inference_settings,
        )

    @property
    def inference_settings(self):
        """The post-processing settings, from the attributes (which callers may change after building)."""
        return InferenceSettings(
            num_classes=self.sem_seg_head.num_classes,
            thing_classes=self.thing_classes,
            object_mask_threshold=self.object_mask_threshold,
            overlap_threshold=self.overlap_threshold,
            semantic_on=self.semantic_on,
            panoptic_on=self.panoptic_on,
            instance_on=self.instance_on,
            test_topk_per_image=self.test_topk_per_image,
            sem_seg_postprocess_before_inference=self.sem_seg_postprocess_before_inference,
        )

    def _inference_autocast(self):
        """Autocast for the fast inference path; a no-op otherwise (it must not switch off a caller's autocast)."""
        if self.training or self.autocast_dtype is None:
            return nullcontext()
        if self.device.type == "cpu" and self.autocast_dtype == torch.bfloat16 and not native_bf16_matmul():
            _log_bf16_fallback()
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare_targets(self, targets, images):
        """Per-image {"labels", "masks"} with the masks zero-padded to the batch's padded size."""
        h_pad, w_pad = images.tensor.shape[-2:]
        new_targets = []
        for target in targets:
            gt_masks = target.gt_masks
            if isinstance(gt_masks, BitMasks):
                gt_masks = gt_masks.tensor
            padded = gt_masks.new_zeros((gt_masks.shape[0], h_pad, w_pad))
            padded[:, : gt_masks.shape[1], : gt_masks.shape[2]] = gt_masks
            new_targets.append({"labels": target.gt_classes, "masks": padded})
        return new_targets


@functools.lru_cache(maxsize=None)
def _log_bf16_fallback():
    """Said once per process."""
    logging.getLogger(__name__).warning(
        "MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE bfloat16: this CPU has no bf16 matrix instructions (amx_bf16, "
        "avx512_bf16), on which bfloat16 is slower than float32; running in float32"
    )


def _autocast_dtype(name):
    """MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE as a torch dtype ("" or "float32" = off)."""
    dtypes = {"": None, "float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(
            f"MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE={name!r} is not supported: use \"\" or \"float32\" (off), "
            "\"bfloat16\" or \"float16\""
        )
    return dtypes[name]


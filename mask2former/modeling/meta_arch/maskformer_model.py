"""The MaskFormer meta-architecture: backbone + MaskFormerHead, Hungarian-matched losses, and inference."""
from contextlib import nullcontext
from typing import Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.structures import BitMasks, ImageList
from detectron2.utils.memory import retry_if_cuda_oom
from torch import nn
from torch.nn import functional as F

from ..criterion import SetCriterion
from ..matcher import HungarianMatcher
from ..postprocessing import instance_inference, panoptic_inference, resize_to_output, semantic_inference


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

        test = mf.TEST
        thing_classes = ()
        if test.PANOPTIC_ON or test.INSTANCE_ON:
            thing_classes = tuple(_thing_contiguous_ids(cfg, test.PANOPTIC_ON))
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "thing_classes": thing_classes,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": (
                test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or test.PANOPTIC_ON or test.INSTANCE_ON
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_on": test.SEMANTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "autocast_dtype": _autocast_dtype(test.AUTOCAST_DTYPE),
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

        # No-ops in float32; the fast path's predictions go to post-processing in float32.
        mask_cls_results = outputs["pred_logits"].float()
        mask_pred_results = F.interpolate(
            outputs["pred_masks"].float(), size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
        )
        del outputs
        processed_results = []
        for mask_cls, mask_pred, input_per_image, image_size in zip(
            mask_cls_results, mask_pred_results, batched_inputs, images.image_sizes
        ):
            height = input_per_image.get("height", image_size[0])
            width = input_per_image.get("width", image_size[1])
            processed_results.append(self.inference_single(mask_cls, mask_pred, image_size, height, width))
        return processed_results

    def _inference_autocast(self):
        """Autocast for the fast inference path; a no-op otherwise (it must not switch off a caller's autocast)."""
        if self.training or self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def inference_single(self, mask_cls, mask_pred, image_size, height, width):
        """Outputs of one image from its (Q, K+1) logits and (Q, Hp, Wp) mask logits at the padded input size."""
        result = {}
        if self.sem_seg_postprocess_before_inference:
            mask_pred = retry_if_cuda_oom(resize_to_output)(mask_pred, image_size, height, width)
            mask_cls = mask_cls.to(mask_pred)
        # Shared by all outputs.
        mask_prob = retry_if_cuda_oom(torch.sigmoid)(mask_pred)
        if self.semantic_on:
            sem_seg = retry_if_cuda_oom(semantic_inference)(mask_cls, mask_pred, mask_prob=mask_prob)
            if not self.sem_seg_postprocess_before_inference:
                sem_seg = retry_if_cuda_oom(resize_to_output)(sem_seg, image_size, height, width)
            result["sem_seg"] = sem_seg
        num_classes = self.sem_seg_head.num_classes
        if self.panoptic_on:
            result["panoptic_seg"] = retry_if_cuda_oom(panoptic_inference)(
                mask_cls,
                mask_pred,
                num_classes=num_classes,
                thing_classes=self.thing_classes,
                object_mask_threshold=self.object_mask_threshold,
                overlap_threshold=self.overlap_threshold,
                mask_prob=mask_prob,
            )
        if self.instance_on:
            result["instances"] = retry_if_cuda_oom(instance_inference)(
                mask_cls,
                mask_pred,
                num_classes=num_classes,
                topk=self.test_topk_per_image,
                thing_classes=self.thing_classes if self.panoptic_on else None,
                mask_prob=mask_prob,
            )
        return result

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


def _autocast_dtype(name):
    """MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE as a torch dtype ("" = off)."""
    dtypes = {"": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(
            f"MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE={name!r} is not supported: use \"\" (off, float32), "
            "\"bfloat16\" or \"float16\""
        )
    return dtypes[name]


def _thing_contiguous_ids(cfg, required):
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
        return range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    return mapping.values()

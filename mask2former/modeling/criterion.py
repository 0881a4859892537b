"""Set-prediction losses of Mask2Former: classification over matched queries, point-sampled mask BCE and dice."""
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm
from torch import nn
from torch.nn import functional as F

_SUPPORTED_LOSSES = ("labels", "masks")


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sigmoid BCE of (N, P) point logits against (N, P) targets: mean over points, sum over masks / num_masks."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss (+1 smoothed) of (N, P) point logits against (N, P) targets, summed over masks / num_masks."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def mask_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of mask logits: highest where the prediction is closest to the 0.5 boundary."""
    return -logits.abs()


class SetCriterion(nn.Module):
    """
    The losses of a set of (class, mask) predictions, after one-to-one matching to the targets:

    - ``loss_ce``: cross-entropy over K+1 classes for every query; unmatched queries must predict "no object"
      (class K), whose weight is ``eos_coef``.
    - ``loss_mask`` / ``loss_dice``: sigmoid BCE and dice of each matched mask, evaluated at ``num_points``
      points chosen by importance sampling (PointRend): mostly where the prediction is uncertain, plus some
      uniformly random ones. Only matched masks are sampled, so memory does not grow with queries x targets.

    Mask losses are normalised by the number of target masks averaged over all workers. The losses of every
    entry of ``outputs["aux_outputs"]`` are returned too, with the suffix ``_<i>``.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: List[str],
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
    ):
        """
        Args:
            num_classes: number of classes K, without "no object".
            matcher: assigns predictions to targets (HungarianMatcher).
            weight_dict: weight of each loss name; kept here for the meta-architecture, not applied.
            eos_coef: classification weight of the "no object" class.
            losses: which of "labels" and "masks" to compute.
            num_points: points at which each mask loss is evaluated.
            oversample_ratio: candidate points per kept point for importance sampling (>= 1).
            importance_sample_ratio: fraction of the points chosen by uncertainty; the rest are uniform.
        """
        super().__init__()
        unknown = set(losses) - set(_SUPPORTED_LOSSES)
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {sorted(unknown)}; supported: {_SUPPORTED_LOSSES}")
        if num_points <= 0:
            raise ValueError(f"SetCriterion: num_points={num_points} must be > 0 (MODEL.MASK_FORMER.TRAIN_NUM_POINTS)")
        if oversample_ratio < 1:
            raise ValueError(
                f"SetCriterion: oversample_ratio={oversample_ratio} must be >= 1 (MODEL.MASK_FORMER.OVERSAMPLE_RATIO)"
            )
        if not 0 <= importance_sample_ratio <= 1:
            raise ValueError(
                f"SetCriterion: importance_sample_ratio={importance_sample_ratio} must be in [0, 1] "
                "(MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO)"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = list(losses)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: "pred_logits" (B, Q, K+1), "pred_masks" (B, Q, h, w) mask logits, and optionally
                "aux_outputs", a list of dicts with the same two keys (earlier decoder layers).
            targets: per image, "labels" (n,) int64 and "masks" (n, H, W), covering the padded image.

        Returns:
            unweighted losses: "loss_ce", "loss_mask", "loss_dice" (those enabled by ``losses``) and the same
            with suffix ``_<i>`` for aux output i.
        """
        num_masks = self.num_masks(targets, outputs["pred_logits"].device)
        losses = self.layer_losses(outputs, targets, num_masks)
        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self.layer_losses(aux_outputs, targets, num_masks).items()})
        return losses

    @staticmethod
    def num_masks(targets, device) -> float:
        """Target masks per worker: the batch total averaged over all workers, at least 1."""
        num_masks = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        world_size = comm.get_world_size()
        if world_size > 1:
            dist.all_reduce(num_masks)
        return max(num_masks.item() / world_size, 1.0)

    def layer_losses(self, outputs, targets, num_masks):
        """The losses of one prediction layer, with its own matching."""
        indices = self.matcher(outputs, targets)
        losses = {}
        if "labels" in self.losses:
            losses["loss_ce"] = self.loss_labels(outputs, targets, indices)
        if "masks" in self.losses:
            losses.update(self.loss_masks(outputs, targets, indices, num_masks))
        return losses

    def loss_labels(self, outputs, targets, indices) -> torch.Tensor:
        """Weighted cross-entropy over all queries; a query's target is its matched label, else "no object"."""
        logits = outputs["pred_logits"].float()
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        batch_idx, query_idx = _matched_queries(indices, logits.device)
        target_classes[batch_idx, query_idx] = torch.cat(
            [t["labels"][tgt.to(t["labels"].device)] for t, (_, tgt) in zip(targets, indices)]
        ).to(logits.device)
        return F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)

    def loss_masks(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        """Point-sampled sigmoid BCE and dice between each matched mask and its target."""
        pred_masks = outputs["pred_masks"]
        batch_idx, query_idx = _matched_queries(indices, pred_masks.device)
        if batch_idx.numel() == 0:
            # No target in the batch: zero losses that still reach every mask parameter (DDP needs the graph).
            zero = pred_masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        src_masks = pred_masks[batch_idx, query_idx].float()[:, None]  # (N, 1, h, w)
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                src_masks,
                mask_uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            point_labels = self.sample_targets(targets, indices, coords)
        point_logits = point_sample(src_masks, coords, align_corners=False)[:, 0]
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    @staticmethod
    def sample_targets(targets, indices, coords) -> torch.Tensor:
        """(N, P) target values at ``coords`` (N, P, 2), for the matched targets in ``indices`` order."""
        point_labels, start = [], 0
        for target, (_, tgt) in zip(targets, indices):
            if tgt.numel() == 0:
                continue
            masks = target["masks"][tgt.to(target["masks"].device)][:, None].to(coords)
            point_labels.append(point_sample(masks, coords[start : start + len(tgt)], align_corners=False)[:, 0])
            start += len(tgt)
        return torch.cat(point_labels)

    def extra_repr(self):
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )


def _matched_queries(indices: List[Tuple[torch.Tensor, torch.Tensor]], device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(image index, query index) of every matched query, images in batch order."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx.to(device), query_idx.to(device)

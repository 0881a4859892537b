"""Bipartite matching of predicted (class, mask) pairs to ground-truth segments, with point-sampled mask costs."""
from typing import Dict, List, Tuple

import torch
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F


def pairwise_sigmoid_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """
    Mean binary cross-entropy of every prediction against every target.

    Args:
        logits: (N, P) mask logits at P points.
        targets: (M, P) target values in [0, 1] at the same points.

    Returns:
        (N, M) costs.
    """
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x): linear in t, so all pairs are two matrix products.
    pos = F.softplus(-logits)
    neg = F.softplus(logits)
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss (1 - soft dice with +1 smoothing) of every (N, P) prediction against every (M, P) target."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """
    One-to-one assignment of queries to targets minimising
    ``cost_class * (-p(target class)) + cost_mask * BCE + cost_dice * dice``.

    The mask costs are evaluated on ``num_points`` points drawn uniformly in the image (one set per image, shared
    by its predictions and targets) instead of on full masks, which keeps matching cheap for large images and
    many targets. Queries left unmatched are "no object".
    """

    def __init__(self, cost_class: float = 1.0, cost_mask: float = 1.0, cost_dice: float = 1.0, num_points: int = 0):
        """
        Args:
            cost_class, cost_mask, cost_dice: weights of the classification, sigmoid-BCE and dice costs.
            num_points: points at which the mask costs are evaluated.
        """
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0; set MODEL.MASK_FORMER.{CLASS,MASK,DICE}_WEIGHT")
        if num_points <= 0:
            raise ValueError(
                f"HungarianMatcher: num_points={num_points} must be > 0 (MODEL.MASK_FORMER.TRAIN_NUM_POINTS)"
            )
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: "pred_logits" (B, Q, K+1) class logits and "pred_masks" (B, Q, h, w) mask logits.
            targets: per image, "labels" (n,) int64 and "masks" (n, H, W) covering the same (padded) image.

        Returns:
            per image, ``(pred_idx, tgt_idx)``: int64 tensors of length min(Q, n); query ``pred_idx[i]`` is
            assigned to target ``tgt_idx[i]``.
        """
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {len(targets)} targets for a batch of {pred_logits.shape[0]} images")
        return [self.match_image(lg, mk, t) for lg, mk, t in zip(pred_logits, pred_masks, targets)]

    def match_image(self, logits: torch.Tensor, masks: torch.Tensor, target: Dict[str, torch.Tensor]):
        """Assignment for one image: (Q, K+1) logits, (Q, h, w) mask logits and its target dict."""
        labels, tgt_masks = target["labels"], target["masks"]
        if tgt_masks.dim() != 3 or tgt_masks.shape[0] != labels.shape[0]:
            raise ValueError(
                f"HungarianMatcher: target masks of shape {tuple(tgt_masks.shape)} do not match {labels.shape[0]} "
                "labels; expected (num_targets, H, W)"
            )
        empty = torch.empty(0, dtype=torch.int64)
        if labels.numel() == 0:
            return empty, empty
        # Costs in fp32 whatever the autocast context: fp16 dot products over many points lose the ranking.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            cost = self.cost_matrix(logits.float(), masks.float(), labels, tgt_masks.float())
        pred_idx, tgt_idx = linear_sum_assignment(cost.cpu().numpy())
        return torch.as_tensor(pred_idx, dtype=torch.int64), torch.as_tensor(tgt_idx, dtype=torch.int64)

    def cost_matrix(self, logits, masks, labels, tgt_masks):
        """(Q, n) total matching cost of every query against every target of one image."""
        cost_class = -logits.softmax(-1)[:, labels]
        # One random set of points in [0, 1]^2 for the predictions and the targets of this image.
        coords = torch.rand(1, self.num_points, 2, device=masks.device)
        pred_points = point_sample(masks[:, None], coords.expand(masks.shape[0], -1, -1), align_corners=False)[:, 0]
        tgt_points = point_sample(tgt_masks[:, None], coords.expand(tgt_masks.shape[0], -1, -1), align_corners=False)
        tgt_points = tgt_points[:, 0]
        return (
            self.cost_class * cost_class
            + self.cost_mask * pairwise_sigmoid_ce(pred_points, tgt_points)
            + self.cost_dice * pairwise_dice(pred_points, tgt_points)
        )

    def extra_repr(self):
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
            f"num_points={self.num_points}"
        )

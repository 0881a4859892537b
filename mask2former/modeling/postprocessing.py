"""
Turning per-query class logits and mask logits of one image into semantic, panoptic and instance outputs.

All functions take ``mask_cls`` (Q, K+1) logits, the last column being "no object", and ``mask_pred`` (Q, H, W)
mask logits already at the output resolution.
"""
from typing import Collection, Optional

import torch
from detectron2.structures import BitMasks, Instances
from torch.nn import functional as F


def semantic_inference(mask_cls, mask_pred):
    """Per-class scores (K, H, W): sum over queries of class probability times mask probability."""
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())


def panoptic_inference(
    mask_cls,
    mask_pred,
    *,
    num_classes: int,
    thing_classes: Collection[int],
    object_mask_threshold: float,
    overlap_threshold: float,
):
    """
    Panoptic id map (H, W) int32 (0 = no segment) and its ``segments_info``.

    Queries whose best class is a real class with probability above ``object_mask_threshold`` compete for each
    pixel by probability x mask probability. A query keeps the pixels it wins where its own mask probability is
    >= 0.5, unless that is less than ``overlap_threshold`` of its mask (it is mostly hidden): then it is dropped.
    All queries of one stuff class share one segment.
    """
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    mask_prob = mask_pred.sigmoid()
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_prob[keep]

    h, w = mask_prob.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=mask_prob.device)
    segments_info = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info

    winner = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    stuff_segment_ids = {}
    segment_id = 0
    for k, pred_class in enumerate(cur_classes.tolist()):
        isthing = pred_class in thing_classes
        won = winner == k
        own = cur_masks[k] >= 0.5
        mask = won & own
        mask_area = int(won.sum())
        original_area = int(own.sum())
        if mask_area == 0 or original_area == 0 or not bool(mask.any()):
            continue
        if mask_area / original_area < overlap_threshold:
            continue
        if not isthing and pred_class in stuff_segment_ids:
            panoptic_seg[mask] = stuff_segment_ids[pred_class]
            continue
        segment_id += 1
        if not isthing:
            stuff_segment_ids[pred_class] = segment_id
        panoptic_seg[mask] = segment_id
        segments_info.append({"id": segment_id, "isthing": bool(isthing), "category_id": int(pred_class)})
    return panoptic_seg, segments_info


def instance_inference(
    mask_cls,
    mask_pred,
    *,
    num_classes: int,
    topk: int,
    thing_classes: Optional[Collection[int]] = None,
):
    """
    The ``topk`` best (query, class) pairs over all queries and classes as ``Instances``.

    With ``thing_classes``, pairs of other classes are dropped after the top-k (panoptic models also predict
    stuff). Scores are class probability x mean mask probability inside the binary mask (logit > 0); boxes are
    the binary masks' bounding boxes.
    """
    num_queries = mask_cls.shape[0]
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(num_classes, device=mask_cls.device).repeat(num_queries)
    topk = min(topk, scores.numel())
    scores_per_image, topk_indices = scores.flatten(0, 1).topk(topk, sorted=False)
    labels_per_image = labels[topk_indices]
    query_indices = torch.div(topk_indices, num_classes, rounding_mode="floor")
    masks = mask_pred[query_indices]

    if thing_classes is not None:
        is_thing = torch.tensor([c in thing_classes for c in labels_per_image.tolist()], dtype=torch.bool)
        is_thing = is_thing.to(device=mask_cls.device)
        scores_per_image = scores_per_image[is_thing]
        labels_per_image = labels_per_image[is_thing]
        query_indices = query_indices[is_thing]
        masks = masks[is_thing]

    result = Instances(tuple(mask_pred.shape[-2:]))
    binary = (masks > 0).float()
    result.pred_masks = binary
    result.pred_boxes = BitMasks(binary > 0).get_bounding_boxes()
    mask_scores = (masks.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    result.scores = scores_per_image * mask_scores
    result.pred_classes = labels_per_image
    result.query_indices = query_indices
    return result

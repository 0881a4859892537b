"""
Turning per-query class logits and mask logits of one image into semantic, panoptic and instance outputs.

All functions take ``mask_cls`` (Q, K+1) logits, the last column being "no object", and ``mask_pred`` (Q, H, W)
mask logits already at the output resolution. Semantic and panoptic inference optionally take ``mask_prob``,
``mask_pred.sigmoid()`` computed once by a caller that wants both: at full resolution it is one of the costliest
steps. Instance inference needs the logits themselves (a mask is logit > 0) and computes the probabilities of the
masks it scores.

Panoptic and instance inference have two equivalent code paths, chosen by ``batched`` (default: by device). On
CUDA they work on all queries at once, without per-query Python loops or host syncs per query; on CPU a loop over
queries is faster (it touches one full-resolution mask at a time) and is the default there.
"""
from typing import Collection, Optional

import torch
from detectron2.structures import Boxes, Instances
from torch.nn import functional as F


def resize_to_output(result, image_size, height, width):
    """
    (C, Hp, Wp) padded-input-sized maps to (C, height, width): crop the padding to ``image_size``, then resize
    bilinearly, as detectron2's ``sem_seg_postprocess``; the resize is skipped when the sizes already agree (it
    would be the identity), which saves a full-resolution pass over all queries.
    """
    result = result[:, : image_size[0], : image_size[1]]
    if tuple(result.shape[-2:]) == (height, width):
        return result.contiguous()
    return F.interpolate(result[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def semantic_inference(mask_cls, mask_pred, *, mask_prob=None):
    """Per-class scores (K, H, W): sum over queries of class probability times mask probability."""
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid() if mask_prob is None else mask_prob)


def panoptic_inference(
    mask_cls,
    mask_pred,
    *,
    num_classes: int,
    thing_classes: Collection[int],
    object_mask_threshold: float,
    overlap_threshold: float,
    mask_prob=None,
    batched: Optional[bool] = None,
):
    """
    Panoptic id map (H, W) int32 (0 = no segment) and its ``segments_info``.

    Queries whose best class is a real class with probability above ``object_mask_threshold`` compete for each
    pixel by probability x mask probability. A query keeps the pixels it wins where its own mask probability is
    >= 0.5, unless that is less than ``overlap_threshold`` of its mask (it is mostly hidden): then it is dropped.
    All queries of one stuff class share one segment. ``batched`` (default: on CUDA) assigns the segments of all
    queries at once instead of in a loop over queries; the outputs are the same.
    """
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    if mask_prob is None:
        mask_prob = mask_pred.sigmoid()
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    kept_queries = keep.nonzero()[:, 0]
    cur_classes = labels[kept_queries]

    h, w = mask_prob.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=mask_prob.device)
    segments_info = []
    num_kept = kept_queries.numel()
    if num_kept == 0:
        return panoptic_seg, segments_info

    batched = mask_prob.is_cuda if batched is None else batched
    winner, own_area = (_winners_batched if batched else _winners_loop)(mask_prob, scores, kept_queries)
    # A pixel can only go to the query that wins it, so all per-query areas come from one pass over the winners.
    visible = mask_prob.gather(0, kept_queries[winner][None])[0] >= 0.5
    won_area = torch.bincount(winner.flatten(), minlength=num_kept)
    visible_area = torch.bincount(winner[visible], minlength=num_kept)
    if batched:
        query_segment_ids, segments_info = _segment_ids_batched(
            cur_classes, won_area, visible_area, own_area, thing_classes, num_classes, overlap_threshold
        )
        return torch.where(visible, query_segment_ids[winner], panoptic_seg), segments_info

    won_area, visible_area, own_area = won_area.tolist(), visible_area.tolist(), own_area.tolist()
    query_segment_ids = [0] * num_kept
    stuff_segment_ids = {}
    segment_id = 0
    for k, pred_class in enumerate(cur_classes.tolist()):
        if won_area[k] == 0 or own_area[k] == 0 or visible_area[k] == 0:
            continue
        if won_area[k] / own_area[k] < overlap_threshold:
            continue
        isthing = pred_class in thing_classes
        if not isthing and pred_class in stuff_segment_ids:
            query_segment_ids[k] = stuff_segment_ids[pred_class]
            continue
        segment_id += 1
        if not isthing:
            stuff_segment_ids[pred_class] = segment_id
        query_segment_ids[k] = segment_id
        segments_info.append({"id": segment_id, "isthing": bool(isthing), "category_id": int(pred_class)})
    query_segment_ids = torch.tensor(query_segment_ids, dtype=torch.int32, device=panoptic_seg.device)
    panoptic_seg = torch.where(visible, query_segment_ids[winner], panoptic_seg)
    return panoptic_seg, segments_info


def _winners_batched(mask_prob, scores, kept_queries):
    """
    Per pixel, the index into ``kept_queries`` of the query with the highest score x mask probability (the first
    one on ties), and per kept query the area of its own mask (probability >= 0.5); all queries at once.
    """
    masks = mask_prob[kept_queries]
    winner = (scores[kept_queries].view(-1, 1, 1) * masks).argmax(0)
    return winner, (masks >= 0.5).flatten(1).sum(1)


def _winners_loop(mask_prob, scores, kept_queries):
    """
    ``_winners_batched``'s results, one query at a time in (H, W) buffers: the batched form copies the kept masks
    and their products (hundreds of MB at full resolution) and its argmax across queries is slow on CPU (5x faster
    for 30 queries at 800x1216). A pixel changes hands only to a strictly higher product, so ties go to the first.
    """
    h, w = mask_prob.shape[-2:]
    best = mask_prob.new_full((h, w), float("-inf"))
    product = mask_prob.new_empty((h, w))
    higher = torch.empty((h, w), dtype=torch.bool, device=mask_prob.device)
    winner = torch.zeros((h, w), dtype=torch.long, device=mask_prob.device)
    own_area = torch.empty(kept_queries.numel(), dtype=torch.long, device=mask_prob.device)
    for k, q in enumerate(kept_queries.tolist()):
        torch.mul(scores[q], mask_prob[q], out=product)
        torch.gt(product, best, out=higher)
        torch.maximum(best, product, out=best)
        winner.masked_fill_(higher, k)
        own_area[k] = torch.count_nonzero(mask_prob[q] >= 0.5)
    return winner, own_area


def _is_thing_table(thing_classes, size, device):
    """
    (size,) bool: whether each label is a thing class. Ids outside the label range (metadata of a dataset with more
    classes than the model predicts) never match a label, as in a membership test.
    """
    table = torch.zeros(size, dtype=torch.bool)
    table[[c for c in thing_classes if 0 <= c < size]] = True
    return table.to(device)


def _segment_ids_batched(classes, won_area, visible_area, own_area, thing_classes, num_classes, overlap_threshold):
    """
    The segment id of each kept query (0 = none) and ``segments_info``, as the per-query loop of
    ``panoptic_inference`` assigns them, computed for all queries at once with a single host sync at the end.
    """
    device = classes.device
    index = torch.arange(classes.numel(), device=device)
    is_thing = _is_thing_table(thing_classes, num_classes + 1, device)[classes]
    # The ratio in float64, as the loop's Python division, so that both paths agree at the threshold.
    valid = (won_area > 0) & (own_area > 0) & (visible_area > 0)
    valid &= won_area.double() / own_area.double().clamp(min=1) >= overlap_threshold
    # The first valid query of each stuff class opens its segment; later ones of that class join it.
    valid_stuff = valid & ~is_thing
    first_of_class = torch.full((num_classes + 1,), classes.numel(), dtype=torch.long, device=device)
    first_of_class.scatter_reduce_(0, classes[valid_stuff], index[valid_stuff], reduce="amin")
    opens = valid & (is_thing | first_of_class[classes].eq(index))
    new_ids = torch.cumsum(opens, 0, dtype=torch.int32)
    owner = torch.where(valid_stuff, first_of_class[classes], index)
    query_segment_ids = torch.where(valid, new_ids[owner], torch.zeros_like(new_ids))
    opened = torch.stack([new_ids, classes.to(torch.int32), is_thing.to(torch.int32)], 1)[opens].tolist()
    segments_info = [{"id": i, "isthing": bool(t), "category_id": c} for i, c, t in opened]
    return query_segment_ids, segments_info


def instance_inference(
    mask_cls,
    mask_pred,
    *,
    num_classes: int,
    topk: int,
    thing_classes: Optional[Collection[int]] = None,
    batched: Optional[bool] = None,
):
    """
    The ``topk`` best (query, class) pairs over all queries and classes as ``Instances``.

    With ``thing_classes``, pairs of other classes are dropped after the top-k (panoptic models also predict
    stuff). Scores are class probability x mean mask probability inside the binary mask (logit > 0); boxes are
    the binary masks' bounding boxes. ``batched`` (default: on CUDA) scores all selected queries' masks at once
    instead of one at a time; the outputs are the same.
    """
    num_queries = mask_cls.shape[0]
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(num_classes, device=mask_cls.device).repeat(num_queries)
    topk = min(topk, scores.numel())
    scores_per_image, topk_indices = scores.flatten(0, 1).topk(topk, sorted=False)
    labels_per_image = labels[topk_indices]
    query_indices = torch.div(topk_indices, num_classes, rounding_mode="floor")

    if thing_classes is not None:
        is_thing = _is_thing_table(thing_classes, num_classes, mask_cls.device)[labels_per_image]
        scores_per_image = scores_per_image[is_thing]
        labels_per_image = labels_per_image[is_thing]
        query_indices = query_indices[is_thing]

    result = Instances(tuple(mask_pred.shape[-2:]))
    if (mask_pred.is_cuda if batched is None else batched):
        # Many pairs share a query: each selected query's mask is binarized, scored and boxed once.
        queries, source = torch.unique(query_indices, return_inverse=True)
        selected = mask_pred[queries]
        binary = selected.gt(0).to(mask_pred.dtype)
        prob = selected.sigmoid_()
        mask_scores = (prob * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        masks, rows_max, cols_max = binary[source], binary.amax(2)[source], binary.amax(1)[source]
    else:
        masks, mask_scores, rows_max, cols_max, source = _instance_masks_loop(mask_pred, query_indices)
    result.pred_masks = masks
    result.pred_boxes = Boxes(_boxes_from_projections(rows_max > 0, cols_max > 0))
    result.scores = scores_per_image * mask_scores[source]
    result.pred_classes = labels_per_image
    result.query_indices = query_indices
    return result


def _instance_masks_loop(mask_pred, query_indices):
    """
    ``instance_inference``'s binary masks (N, H, W) of the selected queries, the scores of the distinct queries'
    masks, the masks' row and column maxima, and each pair's index into the scores. Many pairs share a query: each
    query's mask is binarized, scored and boxed once, by its first pair, one mask at a time, so that no temporary is
    larger than one full-resolution mask.
    """
    pair_queries = query_indices.tolist()
    first_pair = {}
    source = [first_pair.setdefault(q, j) for j, q in enumerate(pair_queries)]
    h, w = mask_pred.shape[-2:]
    masks = mask_pred.new_empty((len(source), h, w))
    mask_scores = mask_pred.new_zeros(len(source))
    rows_max = mask_pred.new_zeros((len(source), h))
    cols_max = mask_pred.new_zeros((len(source), w))
    # One buffer for every query's probability x binary mask: fresh full-resolution temporaries would be faulted in
    # anew by the OS for each query whenever the allocator hands their pages back in between.
    weighted = mask_pred.new_empty((h, w))
    for j, q in enumerate(pair_queries):
        if source[j] != j:
            masks[j] = masks[source[j]]
            continue
        # Comparing into a float tensor is several times faster on CPU than making a bool mask and converting it.
        binary = torch.gt(mask_pred[q], 0, out=masks[j])
        torch.sigmoid(mask_pred[q], out=weighted).mul_(binary)
        mask_scores[j] = weighted.sum() / (binary.sum() + 1e-6)
        rows_max[j], cols_max[j] = binary.amax(1), binary.amax(0)
    source = torch.as_tensor(source, dtype=torch.long, device=mask_pred.device)
    return masks, mask_scores, rows_max[source], cols_max[source], source


def _boxes_from_projections(rows_any, cols_any):
    """
    XYXY boxes (N, 4) of binary masks given, per mask, which rows (N, H) and columns (N, W) hold a pixel; the box of
    an empty mask is all zeros, as detectron2's ``BitMasks.get_bounding_boxes``.
    """
    def first_last(any_):
        first = any_.to(torch.uint8).argmax(1)
        last = any_.shape[1] - any_.flip(1).to(torch.uint8).argmax(1)
        return first, last

    x0, x1 = first_last(cols_any)
    y0, y1 = first_last(rows_any)
    boxes = torch.stack([x0, y0, x1, y1], 1).to(torch.float32)
    return boxes * cols_any.any(1, keepdim=True)

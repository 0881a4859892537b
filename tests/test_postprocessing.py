"""
Panoptic and instance post-processing reproduce the original's outputs on crafted inputs with large margins, in
both code paths: the per-query loops (CPU default) and the batched one (CUDA default), which agree on any input.
"""
import json

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from mask2former.modeling.postprocessing import instance_inference, panoptic_inference, semantic_inference

REF = FIXTURES / "reference_tiny"


@pytest.fixture(scope="module")
def cases():
    return json.loads((REF / "postproc_cases.json").read_text()), np.load(REF / "postproc_cases.npz")


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("case", ["rich", "empty"])
def test_panoptic_inference_matches_original(cases, case, batched):
    spec, arrays = cases
    panoptic_seg, segments_info = panoptic_inference(
        torch.from_numpy(arrays[f"{case}_mask_cls"]),
        torch.from_numpy(arrays[f"{case}_mask_pred"]),
        num_classes=spec["num_classes"],
        thing_classes=set(spec["thing_contiguous_ids"]),
        object_mask_threshold=spec["object_mask_threshold"],
        overlap_threshold=spec["overlap_threshold"],
        batched=batched,
    )
    assert segments_info == spec["cases"][case]["segments_info"]
    np.testing.assert_array_equal(panoptic_seg.numpy(), arrays[f"{case}_panoptic_seg"])


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("case", ["rich", "empty"])
def test_instance_inference_matches_original(cases, case, batched):
    spec, arrays = cases
    instances = instance_inference(
        torch.from_numpy(arrays[f"{case}_mask_cls"]),
        torch.from_numpy(arrays[f"{case}_mask_pred"]),
        num_classes=spec["num_classes"],
        topk=spec["test_topk_per_image"],
        thing_classes=set(spec["thing_contiguous_ids"]),
        batched=batched,
    )
    packed = arrays[f"{case}_inst_masks_unique_packed"]
    unique = np.stack([np.unpackbits(row)[: 64 * 64].reshape(64, 64) for row in packed]).astype(bool)
    expected_masks = unique[arrays[f"{case}_inst_masks_index"]]
    assert len(instances) == spec["cases"][case]["num_instances"]

    def canonical(classes, scores, masks):
        # The original's top-k is unsorted: compare as sets of (class, score, mask).
        return sorted(zip(classes, scores, (m.tobytes() for m in masks)))

    ours = canonical(
        instances.pred_classes.tolist(), instances.scores.tolist(), (instances.pred_masks.numpy() > 0)
    )
    theirs = canonical(
        arrays[f"{case}_inst_pred_classes"].tolist(), arrays[f"{case}_inst_scores"].tolist(), expected_masks
    )
    assert [(c, m) for c, _, m in ours] == [(c, m) for c, _, m in theirs]
    np.testing.assert_allclose([s for _, s, _ in ours], [s for _, s, _ in theirs], rtol=0, atol=1e-6)


@pytest.mark.parametrize("batched", [False, True])
def test_stuff_queries_of_one_class_share_one_segment(batched):
    # Two confident queries of stuff class 5 on the left and right halves, one thing query (class 0) in the middle.
    mask_cls = torch.full((3, 7), -10.0)
    mask_cls[0, 5] = mask_cls[1, 5] = mask_cls[2, 0] = 10.0
    mask_pred = torch.full((3, 8, 8), -10.0)
    mask_pred[0, :, :4] = 10.0
    mask_pred[1, :, 4:] = 10.0
    mask_pred[2, 3:5, 3:5] = 20.0
    panoptic_seg, segments_info = panoptic_inference(
        mask_cls, mask_pred, num_classes=6, thing_classes={0}, object_mask_threshold=0.8, overlap_threshold=0.5,
        batched=batched,
    )
    assert segments_info == [
        {"id": 1, "isthing": False, "category_id": 5},
        {"id": 2, "isthing": True, "category_id": 0},
    ]
    assert (panoptic_seg == 1).sum() == 64 - 4
    assert (panoptic_seg[3:5, 3:5] == 2).all()


def test_semantic_inference_is_probability_weighted_sum():
    torch.manual_seed(0)
    mask_cls, mask_pred = torch.randn(4, 6), torch.randn(4, 5, 7)
    expected = sum(
        torch.softmax(mask_cls[q], -1)[:5, None, None] * torch.sigmoid(mask_pred[q])[None] for q in range(4)
    )
    torch.testing.assert_close(semantic_inference(mask_cls, mask_pred), expected)


def _random_predictions(seed, num_queries=30, num_classes=7, size=(32, 28)):
    """
    Logits where many queries are confident, several share a class (stuff queries merging into one segment), the
    masks are noisy rectangles that hide each other in part or in full, some masks are empty, and several
    (query, class) pairs share a query.
    """
    g = torch.Generator().manual_seed(seed)
    mask_cls = torch.randn(num_queries, num_classes + 1, generator=g)
    confident = torch.rand(num_queries, generator=g) < 0.8
    best = torch.randint(0, num_classes + 1, (num_queries,), generator=g)
    mask_cls[confident, best[confident]] += 6.0 + 4 * torch.rand(int(confident.sum()), generator=g)
    mask_pred = torch.randn(num_queries, *size, generator=g) - 4.0
    for q in range(3, num_queries):  # queries 0-2 keep empty masks
        y, x = torch.randint(0, size[0] - 4, (1,), generator=g), torch.randint(0, size[1] - 4, (1,), generator=g)
        h, w = torch.randint(4, 16, (2,), generator=g).tolist()
        mask_pred[q, y : y + h, x : x + w] += 8.0 * torch.rand(1, generator=g)
    return mask_cls, mask_pred


@pytest.mark.parametrize("seed", range(6))
def test_batched_panoptic_inference_equals_the_loop(seed):
    mask_cls, mask_pred = _random_predictions(seed)
    kwargs = dict(num_classes=7, thing_classes={0, 2, 3}, object_mask_threshold=0.6, overlap_threshold=0.5)
    loop_seg, loop_info = panoptic_inference(mask_cls, mask_pred, batched=False, **kwargs)
    batched_seg, batched_info = panoptic_inference(mask_cls, mask_pred, batched=True, **kwargs)
    assert batched_info == loop_info
    assert batched_seg.dtype == loop_seg.dtype and torch.equal(batched_seg, loop_seg)
    # The cases exercise what the loop decides: things and stuff segments, and dropped queries.
    kept = (mask_cls.softmax(-1).max(-1).values > kwargs["object_mask_threshold"]).sum()
    assert {info["isthing"] for info in loop_info} == {True, False} and len(loop_info) < kept


@pytest.mark.parametrize("thing_classes", [None, {0, 2, 3}, set()])
@pytest.mark.parametrize("seed", range(3))
def test_batched_instance_inference_equals_the_loop(seed, thing_classes):
    mask_cls, mask_pred = _random_predictions(seed)
    kwargs = dict(num_classes=7, topk=50, thing_classes=thing_classes)
    loop = instance_inference(mask_cls, mask_pred, batched=False, **kwargs)
    batched = instance_inference(mask_cls, mask_pred, batched=True, **kwargs)
    top_classes = instance_inference(mask_cls, mask_pred, num_classes=7, topk=50).pred_classes.tolist()
    assert len(loop) == len(batched) == len([c for c in top_classes if thing_classes is None or c in thing_classes])
    for field in ("pred_classes", "query_indices", "pred_masks"):
        assert torch.equal(batched.get(field), loop.get(field)), field
    assert torch.equal(batched.pred_boxes.tensor, loop.pred_boxes.tensor)
    torch.testing.assert_close(batched.scores, loop.scores, rtol=1e-6, atol=0)


@pytest.mark.parametrize("batched", [False, True])
def test_thing_ids_beyond_the_models_classes_are_ignored(batched):
    # A 7-class model evaluated with the metadata of a larger dataset (e.g. COCO's 80 thing ids): ids >= 7 match no
    # label, as a membership test, and the outputs equal those with the in-range ids only.
    mask_cls, mask_pred = _random_predictions(0)
    wide, narrow = {0, 2, 3, 7, 50, 79}, {0, 2, 3}
    instances = [instance_inference(mask_cls, mask_pred, num_classes=7, topk=50, thing_classes=t, batched=batched)
                 for t in (wide, narrow)]
    assert torch.equal(instances[0].pred_classes, instances[1].pred_classes) and len(instances[0]) > 0
    kwargs = dict(num_classes=7, object_mask_threshold=0.6, overlap_threshold=0.5, batched=batched)
    (seg_wide, info_wide), (seg_narrow, info_narrow) = (
        panoptic_inference(mask_cls, mask_pred, thing_classes=t, **kwargs) for t in (wide, narrow)
    )
    assert info_wide == info_narrow and torch.equal(seg_wide, seg_narrow)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("overlap_threshold, kept", [(0.5, True), (0.51, False)])
def test_query_keeping_exactly_the_overlap_threshold_of_its_mask_stays(batched, overlap_threshold, kept):
    # Query 1 (thing, 10 pixels) loses 5 of them to the more confident query 0: it keeps exactly half of its mask.
    mask_cls = torch.full((2, 4), -10.0)
    mask_cls[0, 1], mask_cls[1, 0] = 20.0, 10.0
    mask_pred = torch.full((2, 6, 6), -10.0)
    mask_pred[0, :3, :] = 10.0
    mask_pred[1, 2:4, :5] = 10.0
    panoptic_seg, segments_info = panoptic_inference(
        mask_cls, mask_pred, num_classes=3, thing_classes={0, 1}, object_mask_threshold=0.8,
        overlap_threshold=overlap_threshold, batched=batched,
    )
    assert [s["category_id"] for s in segments_info] == ([1, 0] if kept else [1])
    assert (panoptic_seg == 2).sum() == (5 if kept else 0)


@pytest.mark.parametrize("batched", [False, True])
def test_pixels_tied_between_queries_go_to_the_first(batched):
    # Queries 1 and 2 have the same class score and the same mask: every pixel of it is a tie, which the original's
    # argmax gives to the first (query 1). Query 0, less confident and overlapping, keeps the pixels it wins alone.
    mask_cls = torch.full((3, 4), -10.0)
    mask_cls[0, 2], mask_cls[1, 0], mask_cls[2, 1] = 5.0, 10.0, 10.0
    mask_pred = torch.full((3, 6, 6), -10.0)
    mask_pred[0, :4, :] = 10.0
    mask_pred[1:, 2:, :] = 10.0
    panoptic_seg, segments_info = panoptic_inference(
        mask_cls, mask_pred, num_classes=3, thing_classes={0, 1, 2}, object_mask_threshold=0.8,
        overlap_threshold=0.3, batched=batched,
    )
    assert [s["category_id"] for s in segments_info] == [2, 0]
    assert torch.equal(panoptic_seg[:2], torch.full((2, 6), 1, dtype=torch.int32))
    assert torch.equal(panoptic_seg[2:], torch.full((4, 6), 2, dtype=torch.int32))

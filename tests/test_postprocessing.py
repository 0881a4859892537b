"""Panoptic and instance post-processing reproduce the original's outputs on crafted inputs with large margins."""
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


@pytest.mark.parametrize("case", ["rich", "empty"])
def test_panoptic_inference_matches_original(cases, case):
    spec, arrays = cases
    panoptic_seg, segments_info = panoptic_inference(
        torch.from_numpy(arrays[f"{case}_mask_cls"]),
        torch.from_numpy(arrays[f"{case}_mask_pred"]),
        num_classes=spec["num_classes"],
        thing_classes=set(spec["thing_contiguous_ids"]),
        object_mask_threshold=spec["object_mask_threshold"],
        overlap_threshold=spec["overlap_threshold"],
    )
    assert segments_info == spec["cases"][case]["segments_info"]
    np.testing.assert_array_equal(panoptic_seg.numpy(), arrays[f"{case}_panoptic_seg"])


@pytest.mark.parametrize("case", ["rich", "empty"])
def test_instance_inference_matches_original(cases, case):
    spec, arrays = cases
    instances = instance_inference(
        torch.from_numpy(arrays[f"{case}_mask_cls"]),
        torch.from_numpy(arrays[f"{case}_mask_pred"]),
        num_classes=spec["num_classes"],
        topk=spec["test_topk_per_image"],
        thing_classes=set(spec["thing_contiguous_ids"]),
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


def test_stuff_queries_of_one_class_share_one_segment():
    # Two confident queries of stuff class 5 on the left and right halves, one thing query (class 0) in the middle.
    mask_cls = torch.full((3, 7), -10.0)
    mask_cls[0, 5] = mask_cls[1, 5] = mask_cls[2, 0] = 10.0
    mask_pred = torch.full((3, 8, 8), -10.0)
    mask_pred[0, :, :4] = 10.0
    mask_pred[1, :, 4:] = 10.0
    mask_pred[2, 3:5, 3:5] = 20.0
    panoptic_seg, segments_info = panoptic_inference(
        mask_cls, mask_pred, num_classes=6, thing_classes={0}, object_mask_threshold=0.8, overlap_threshold=0.5
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

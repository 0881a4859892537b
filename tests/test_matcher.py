"""HungarianMatcher: optimal assignments (against brute force), point-sampled costs, determinism, fp32 costs."""
import itertools

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import mask2former.modeling.matcher as matcher_module
from mask2former.modeling.matcher import HungarianMatcher, pairwise_dice, pairwise_sigmoid_ce


def _random_case(generator, num_queries, num_targets, num_classes=5, size=(12, 16), mask_size=(48, 64)):
    outputs = {
        "pred_logits": torch.randn(1, num_queries, num_classes + 1, generator=generator) * 2,
        "pred_masks": torch.randn(1, num_queries, *size, generator=generator) * 3,
    }
    target = {
        "labels": torch.randint(0, num_classes, (num_targets,), generator=generator),
        "masks": torch.rand(num_targets, *mask_size, generator=generator) > 0.5,
    }
    return outputs, [target]


@pytest.fixture
def spy(monkeypatch):
    """Records the coordinates the matcher samples at (list of tensors), and still samples."""
    real_point_sample = matcher_module.point_sample
    coords = []

    def recording_point_sample(input, point_coords, **kwargs):
        coords.append(point_coords.clone())
        return real_point_sample(input, point_coords, **kwargs)

    monkeypatch.setattr(matcher_module, "point_sample", recording_point_sample)
    return coords


def _direct_costs(outputs, target, coords, weights):
    """The cost matrix computed pair by pair, straight from the definition."""
    logits, masks = outputs["pred_logits"][0], outputs["pred_masks"][0]
    grid = (2 * coords[:1] - 1)[:, :, None]  # (1, P, 1, 2)
    pred = F.grid_sample(masks[None], grid, align_corners=False)[0, :, :, 0]  # (Q, P)
    tgt = F.grid_sample(target["masks"].float()[None], grid, align_corners=False)[0, :, :, 0]  # (n, P)
    probs = logits.softmax(-1)
    cost = torch.zeros(len(pred), len(tgt), dtype=torch.float64)
    for q in range(len(pred)):
        for t in range(len(tgt)):
            bce = F.binary_cross_entropy_with_logits(pred[q].double(), tgt[t].double())
            p = pred[q].double().sigmoid()
            dice = 1 - (2 * (p * tgt[t]).sum() + 1) / (p.sum() + tgt[t].sum() + 1)
            cls = -probs[q, target["labels"][t]]
            cost[q, t] = weights[0] * cls + weights[1] * bce + weights[2] * dice
    return cost


def _brute_force_min(cost):
    """Minimum total cost over all one-to-one assignments of min(Q, n) pairs."""
    q, n = cost.shape
    if q >= n:
        return min(sum(cost[p, t] for t, p in enumerate(perm)) for perm in itertools.permutations(range(q), n))
    return min(sum(cost[p, t] for p, t in enumerate(perm)) for perm in itertools.permutations(range(n), q))


@pytest.mark.parametrize("num_queries,num_targets", [(4, 3), (5, 5), (3, 5), (6, 1)])
def test_assignment_is_optimal_against_brute_force(spy, num_queries, num_targets):
    weights = (2.0, 5.0, 5.0)
    matcher = HungarianMatcher(*weights, num_points=64)
    generator = torch.Generator().manual_seed(num_queries * 10 + num_targets)
    for _ in range(5):
        outputs, targets = _random_case(generator, num_queries, num_targets)
        spy.clear()
        [(pred_idx, tgt_idx)] = matcher(outputs, targets)
        assert pred_idx.dtype == tgt_idx.dtype == torch.int64
        assert len(pred_idx) == len(tgt_idx) == min(num_queries, num_targets)
        assert len(set(pred_idx.tolist())) == len(pred_idx) and len(set(tgt_idx.tolist())) == len(tgt_idx)
        # Predictions and targets are sampled at the same points.
        assert len(spy) == 2 and torch.equal(spy[0][0], spy[1][0])
        cost = _direct_costs(outputs, targets[0], spy[0], weights)
        total = cost[pred_idx, tgt_idx].sum().item()
        assert total == pytest.approx(_brute_force_min(cost.numpy()), abs=1e-5)


def test_recovers_a_permutation_of_the_targets():
    """Predictions equal to the targets in shuffled order are matched back to them."""
    generator = torch.Generator().manual_seed(0)
    num_classes, n = 7, 5
    labels = torch.tensor([0, 3, 3, 6, 1])
    boxes = [(0, 0, 20, 20), (20, 0, 40, 20), (0, 20, 40, 40), (30, 30, 40, 40), (5, 5, 12, 30)]
    masks = torch.zeros(n, 40, 40, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    perm = torch.randperm(8, generator=generator)  # query perm[i] predicts target i; 3 queries predict nothing
    logits = torch.full((1, 8, num_classes + 1), -5.0)
    logits[0, :, num_classes] = 5.0
    pred_masks = torch.full((1, 8, 10, 10), -8.0)
    for i in range(n):
        logits[0, perm[i]] = -5.0
        logits[0, perm[i], labels[i]] = 5.0
        pred_masks[0, perm[i]] = torch.where(F.avg_pool2d(masks[i, None].float(), 4)[0] > 0.5, 8.0, -8.0)
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points=200)
    outputs = {"pred_logits": logits, "pred_masks": pred_masks}
    [(pred_idx, tgt_idx)] = matcher(outputs, [{"labels": labels, "masks": masks}])
    assert dict(zip(tgt_idx.tolist(), pred_idx.tolist())) == {i: perm[i].item() for i in range(n)}


def test_batch_and_empty_targets():
    generator = torch.Generator().manual_seed(1)
    (a, [ta]), (b, _) = _random_case(generator, 4, 2), _random_case(generator, 4, 0)
    outputs = {k: torch.cat([a[k], b[k]]) for k in a}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 48, 64, dtype=torch.bool)}
    indices = HungarianMatcher(1, 1, 1, num_points=16)(outputs, [ta, empty])
    assert [len(i) for i, _ in indices] == [2, 0]
    assert indices[1][0].dtype == indices[1][1].dtype == torch.int64


def test_deterministic_under_seed_and_uses_num_points(spy):
    generator = torch.Generator().manual_seed(2)
    outputs, targets = _random_case(generator, 6, 4)
    matcher = HungarianMatcher(1, 1, 1, num_points=37)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        spy.clear()
        runs.append((matcher(outputs, targets), list(spy)))
    (ind_a, coords_a), (ind_b, coords_b) = runs
    assert all(torch.equal(x, y) for x, y in zip(ind_a[0], ind_b[0]))
    assert all(torch.equal(x, y) for x, y in zip(coords_a, coords_b))
    assert coords_a[0].shape == (6, 37, 2) and coords_a[1].shape == (4, 37, 2)
    assert coords_a[0].min() >= 0 and coords_a[0].max() <= 1
    torch.manual_seed(124)
    spy.clear()
    matcher(outputs, targets)
    assert not torch.equal(spy[0], coords_a[0]), "a different seed must draw different points"


def test_costs_are_fp32_under_autocast(monkeypatch):
    real_lsa, seen = matcher_module.linear_sum_assignment, []

    def recording_lsa(cost):
        seen.append(cost.dtype)
        return real_lsa(cost)

    monkeypatch.setattr(matcher_module, "linear_sum_assignment", recording_lsa)
    generator = torch.Generator().manual_seed(3)
    outputs, targets = _random_case(generator, 5, 3)
    matcher = HungarianMatcher(2, 5, 5, num_points=50)
    torch.manual_seed(0)
    expected = matcher(outputs, targets)
    low = {k: v.bfloat16() for k, v in outputs.items()}
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = matcher(low, targets)
    assert seen == [np.float32, np.float32]
    assert torch.equal(expected[0][0], got[0][0]) and torch.equal(expected[0][1], got[0][1])


def test_pairwise_costs_against_loops():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 30, generator=generator, dtype=torch.float64) * 3
    targets = torch.rand(3, 30, generator=generator, dtype=torch.float64)
    ce, dice = pairwise_sigmoid_ce(logits, targets), pairwise_dice(logits, targets)
    for i in range(4):
        for j in range(3):
            assert ce[i, j].item() == pytest.approx(F.binary_cross_entropy_with_logits(logits[i], targets[j]).item())
            p = logits[i].sigmoid()
            expected = 1 - (2 * (p * targets[j]).sum() + 1) / (p.sum() + targets[j].sum() + 1)
            assert dice[i, j].item() == pytest.approx(expected.item())


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="TRAIN_NUM_POINTS"):
        HungarianMatcher(1, 1, 1, num_points=0)
    with pytest.raises(ValueError, match="all costs are 0"):
        HungarianMatcher(0, 0, 0, num_points=10)
    generator = torch.Generator().manual_seed(5)
    outputs, targets = _random_case(generator, 3, 2)
    targets[0]["masks"] = targets[0]["masks"][:1]
    with pytest.raises(ValueError, match="do not match 2 labels"):
        HungarianMatcher(1, 1, 1, num_points=8)(outputs, targets)
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        HungarianMatcher(1, 1, 1, num_points=8)(outputs, targets * 2)

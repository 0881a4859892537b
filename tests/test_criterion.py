"""SetCriterion: each loss against a direct computation, importance sampling, normalisation, aux losses, DDP."""
import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

import mask2former.modeling.criterion as criterion_module
from mask2former.modeling.criterion import SetCriterion
from mask2former.modeling.matcher import HungarianMatcher

NUM_CLASSES = 4


class FixedMatcher(nn.Module):
    """Returns the assignment it was given, so losses can be checked without matching randomness."""

    def __init__(self, indices):
        super().__init__()
        self.indices = [(torch.tensor(p), torch.tensor(t)) for p, t in indices]
        self.calls = 0

    def forward(self, outputs, targets):
        self.calls += 1
        return self.indices


def _criterion(matcher, losses=("labels", "masks"), num_points=50, oversample_ratio=3.0, importance=0.75):
    return SetCriterion(
        NUM_CLASSES,
        matcher=matcher,
        weight_dict={"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
        eos_coef=0.1,
        losses=list(losses),
        num_points=num_points,
        oversample_ratio=oversample_ratio,
        importance_sample_ratio=importance,
    )


def _batch(seed=0, num_queries=5, counts=(2, 3), mask_hw=(16, 20), image_hw=(64, 80)):
    generator = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(len(counts), num_queries, NUM_CLASSES + 1, generator=generator),
        "pred_masks": torch.randn(len(counts), num_queries, *mask_hw, generator=generator) * 2,
    }
    targets = [
        {
            "labels": torch.randint(0, NUM_CLASSES, (n,), generator=generator),
            "masks": torch.rand(n, *image_hw, generator=generator) > 0.6,
        }
        for n in counts
    ]
    return outputs, targets


INDICES = [([3, 0], [1, 0]), ([1, 4, 2], [2, 0, 1])]


@pytest.fixture
def coords_spy(monkeypatch):
    """Records the points chosen for the mask losses."""
    real = criterion_module.get_uncertain_point_coords_with_randomness
    chosen = []

    def recording(*args, **kwargs):
        chosen.append(real(*args, **kwargs))
        return chosen[-1]

    monkeypatch.setattr(criterion_module, "get_uncertain_point_coords_with_randomness", recording)
    return chosen


def test_classification_loss_is_weighted_cross_entropy():
    outputs, targets = _batch()
    losses = _criterion(FixedMatcher(INDICES), losses=["labels"])(outputs, targets)
    assert set(losses) == {"loss_ce"}
    # Direct computation: every query's target class, weight 0.1 for "no object".
    numerator = denominator = 0.0
    for b, (queries, tgts) in enumerate(INDICES):
        matched = dict(zip(queries, tgts))
        for q in range(5):
            cls = targets[b]["labels"][matched[q]].item() if q in matched else NUM_CLASSES
            weight = 0.1 if cls == NUM_CLASSES else 1.0
            numerator += weight * -torch.log_softmax(outputs["pred_logits"][b, q].double(), -1)[cls].item()
            denominator += weight
    assert losses["loss_ce"].item() == pytest.approx(numerator / denominator, rel=1e-6)


def test_mask_losses_against_direct_computation(coords_spy):
    outputs, targets = _batch(seed=1)
    outputs["pred_masks"].requires_grad_(True)
    losses = _criterion(FixedMatcher(INDICES), losses=["masks"], num_points=40)(outputs, targets)
    assert set(losses) == {"loss_mask", "loss_dice"}
    [coords] = coords_spy
    assert coords.shape == (5, 40, 2)
    bce_sum = dice_sum = 0.0
    k = 0
    for b, (queries, tgts) in enumerate(INDICES):
        for q, t in zip(queries, tgts):
            grid = (2 * coords[k] - 1)[None, :, None].double()  # (1, P, 1, 2)
            logit = F.grid_sample(outputs["pred_masks"][b, q][None, None].double(), grid, align_corners=False).flatten()
            label = F.grid_sample(targets[b]["masks"][t][None, None].double(), grid, align_corners=False).flatten()
            bce_sum += F.binary_cross_entropy_with_logits(logit, label).item()
            p = logit.sigmoid()
            dice_sum += (1 - (2 * (p * label).sum() + 1) / (p.sum() + label.sum() + 1)).item()
            k += 1
    assert losses["loss_mask"].item() == pytest.approx(bce_sum / 5, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice_sum / 5, rel=1e-5)
    # Only matched queries' masks receive gradient.
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    grad_norms = outputs["pred_masks"].grad.flatten(2).norm(dim=2)
    matched = torch.zeros(2, 5, dtype=torch.bool)
    for b, (queries, _) in enumerate(INDICES):
        matched[b, queries] = True
    assert (grad_norms[matched] > 0).all() and (grad_norms[~matched] == 0).all()


def test_importance_sampling_picks_uncertain_points(coords_spy):
    """Logits 40 * (x - 0.5): uncertainty -|logit| is highest on the vertical line x = 0.5."""
    xs = torch.linspace(0, 1, 32)
    ramp = (40 * (xs - 0.5)).expand(32, 32)
    outputs = {"pred_logits": torch.zeros(1, 2, NUM_CLASSES + 1), "pred_masks": ramp.expand(1, 2, 32, 32).clone()}
    targets = [{"labels": torch.tensor([1]), "masks": torch.ones(1, 32, 32)}]
    torch.manual_seed(0)
    _criterion(FixedMatcher([([0], [0])]), num_points=300, importance=1.0)(outputs, targets)
    _criterion(FixedMatcher([([0], [0])]), num_points=300, importance=0.0)(outputs, targets)
    uncertain, uniform = (c[0, :, 0] for c in coords_spy)  # x coordinates
    # With 3x oversampling, the 300 most uncertain of 900 uniform points lie within ~1/6 of the line (a few near
    # the top/bottom border too, where bilinear sampling mixes in zero padding); uniform ones spread evenly.
    assert (uncertain - 0.5).abs().quantile(0.95) < 0.18
    assert (uniform - 0.5).abs().median() > 0.2


def test_num_masks_normalisation_and_minimum_of_one():
    outputs, targets = _batch(seed=2, counts=(2, 3))
    criterion = _criterion(FixedMatcher(INDICES), losses=["masks"])
    torch.manual_seed(0)
    per_five = criterion(outputs, targets)
    # The same matched pairs, but two more (unmatched) targets: the sums are divided by 7 instead of 5.
    extra = [dict(t) for t in targets]
    extra[0] = {
        "labels": torch.cat([targets[0]["labels"], torch.tensor([0, 1])]),
        "masks": torch.cat([targets[0]["masks"], targets[0]["masks"]]),
    }
    torch.manual_seed(0)
    per_seven = criterion(outputs, extra)
    for k in ("loss_mask", "loss_dice"):
        assert per_seven[k].item() == pytest.approx(per_five[k].item() * 5 / 7, rel=1e-6)
    assert SetCriterion.num_masks([{"labels": torch.zeros(0)}], "cpu") == 1.0


def test_no_targets_gives_zero_mask_losses_with_gradient():
    outputs, _ = _batch(seed=3)
    for v in outputs.values():
        v.requires_grad_(True)
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 64, 80)}] * 2
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points=20)
    losses = _criterion(matcher)(outputs, empty)
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    expected_ce = F.cross_entropy(outputs["pred_logits"].flatten(0, 1), torch.full((10,), NUM_CLASSES))
    assert losses["loss_ce"].item() == pytest.approx(expected_ce.item(), rel=1e-6)
    sum(losses.values()).backward()
    assert outputs["pred_masks"].grad is not None and outputs["pred_masks"].grad.abs().sum() == 0


def test_aux_outputs_have_suffixed_losses_and_their_own_matching():
    outputs, targets = _batch(seed=4)
    aux = [_batch(seed=5 + i)[0] for i in range(2)]
    outputs["aux_outputs"] = aux
    matcher = FixedMatcher(INDICES)
    losses = _criterion(matcher)(outputs, targets)
    assert matcher.calls == 3
    assert set(losses) == {f"{k}{s}" for k in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0", "_1")}
    for i, layer in enumerate(aux):
        alone = _criterion(FixedMatcher(INDICES), losses=["labels"])(layer, targets)["loss_ce"]
        assert losses[f"loss_ce_{i}"].item() == pytest.approx(alone.item(), rel=1e-6)
    assert all(math.isfinite(v.item()) for v in losses.values())


def test_empty_weight_buffer_and_weight_dict():
    criterion = _criterion(FixedMatcher(INDICES))
    state = criterion.state_dict()
    assert torch.equal(state["empty_weight"], torch.tensor([1.0, 1.0, 1.0, 1.0, 0.1]))
    assert criterion.weight_dict == {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown losses \\['boxes'\\]"):
        _criterion(FixedMatcher(INDICES), losses=["labels", "boxes"])
    with pytest.raises(ValueError, match="OVERSAMPLE_RATIO"):
        _criterion(FixedMatcher(INDICES), oversample_ratio=0.5)
    with pytest.raises(ValueError, match="IMPORTANCE_SAMPLE_RATIO"):
        _criterion(FixedMatcher(INDICES), importance=1.5)
    with pytest.raises(ValueError, match="TRAIN_NUM_POINTS"):
        _criterion(FixedMatcher(INDICES), num_points=0)


CASES = [((2, 4), 3.0), ((0, 1), 1.0)]  # per-worker target counts, expected num_masks (averaged, at least 1)


def _num_masks_worker(rank, world_size, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        values = [SetCriterion.num_masks([{"labels": torch.zeros(counts[rank])}], "cpu") for counts, _ in CASES]
        with open(f"{result_file}.{rank}", "w") as f:
            json.dump(values, f)
    finally:
        dist.destroy_process_group()


def test_num_masks_is_averaged_over_workers(tmp_path):
    result = tmp_path / "num_masks"
    mp.spawn(_num_masks_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2)
    expected = [value for _, value in CASES]
    assert [json.loads(open(f"{result}.{r}").read()) for r in range(2)] == [expected, expected]

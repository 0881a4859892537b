"""
The deformable attention module of the pixel decoder: its sampling locations are the reference points plus the
offsets divided by each level's size, computed as the original computes them (float32 under bfloat16 autocast),
whether the reference points come per level or repeated over heads and points.
"""
import pytest
import torch

from mask2former.modeling.pixel_decoder import msdeformattn
from mask2former.modeling.pixel_decoder.msdeformattn import MSDeformAttn
from mask2former.ops.ms_deform_attn import level_starts

# Level sizes that are not powers of two, so that dividing by them rounds.
SHAPES = [(6, 9), (3, 5), (2, 3)]


@pytest.fixture
def attention():
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=32, n_levels=len(SHAPES), n_heads=4, n_points=2)
    with torch.no_grad():
        module.sampling_offsets.weight.normal_(0, 0.5)
        module.attention_weights.weight.normal_(0, 0.5)
    n, lq = 2, sum(h * w for h, w in SHAPES)
    spatial_shapes = torch.tensor(SHAPES)
    query, memory = torch.randn(n, lq, 32), torch.randn(n, lq, 32)
    reference_points = torch.rand(n, lq, len(SHAPES), 2)
    return module, (query, reference_points, memory, spatial_shapes, level_starts(spatial_shapes))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampling_locations_are_computed_as_the_original(attention, dtype, monkeypatch):
    module, inputs = attention
    query, reference_points, _, spatial_shapes, _ = inputs
    seen = []
    original_op = msdeformattn.ms_deform_attn
    monkeypatch.setattr(msdeformattn, "ms_deform_attn", lambda *args: seen.append(args[3]) or original_op(*args))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        module(*inputs)
        offsets = module.sampling_offsets(query)
    assert offsets.dtype == dtype
    n, lq = query.shape[:2]
    offsets = offsets.view(n, lq, module.n_heads, module.n_levels, module.n_points, 2)
    normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
    expected = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
    # In float32 even where the offsets are bfloat16: rounded to bfloat16, locations near 1 would move by up to 1/512
    # of the level's size.
    assert seen[0].dtype == torch.float32
    assert torch.equal(seen[0], expected)


@pytest.mark.parametrize("autocast", [False, True])
def test_repeated_reference_points_give_the_same_output(attention, autocast):
    module, (query, reference_points, *rest) = attention
    repeated = module.repeat_reference_points(reference_points)
    assert repeated.shape == (*query.shape[:2], module.n_heads, module.n_levels, module.n_points, 2)
    assert repeated.is_contiguous()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        per_level = module(query, reference_points, *rest)
        shared = module(query, repeated, *rest)
    assert torch.equal(per_level, shared)

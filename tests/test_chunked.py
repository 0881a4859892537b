"""CPU inference by chunks of rows computes exactly what one call computes, and only where it should."""
import pytest
import torch
from torch import nn

from mask2former.modeling.backbone.swin import WindowAttention, shifted_window_mask
from mask2former.modeling.layers.chunked import CHUNK_TOKENS, apply_by_token_chunks, inference_chunks


def test_chunks_only_in_cpu_inference_of_many_rows():
    cpu = torch.device("cpu")
    with torch.no_grad():
        chunks = inference_chunks(2500, cpu, 1000)
        assert chunks == [(0, 1000), (1000, 2000), (2000, 2500)]
        assert inference_chunks(1000, cpu, 1000) is None
        assert inference_chunks(2500, torch.device("meta"), 1000) is None
    assert inference_chunks(2500, cpu, 1000) is None  # autograd is recording


def test_token_chunks_give_the_same_output():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(24, 96), nn.GELU(), nn.Linear(96, 40))
    x = torch.randn(2, CHUNK_TOKENS + 300, 24)
    calls = []
    with torch.no_grad():
        expected = mlp(x)
        actual = apply_by_token_chunks(lambda t: calls.append(t.shape) or mlp(t), x)
    assert len(calls) == 3 and all(shape[-1] == 24 for shape in calls)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shift", [0, 3])
def test_window_attention_by_chunks_matches_one_call(shift):
    torch.manual_seed(0)
    attn = WindowAttention(32, 7, 4, True, None, 0.0, 0.0).eval()
    mask = shifted_window_mask(70, 56, 7, shift) if shift else None
    x = torch.randn(2 * 80, 49, 32)  # two images of 10 x 8 windows
    with torch.no_grad():
        chunked = attn(x, mask)
    # With autograd recording, the same module computes all windows in one call.
    whole = attn(x, mask).detach()
    assert inference_chunks(x.shape[0], x.device, CHUNK_TOKENS // 49) is None
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)

"""
The transformer decoder's attention computes what the original's ``nn.MultiheadAttention`` layers compute, with
their parameters, its mask convention (True = blocked) and its gradients, from one mask per image.
"""
import pytest
import torch
from torch import nn

from mask2former.modeling.transformer_decoder.mask2former_transformer_decoder import (
    CrossAttentionLayer,
    SelfAttentionLayer,
    _attention,
)

EMBED, HEADS, QUERIES, PIXELS, BATCH = 32, 4, 6, 40, 2


def blocked_mask(generator):
    """(N, 1, L, S) with about half the pixels blocked for each query but the first, which may attend everywhere."""
    blocked = torch.rand(BATCH, 1, QUERIES, PIXELS, generator=generator) < 0.5
    blocked[:, :, 0] = False
    return blocked


@pytest.mark.parametrize("masked", [True, False])
def test_attention_matches_multihead_attention_and_its_gradients(masked):
    generator = torch.Generator().manual_seed(0)
    attn = nn.MultiheadAttention(EMBED, HEADS)
    nn.init.uniform_(attn.in_proj_bias, -0.5, 0.5)  # zero by default, which would hide a misplaced bias
    query = torch.randn(QUERIES, BATCH, EMBED, generator=generator, requires_grad=True)
    memory = torch.randn(PIXELS, BATCH, EMBED, generator=generator, requires_grad=True)
    blocked = blocked_mask(generator) if masked else None

    ours = _attention(attn, query, memory + 1, memory, blocked)
    per_head = None if blocked is None else blocked.expand(-1, HEADS, -1, -1).flatten(0, 1)
    # need_weights=True: the explicit softmax(QK^T)V path, as the original calls it (without it torch also goes
    # through scaled_dot_product_attention).
    expected = attn(query, memory + 1, memory, attn_mask=per_head)[0]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)

    grad = torch.randn(expected.shape, generator=generator)
    ours_grads = torch.autograd.grad(ours, [query, memory, attn.in_proj_weight], grad)
    expected_grads = torch.autograd.grad(expected, [query, memory, attn.in_proj_weight], grad)
    for a, b in zip(ours_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_pixels_blocked_for_every_query_do_not_change_the_result():
    generator = torch.Generator().manual_seed(1)
    layer = CrossAttentionLayer(EMBED, HEADS).eval()
    tgt = torch.randn(QUERIES, BATCH, EMBED, generator=generator)
    memory = torch.randn(PIXELS, BATCH, EMBED, generator=generator)
    blocked = blocked_mask(generator)
    blocked[..., : PIXELS // 2] = True  # the first half of the pixels, for every query
    changed = memory.clone()
    changed[: PIXELS // 2] = torch.randn(PIXELS // 2, BATCH, EMBED, generator=generator)
    with torch.no_grad():
        before = layer(tgt, memory, memory_mask=blocked)
        after = layer(tgt, changed, memory_mask=blocked)
        unmasked = (layer(tgt, memory), layer(tgt, changed))
    torch.testing.assert_close(after, before)
    assert not torch.allclose(*unmasked)


def test_self_attention_layer_matches_multihead_attention():
    generator = torch.Generator().manual_seed(2)
    layer = SelfAttentionLayer(EMBED, HEADS, normalize_before=True).eval()
    tgt = torch.randn(QUERIES, BATCH, EMBED, generator=generator)
    pos = torch.randn(QUERIES, BATCH, EMBED, generator=generator)
    with torch.no_grad():
        ours = layer(tgt, query_pos=pos)
        x = layer.norm(tgt)
        expected = tgt + layer.self_attn(x + pos, x + pos, x)[0]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)

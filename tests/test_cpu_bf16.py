"""
The CPU bfloat16 path (MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE bfloat16): taken only where the CPU multiplies bf16
matrices natively, else float32 with one log line; the transformer decoder stays float32 in CPU inference, and
copies none of its operands where it runs in bfloat16.
"""
import logging

import pytest
import torch

from mask2former.modeling import cpu_features
from mask2former.modeling.meta_arch import maskformer_model
from conftest import ROOT, load_script
from test_reference_tiny import build_reference_model, read_input


@pytest.mark.parametrize(
    "flags, native",
    [
        ({"fpu", "avx2", "fma", "avx512f", "avx512bw"}, False),  # AVX-512 without BF16 (Skylake-X, Zen 3)
        ({"avx2", "avx512f", "avx512_bf16"}, True),  # Cooper Lake, Zen 4
        ({"avx512f", "amx_tile", "amx_bf16", "amx_int8"}, True),  # Sapphire Rapids
        ({"fp", "asimd", "bf16", "sve"}, True),  # Arm Neoverse V1
        (set(), False),  # flags unreadable: float32 is never slower
    ],
)
def test_native_bf16_decision(flags, native):
    assert cpu_features.native_bf16_matmul(flags) is native


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    model = build_reference_model("tiny_r50")
    model.autocast_dtype = torch.bfloat16
    return model


def record_dtypes(model):
    dtypes = {}
    model.backbone.register_forward_hook(lambda m, i, o: dtypes.__setitem__("backbone", o["res5"].dtype))
    layer = model.sem_seg_head.predictor.transformer_cross_attention_layers[0].multihead_attn.out_proj
    layer.register_forward_hook(lambda m, i, o: dtypes.__setitem__("decoder", o.dtype))
    return dtypes


def test_without_native_bf16_runs_float32_and_says_so_once(model, monkeypatch, caplog):
    monkeypatch.setattr(maskformer_model, "native_bf16_matmul", lambda: False)
    maskformer_model._log_bf16_fallback.cache_clear()
    dtypes = record_dtypes(model)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        fast = model([read_input("B")])[0]
        model([read_input("B")])
    lines = [r.getMessage() for r in caplog.records if "bfloat16" in r.getMessage()]
    assert len(lines) == 1 and "running in float32" in lines[0]
    assert dtypes["backbone"] == torch.float32
    model.autocast_dtype = None
    try:
        with torch.no_grad():
            reference = model([read_input("B")])[0]
    finally:
        model.autocast_dtype = torch.bfloat16
    assert torch.equal(fast["sem_seg"], reference["sem_seg"])


def test_with_native_bf16_the_decoder_stays_float32(model, monkeypatch):
    monkeypatch.setattr(maskformer_model, "native_bf16_matmul", lambda: True)
    dtypes = record_dtypes(model)
    with torch.no_grad():
        model([read_input("B")])
    assert dtypes == {"backbone": torch.bfloat16, "decoder": torch.float32}


def test_bf16_decoder_copies_no_operands_in_its_matmuls():
    # Where the decoder runs in bfloat16 (here: training under CPU autocast), sequence views with strided channels
    # made each projection a batched matmul over a copy of the weight per pixel (docs/benchmarks.md).
    tool = load_script(ROOT / "tools" / "benchmark_export.py")
    model = build_reference_model("tiny_r50").train()
    inside_bmm, _ = tool.decoder_bmm_copies(model, torch.randn(1, 3, 128, 192))
    assert inside_bmm == 0

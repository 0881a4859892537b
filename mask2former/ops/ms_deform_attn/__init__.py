"""
Multi-scale deformable attention (Deformable DETR), the sampling step of ``MSDeformAttn``.

``ms_deform_attn`` is the one entry point: it runs the compiled CPU or CUDA kernels for the tensors' device and
falls back, with one warning, to ``ms_deform_attn_reference`` (pure PyTorch, ``grid_sample``) when no kernels can
be built. The kernels check themselves against the reference the first time they run on each device and dtype
(``self_check``). Importing this package never compiles anything and never fails because of the kernels.

The CPU kernels are compiled for several x86-64 instruction sets (baseline, AVX2, AVX-512) and the widest that the
CPU supports runs; ``MASK2FORMER_CPU_ISA`` or :func:`cpu_isa` picks another (``_C.cpu_isas()`` lists them).
"""
import contextlib
import os

import torch

from . import self_check
from .function import MSDeformAttnFunction
from .kernels import kernels_for
from .reference import level_shapes, level_starts, ms_deform_attn_reference

__all__ = [
    "MSDeformAttnFunction",
    "cpu_isa",
    "kernels_for",
    "level_shapes",
    "level_starts",
    "ms_deform_attn",
    "ms_deform_attn_reference",
    "reference_only",
    "self_check",
]

_reference_only = False


@contextlib.contextmanager
def reference_only():
    """
    Within the block, ``ms_deform_attn`` runs the pure-PyTorch reference even where kernels exist: the path the
    original implementation takes on CPU, for side-by-side benchmarks and comparisons.
    """
    global _reference_only
    previous, _reference_only = _reference_only, True
    try:
        yield
    finally:
        _reference_only = previous


@contextlib.contextmanager
def cpu_isa(name):
    """
    Within the block, the CPU kernels compiled for instruction set ``name`` ("avx512", "avx2" or "baseline") run, as
    with ``MASK2FORMER_CPU_ISA=name``; the kernels raise if the CPU or the build lacks it.
    """
    previous = os.environ.get("MASK2FORMER_CPU_ISA")
    os.environ["MASK2FORMER_CPU_ISA"] = name
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MASK2FORMER_CPU_ISA"]
        else:
            os.environ["MASK2FORMER_CPU_ISA"] = previous


def _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    if value.dim() != 4:
        raise ValueError(f"value must be (N, S, M, D), got shape {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f"sampling_locations must be (N, Lq, M, L, P, 2), got shape {tuple(sampling_locations.shape)}")
    n, s, m, _ = value.shape
    _, _, _, levels, _, _ = sampling_locations.shape
    if sampling_locations.shape[0] != n or sampling_locations.shape[2] != m:
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} must have N={n} and M={m} like value "
            f"{tuple(value.shape)}"
        )
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights must be (N, Lq, M, L, P) = {tuple(sampling_locations.shape[:-1])}, "
            f"got {tuple(attention_weights.shape)}"
        )
    if tuple(spatial_shapes.shape) != (levels, 2) or tuple(level_start_index.shape) != (levels,):
        raise ValueError(
            f"spatial_shapes must be ({levels}, 2) and level_start_index ({levels},) for L={levels} levels, got "
            f"{tuple(spatial_shapes.shape)} and {tuple(level_start_index.shape)}"
        )
    floating = {"value": value, "sampling_locations": sampling_locations, "attention_weights": attention_weights}
    for name, t in floating.items():
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != value.device:
            raise ValueError(f"{name} is on {t.device} but value is on {value.device}: move them to one device")
    if spatial_shapes.is_floating_point() or level_start_index.is_floating_point():
        raise TypeError("spatial_shapes and level_start_index must be integer tensors (int64)")
    # Level offsets are checked where that costs no device synchronization; on a GPU they are trusted.
    if spatial_shapes.device.type == "cpu" and level_start_index.device.type == "cpu":
        sizes = spatial_shapes.long().prod(1)
        if int(sizes.sum()) != s:
            raise ValueError(
                f"value has S={s} pixels but spatial_shapes {spatial_shapes.tolist()} add up to {int(sizes.sum())}"
            )
        starts = level_starts(spatial_shapes.long())
        if not torch.equal(level_start_index.long(), starts):
            raise ValueError(
                f"level_start_index {level_start_index.tolist()} does not match spatial_shapes: "
                f"expected {starts.tolist()}"
            )


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """
    Multi-scale deformable attention sampling.

    Args:
        value: (N, S, M, D) values of all levels, flattened and concatenated; S = sum of H_l * W_l.
        spatial_shapes: (L, 2) int64, (H_l, W_l) of each level.
        level_start_index: (L,) int64, offset of each level in S.
        sampling_locations: (N, Lq, M, L, P, 2) normalized (x, y); outside [0, 1] reads zeros.
        attention_weights: (N, Lq, M, L, P) weights of the L * P samples of each head.

    Returns:
        (N, Lq, M * D) in the dtype of ``value``. Under ``torch.autocast`` an fp32 value is cast to the autocast
        dtype, like the inputs of a matmul (the kernels still sum in fp32).
    """
    if not torch.jit.is_tracing():
        _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    device_type = value.device.type
    autocast = torch.is_autocast_enabled(device_type) and value.dtype == torch.float32
    dtype = torch.get_autocast_dtype(device_type) if autocast else value.dtype
    # Tracing (export) records the reference: plain operators that ONNX Runtime and TorchScript run as they are.
    if _reference_only or torch.jit.is_tracing():
        kernels = None
    else:
        kernels = self_check.checked(kernels_for(device_type), value.device, dtype)
    if kernels is None:
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return MSDeformAttnFunction.apply(
        kernels, value.to(dtype), spatial_shapes, level_start_index, sampling_locations, attention_weights
    )

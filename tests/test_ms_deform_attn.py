"""
The multi-scale deformable attention kernels against the pure-PyTorch reference (grid_sample): forward and the
gradients of value, sampling locations and attention weights, on odd level sizes with locations outside [0, 1];
gradcheck in double; reduced precision and autocast; dispatch, fallback and build checks.
Every numeric test runs on the CPU kernel and, on a machine with a GPU, on the CUDA kernels.
"""
import importlib
import os
import platform
import re
import subprocess
from pathlib import Path

import pytest
import torch

from mask2former.ops.ms_deform_attn import (
    MSDeformAttnFunction,
    build,
    cpu_isa,
    kernels,
    kernels_for,
    level_starts,
    ms_deform_attn,
    ms_deform_attn_reference,
    reference_only,
)

LEVELS = [(7, 9), (4, 5), (2, 3)]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


def away_from_cell_edges(locations, shapes):
    """
    Moves each location at least 0.05 pixel away from the lines between pixel centres, where bilinear sampling has
    a kink: there, finite differences and float32 rounding would pick different one-sided derivatives.
    """
    size = shapes.flip(-1).to(locations.dtype).view(1, 1, 1, -1, 1, 2)  # (W, H) per level
    pixel = locations * size - 0.5
    cell = pixel.floor()
    return (cell + (pixel - cell).clamp(0.05, 0.95) + 0.5) / size


def make_inputs(batch, queries=6, heads=2, channels=5, points=3, seed=0):
    """float64 inputs on the CPU: value, spatial_shapes, level_start_index, locations in [-0.2, 1.2], weights."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(LEVELS)
    sizes = shapes.prod(1)
    starts = level_starts(shapes)
    value = torch.randn(batch, int(sizes.sum()), heads, channels, generator=g, dtype=torch.float64)
    locations = torch.rand(batch, queries, heads, len(LEVELS), points, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(LEVELS), points, generator=g, dtype=torch.float64)
    return value, shapes, starts, away_from_cell_edges(locations, shapes), weights


def compiled(device):
    """The compiled op for ``device``, as an autograd-aware callable; fails if the kernels are missing."""
    module = kernels_for(device)
    assert module is not None, f"no compiled kernels for {device}: run `bash tools/setup_env.sh` (pip install -e .)"
    return lambda *args: MSDeformAttnFunction.apply(module, *args)


def outputs_and_grads(fn, value, shapes, starts, locations, weights, grad_output):
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
    grads = torch.autograd.grad(out, leaves, grad_output.to(out))
    return [out, *grads]


def assert_close_to_reference(fn, device, inputs, dtype, loc_dtype=None, rtol=1e-10, atol=1e-10, grad_tols=None):
    """
    Runs ``fn`` on the inputs cast to ``dtype`` (locations/weights to ``loc_dtype``, default ``dtype``) and the
    reference in float64 on exactly the same (rounded) numbers; compares output and the three gradients.
    """
    value, shapes, starts, locations, weights = inputs
    loc_dtype = loc_dtype or dtype
    value, locations, weights = value.to(dtype), locations.to(loc_dtype), weights.to(loc_dtype)
    grad_output = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3], dtype=torch.float64)
    grad_output = grad_output.to(dtype)
    got = outputs_and_grads(
        fn, *(t.to(device) for t in (value, shapes, starts, locations, weights)), grad_output.to(device)
    )
    as_double = (value.double(), shapes, starts, locations.double(), weights.double(), grad_output.double())
    expected = outputs_and_grads(ms_deform_attn_reference, *as_double)
    names = ["output", "grad value", "grad sampling_locations", "grad attention_weights"]
    tols = grad_tols or [(rtol, atol)] * 4
    for name, a, b, (r, t) in zip(names, got, expected, tols):
        assert a.dtype == (loc_dtype if "sampling" in name or "attention" in name else dtype), name
        torch.testing.assert_close(a.cpu().double(), b, rtol=r, atol=t, msg=lambda m: f"{name}: {m}")


# (rtol, atol) of the output and the gradients of value, sampling locations and attention weights.
FLOAT32_TOLERANCES = [(1e-5, 1e-5), (1e-5, 1e-5), (1e-4, 1e-4), (1e-5, 1e-5)]


def reduced_precision_tolerances(dtype):
    """
    Values, outputs and value gradients are rounded to the 8/11-bit mantissa; location and weight gradients are
    float32 sums over the rounded values, so they stay accurate to float32 precision.
    """
    eps = torch.finfo(dtype).eps
    return [(2 * eps, 2 * eps), (2 * eps, 2 * eps), (1e-4, 1e-4), (1e-5, 1e-5)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels", [5, 32])
def test_kernel_matches_reference_float64(device, batch, channels):
    assert_close_to_reference(compiled(device), device, make_inputs(batch, channels=channels), torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels", [5, 32])
def test_kernel_matches_reference_float32(device, batch, channels):
    assert_close_to_reference(
        compiled(device), device, make_inputs(batch, channels=channels, seed=1), torch.float32,
        grad_tols=FLOAT32_TOLERANCES,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_reduced_precision_accumulates_in_float32(device, dtype):
    assert_close_to_reference(
        compiled(device), device, make_inputs(3, channels=32, seed=2), dtype, loc_dtype=torch.float32,
        grad_tols=reduced_precision_tolerances(dtype),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    value, shapes, starts, locations, weights = (
        t.to(device) for t in make_inputs(2, queries=3, heads=2, channels=3, points=2, seed=3)
    )
    fn = compiled(device)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(
        lambda v, loc, w: fn(v, shapes, starts, loc, w), leaves, eps=1e-6, atol=1e-7, rtol=1e-5
    )


@pytest.mark.parametrize("device", DEVICES)
def test_locations_far_outside_read_zeros(device):
    value, shapes, starts, locations, weights = (t.to(device) for t in make_inputs(2, seed=4))
    locations[:, :2] = 1e9
    locations[:, 2:4] = -1e9
    got = outputs_and_grads(compiled(device), value, shapes, starts, locations, weights, torch.ones(2, 6, 10))
    assert got[0][:, :4].abs().max() == 0
    assert got[2][:, :4].abs().max() == 0 and got[3][:, :4].abs().max() == 0
    expected = outputs_and_grads(
        ms_deform_attn_reference, value, shapes, starts, locations, weights, torch.ones(2, 6, 10)
    )
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    value, shapes, starts, locations, weights = (t.to(device) for t in make_inputs(3, seed=5))
    # Same numbers, other memory layouts: a transposed copy of value, an every-other slice of the locations.
    value_t = value.transpose(2, 3).contiguous().transpose(2, 3)
    spread = torch.zeros(*locations.shape[:-1], 4, dtype=locations.dtype, device=device)
    spread[..., ::2] = locations
    locations_s = spread[..., ::2]
    weights_t = weights.transpose(0, 1).contiguous().transpose(0, 1)
    assert not (value_t.is_contiguous() or locations_s.is_contiguous() or weights_t.is_contiguous())
    grad = torch.randn(3, 6, 10, dtype=torch.float64, device=device)
    got = outputs_and_grads(compiled(device), value_t, shapes, starts, locations_s, weights_t, grad)
    expected = outputs_and_grads(compiled(device), value, shapes, starts, locations, weights, grad)
    for a, b in zip(got, expected):  # value gradients are summed by atomics on a GPU, in any order
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_queries(device):
    value, shapes, starts, locations, weights = (t.to(device) for t in make_inputs(2, queries=0))
    got = outputs_and_grads(compiled(device), value, shapes, starts, locations, weights, torch.zeros(2, 0, 10))
    assert got[0].shape == (2, 0, 10)
    assert got[1].abs().max() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_runs_values_in_low_precision_and_returns_input_dtype_grads(device):
    value, shapes, starts, locations, weights = make_inputs(2, channels=32, seed=6)
    value, locations, weights = (t.float().to(device) for t in (value, locations, weights))
    shapes, starts = shapes.to(device), starts.to(device)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    with torch.autocast(device, dtype=torch.bfloat16):
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
    assert out.dtype == torch.bfloat16  # the value was not upcast for the whole op
    grads = torch.autograd.grad(out.float().sum(), leaves)
    assert [g.dtype for g in grads] == [torch.float32] * 3
    expected = ms_deform_attn_reference(
        value.detach().bfloat16().double(), shapes, starts, locations.detach().double(), weights.detach().double()
    )
    eps = torch.finfo(torch.bfloat16).eps
    torch.testing.assert_close(out.cpu().double(), expected.cpu(), rtol=2 * eps, atol=2 * eps)


def test_dispatch_uses_the_compiled_cpu_kernel():
    prebuilt = importlib.import_module("mask2former.ops.ms_deform_attn._C")
    assert kernels_for("cpu") is prebuilt
    value, shapes, starts, locations, weights = make_inputs(1)
    out = ms_deform_attn(value.requires_grad_(), shapes, starts, locations, weights)
    assert type(out.grad_fn).__name__ == "MSDeformAttnFunctionBackward"


def cpu_flags():
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where there is none)."""
    path = Path("/proc/cpuinfo")
    match = re.search(r"^flags\s*:(.*)$", path.read_text(), re.MULTILINE) if path.exists() else None
    return set(match.group(1).split()) if match else set()


def test_cpu_kernels_run_the_widest_instruction_set_the_cpu_has():
    module = kernels_for("cpu")
    expected = ["baseline"]
    flags = cpu_flags()
    if platform.machine() == "x86_64" and {"avx2", "fma", "bmi1", "bmi2", "popcnt"} <= flags:
        expected.insert(0, "avx2")
        if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"} <= flags:
            expected.insert(0, "avx512")
    assert module.cpu_isas() == expected
    assert module.cpu_isa() == expected[0]


@pytest.mark.parametrize("channels", [5, 32])
def test_cpu_kernels_of_every_instruction_set_match_the_reference(channels):
    module = kernels_for("cpu")
    inputs = make_inputs(3, channels=channels, seed=5)
    for isa in module.cpu_isas():
        with cpu_isa(isa):
            assert module.cpu_isa() == isa
            assert_close_to_reference(compiled("cpu"), "cpu", inputs, torch.float64)
            assert_close_to_reference(compiled("cpu"), "cpu", inputs, torch.float32, grad_tols=FLOAT32_TOLERANCES)
            for dtype in (torch.bfloat16, torch.float16):
                tols = reduced_precision_tolerances(dtype)
                assert_close_to_reference(
                    compiled("cpu"), "cpu", inputs, dtype, loc_dtype=torch.float32, grad_tols=tols
                )
    assert module.cpu_isa() == module.cpu_isas()[0], "the widest again after the blocks"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_forward_is_bitwise_the_same_on_every_instruction_set(dtype):
    module = kernels_for("cpu")
    value, shapes, starts, locations, weights = make_inputs(3, queries=50, heads=4, channels=32, seed=7)
    args = (value.to(dtype), shapes, starts, locations.float(), weights.float())
    outputs = {}
    for isa in module.cpu_isas():
        with cpu_isa(isa):
            outputs[isa] = module.forward(*args)
    for isa, out in outputs.items():
        assert torch.equal(out, outputs["baseline"]), f"{isa} differs from baseline"


def test_unknown_cpu_instruction_set_names_the_choices():
    value, shapes, starts, locations, weights = make_inputs(1, seed=6)
    with cpu_isa("sse9"), pytest.raises(RuntimeError, match="MASK2FORMER_CPU_ISA=sse9: .*one of .*baseline"):
        compiled("cpu")(value, shapes, starts, locations, weights)


def test_reference_only_runs_the_reference_inside_the_block():
    value, shapes, starts, locations, weights = make_inputs(1)
    value.requires_grad_()
    with reference_only():
        out = ms_deform_attn(value, shapes, starts, locations, weights)
    assert type(out.grad_fn).__name__ != "MSDeformAttnFunctionBackward"
    assert torch.equal(out, ms_deform_attn_reference(value, shapes, starts, locations, weights))
    after = ms_deform_attn(value, shapes, starts, locations, weights)
    assert type(after.grad_fn).__name__ == "MSDeformAttnFunctionBackward", "the kernels again after the block"


@pytest.fixture
def fresh_kernel_lookup():
    kernels_for.cache_clear()
    yield
    kernels_for.cache_clear()


def test_missing_extension_builds_it_just_in_time(monkeypatch, fresh_kernel_lookup):
    prebuilt = importlib.import_module("mask2former.ops.ms_deform_attn._C")
    calls = []
    monkeypatch.setattr(kernels, "_prebuilt", lambda: (None, "simulated: not built"))
    monkeypatch.setattr(build, "jit_build", lambda with_cuda: calls.append(with_cuda) or prebuilt)
    assert kernels_for("cpu") is prebuilt
    assert kernels_for("cpu") is prebuilt
    assert calls == [False]  # built once, for the CPU only, then cached


def test_fallback_to_reference_warns_once(monkeypatch, fresh_kernel_lookup):
    def no_compiler(with_cuda):
        raise RuntimeError("simulated: no C++ compiler")

    monkeypatch.setattr(kernels, "_prebuilt", lambda: (None, "simulated: not built"))
    monkeypatch.setattr(build, "jit_build", no_compiler)
    value, shapes, starts, locations, weights = make_inputs(2)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch reference") as record:
        first = ms_deform_attn(value, shapes, starts, locations, weights)
        ms_deform_attn(value, shapes, starts, locations, weights)
    runtime_warnings = [w for w in record if issubclass(w.category, RuntimeWarning)]
    assert len(runtime_warnings) == 1
    assert "no C++ compiler" in str(runtime_warnings[0].message)
    expected = ms_deform_attn_reference(value, shapes, starts, locations, weights)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda i: i.update(value=i["value"][0]), r"value must be \(N, S, M, D\)"),
        (lambda i: i.update(value=i["value"][:, :-1]), "add up to"),
        (lambda i: i.update(level_start_index=i["level_start_index"] + 1), "level_start_index .* does not match"),
        (lambda i: i.update(attention_weights=i["attention_weights"][..., :1]), "attention_weights must be"),
        (lambda i: i.update(sampling_locations=i["sampling_locations"][:1]), "must have N=2"),
        (lambda i: i.update(spatial_shapes=i["spatial_shapes"][:2]), r"spatial_shapes must be \(3, 2\)"),
        (lambda i: i.update(spatial_shapes=i["spatial_shapes"].float()), "must be integer tensors"),
    ],
)
def test_bad_inputs_name_the_problem(change, error):
    names = ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"]
    inputs = dict(zip(names, make_inputs(2)))
    change(inputs)
    with pytest.raises((ValueError, TypeError), match=error):
        ms_deform_attn(**inputs)


def test_default_cuda_architectures_follow_torch_within_what_nvcc_supports(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90a", "sm_120", "compute_120"])
    monkeypatch.setattr(build, "find_cuda_home", lambda: "/toolkit")
    monkeypatch.setattr(build, "_nvcc_architectures", lambda home: {"80", "90a", "100", "120"})
    assert build.default_cuda_arch_list() == "8.0;9.0a;12.0+PTX"
    monkeypatch.setattr(build, "_nvcc_architectures", lambda home: None)  # nvcc cannot say: torch's list
    assert build.default_cuda_arch_list() == "7.5;8.0;9.0a;12.0+PTX"
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: [])  # a CPU-only torch
    assert build.default_cuda_arch_list() == build.FALLBACK_CUDA_ARCH_LIST


def listed_architectures(arch_list):
    """``TORCH_CUDA_ARCH_LIST`` as {number: with PTX}, e.g. "8.0;9.0+PTX" -> {80: False, 90: True}."""
    listed = {}
    for entry in filter(None, arch_list.replace(" ", ";").split(";")):
        listed[int(re.sub(r"[^0-9]", "", entry.split("+")[0]))] = entry.endswith("+PTX")
    return listed


@pytest.mark.skipif(not build.wants_cuda(), reason="no CUDA toolkit (nvcc) here, so no CUDA build to check")
def test_cuda_kernels_are_compiled_for_every_listed_architecture():
    # Where nvcc exists, `pip install -e .` (tools/setup_env.sh, hence CI) compiles the CUDA sources for
    # TORCH_CUDA_ARCH_LIST, by default the installed torch's architectures, and fails on a compile error; this
    # checks that it did so, for each of them and for Hopper.
    prebuilt = importlib.import_module("mask2former.ops.ms_deform_attn._C")
    assert prebuilt.with_cuda, "nvcc is available but the extension was built without CUDA: rerun pip install -e ."
    listed = listed_architectures(os.environ.get("TORCH_CUDA_ARCH_LIST") or build.default_cuda_arch_list())
    built = {a // 10 for a in prebuilt.cuda_archs}
    message = f"built for {sorted(built)}, listed {sorted(listed)}: rerun pip install -e ."
    assert set(listed) <= built and 90 in built, message
    cuobjdump = Path(build.find_cuda_home()) / "bin" / "cuobjdump"
    if cuobjdump.is_file():  # machine code for each architecture, PTX for those marked +PTX
        so = prebuilt.__file__
        elf = subprocess.run([cuobjdump, "--list-elf", so], capture_output=True, text=True, check=True).stdout
        ptx = subprocess.run([cuobjdump, "--list-ptx", so], capture_output=True, text=True, check=True).stdout
        for number, with_ptx in listed.items():
            assert f"sm_{number}" in elf
            assert (f"sm_{number}" in ptx) == with_ptx

"""
The compiled kernels' self-check: the first time they run on a device in a dtype, they first solve a small random
problem, forward and backward, and are compared with the float64 reference. Kernels that give wrong numbers or do
not launch (e.g. "no kernel image is available" on a GPU the extension was not built for) are replaced on that
device, with one warning, by a JIT build for the device (where a toolchain exists) that passes the same check, else
by the reference: never silently wrong.

``MASK2FORMER_OP_SELF_CHECK=0`` (or ``set_enabled(False)``) turns the check off.
"""
import math
import os
import platform
import threading
import warnings

import torch

from . import build
from .function import MSDeformAttnFunction
from .reference import level_starts, ms_deform_attn_reference

ENV_SWITCH = "MASK2FORMER_OP_SELF_CHECK"
# Channels per head of the check's problems: 32 (all Mask2Former models; the CPU kernel's fixed-size path), 64 and
# 160 (CUDA thread groups of 16 and 32, one or two passes over the channels) and 6 (no vector loads).
CHANNELS = (32, 64, 160, 6)
LEVELS = ((5, 7), (3, 4), (1, 2))
# Largest error allowed, relative to the largest magnitude of the reference result: about 6x what the CPU kernels
# measure (fp64 5e-16, fp32 5e-7, fp16 4e-4, bf16 3.5e-3: the rounding of the results to the dtype; sums are fp32).
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}

_enabled = None  # None: follow the environment variable
_lock = threading.Lock()
_passed = set()  # (device, module, dtype)
_replacement = {}  # (device, module) -> the module that runs instead on that device, or None for the reference


def set_enabled(enabled):
    """Turns the self-check on or off for this process (None: as ``MASK2FORMER_OP_SELF_CHECK`` says, default on)."""
    global _enabled
    _enabled = enabled


def enabled():
    if _enabled is not None:
        return _enabled
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def away_from_cell_edges(locations, shapes):
    """
    Moves each location at least 0.05 pixel away from the lines between pixel centres, where bilinear sampling has
    a kink: there, float32 rounding and float64 could take different one-sided derivatives.
    """
    size = shapes.flip(-1).to(locations.dtype).view(1, 1, 1, -1, 1, 2)  # (W, H) per level
    pixel = locations * size - 0.5
    cell = pixel.floor()
    return (cell + (pixel - cell).clamp(0.05, 0.95) + 0.5) / size


def check_problem(channels, seed=0):
    """
    A small float64 problem on the CPU: value, spatial_shapes, level_start_index, locations, weights, grad_output.
    Locations span [-0.3, 1.3] (samples inside, across and beyond the borders) and include the borders 0 and 1.
    Made with a generator of its own: the global random state is not touched.
    """
    g = torch.Generator().manual_seed(seed)
    batch, queries, heads, points = 2, 5, 2, 4
    shapes = torch.tensor(LEVELS)
    sizes = shapes.prod(1)
    starts = level_starts(shapes)
    value = torch.randn(batch, int(sizes.sum()), heads, channels, generator=g, dtype=torch.float64)
    locations = torch.rand(batch, queries, heads, len(LEVELS), points, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    locations[:, 0, :, :, 0] = 0.0
    locations[:, 0, :, :, 1] = 1.0
    weights = torch.rand(batch, queries, heads, len(LEVELS), points, generator=g, dtype=torch.float64)
    grad_output = torch.randn(batch, queries, heads * channels, generator=g, dtype=torch.float64)
    return value, shapes, starts, away_from_cell_edges(locations, shapes), weights, grad_output


def _outputs_and_grads(fn, value, shapes, starts, locations, weights, grad_output):
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
    grads = torch.autograd.grad(out, leaves, grad_output.to(out.dtype))
    return [out, *grads]


def largest_error(module, device, dtype):
    """
    Runs ``module``'s kernels on ``device`` in ``dtype`` on the check's problems, forward and backward, against the
    float64 reference on the same numbers. Returns (error, result, channels): the largest difference relative to the
    largest magnitude of the reference result (NaN if any result has a NaN), which result it is in and the channels
    per head of that problem. Raises what the kernels raise.
    """
    acc_dtype = torch.promote_types(dtype, torch.float32)
    names = ("output", "grad value", "grad sampling_locations", "grad attention_weights")
    # The CUDA backward accumulates with atomics, which torch refuses in deterministic mode: check the forward only.
    strict = torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    backward = not (device.type == "cuda" and strict)
    worst = (0.0, "output", CHANNELS[0])
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        for channels in CHANNELS:
            value, shapes, starts, locations, weights, grad_output = check_problem(channels)
            # Both sides get the same numbers: those of the checked dtype.
            value, grad_output = value.to(dtype), grad_output.to(dtype)
            locations, weights = locations.to(acc_dtype), weights.to(acc_dtype)
            inputs = [t.to(device) for t in (value, shapes, starts, locations, weights, grad_output)]
            if backward:
                got = _outputs_and_grads(lambda *a: MSDeformAttnFunction.apply(module, *a), *inputs)
            else:
                with torch.no_grad():
                    got = [MSDeformAttnFunction.apply(module, *inputs[:5])]
            got = [t.double().cpu() for t in got]
            exact = [value.double(), shapes, starts, locations.double(), weights.double(), grad_output.double()]
            want = _outputs_and_grads(ms_deform_attn_reference, *exact)
            for name, a, b in zip(names, got, want):
                error = ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()
                if not (error <= worst[0] or math.isnan(worst[0])):  # a NaN is the worst
                    worst = (error, name, channels)
    return worst


def first_error(module, device, dtype):
    """None if ``module``'s kernels pass the check on ``device`` in ``dtype``, else what went wrong."""
    tolerance = TOLERANCE.get(dtype, TOLERANCE[torch.float32])
    try:
        error, name, channels = largest_error(module, device, dtype)
    except Exception as e:  # noqa: BLE001 - a failed launch is a result of the check
        return f"the kernels fail to run ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})"
    if not error <= tolerance:  # also catches NaN
        return (
            f"{name} is off by {error:.3g} of its magnitude (tolerance {tolerance:g}) with {channels} channels per head"
        )
    return None


def device_description(device):
    """The device's name and architecture, e.g. "NVIDIA H200 (sm_90)"."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    return f"{platform.processor() or 'CPU'} ({platform.machine()})"


def _built_for(module):
    archs = list(getattr(module, "cuda_archs", []))
    built = ", ".join(f"sm_{a // 10}" for a in archs) if archs else "no CUDA architecture"
    return f"{getattr(module, '__name__', module)} was built for {built}"


def _rebuild(module, device):
    """A JIT build of the kernels for ``device`` (its architecture only, on a GPU), or None if it is ``module``."""
    with_cuda = device.type == "cuda"
    arch = "{}.{}".format(*torch.cuda.get_device_capability(device)) if with_cuda else None
    name = f"{build.JIT_NAME}_{'cuda' if with_cuda else 'cpu'}" + (f"_sm{arch.replace('.', '')}" if arch else "")
    if getattr(module, "__name__", None) == name:
        return None
    if with_cuda and build.find_cuda_home() is None:
        raise RuntimeError("no CUDA toolkit to build them with (set CUDA_HOME)")
    return build.jit_build(with_cuda, arch)


def _replace(module, device, dtype, error):
    """The kernels that pass the check on ``device`` in ``dtype`` instead of ``module``, or None; warns once."""
    try:
        rebuilt = _rebuild(module, device)
        outcome = "" if rebuilt is not None else "this is already a build for this device"
    except Exception as e:  # noqa: BLE001 - any toolchain failure means: no rebuilt kernels
        rebuilt, outcome = None, f"the JIT build for this device failed ({type(e).__name__}: {str(e)[:300]})"
    if rebuilt is not None:
        rebuilt_error = first_error(rebuilt, device, dtype)
        if rebuilt_error is None:
            _passed.add((device, rebuilt, dtype))
        else:
            rebuilt, outcome = None, f"the JIT build for this device fails too: {rebuilt_error}"
    action = (
        f"the kernels JIT-compiled for this device ({rebuilt.__name__})"
        if rebuilt is not None
        else f"the slow pure-PyTorch reference ({outcome})"
    )
    if device.type == "cuda":
        built = f"{_built_for(module)} (torch for {', '.join(torch.cuda.get_arch_list())})"
        fix = "TORCH_CUDA_ARCH_LIST={}.{} pip install -e .".format(*torch.cuda.get_device_capability(device))
    else:
        built, fix = _built_for(module), "pip install -e ."
    warnings.warn(
        f"mask2former ms_deform_attn: the compiled kernels fail their self-check on {device} = "
        f"{device_description(device)} in {str(dtype).replace('torch.', '')}: {error}. {built}. Using {action} "
        f"on {device} from now on. To fix: reinstall with `{fix}`; {ENV_SWITCH}=0 turns the check off.",
        RuntimeWarning,
        stacklevel=4,
    )
    return rebuilt


def _may_run_now(device):
    """No check while tracing, scripting, compiling or capturing a CUDA graph: it would become part of the graph."""
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def checked(module, device, dtype):
    """
    The kernels to run on ``device`` for ``dtype`` values: ``module`` once it passed the check there, else what
    replaces it (None: the reference). With the check off, ``module`` unchanged.
    """
    if module is None or not enabled():
        return module
    current = _replacement.get((device, module), module)
    if current is None or (device, current, dtype) in _passed or not _may_run_now(device):
        return current
    with _lock:
        current = _replacement.get((device, module), module)
        if current is None or (device, current, dtype) in _passed:
            return current
        error = first_error(current, device, dtype)
        if error is None:
            _passed.add((device, current, dtype))
            return current
        _replacement[(device, module)] = _replace(current, device, dtype, error)
        return _replacement[(device, module)]


def reset():
    """Forgets all results: the next use on each device checks again."""
    with _lock:
        _passed.clear()
        _replacement.clear()

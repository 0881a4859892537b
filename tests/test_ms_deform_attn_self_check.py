"""
The op's self-check on first use per device and dtype, driven on the CPU kernels: kernels made wrong or failing on
purpose are caught, replaced by a JIT build that passes or else by the reference, with one warning; the check can
be turned off, runs once, and leaves the global random state alone.
"""
import importlib
import types

import pytest
import torch

from mask2former.ops.ms_deform_attn import build, kernels, kernels_for, ms_deform_attn, ms_deform_attn_reference
from mask2former.ops.ms_deform_attn import self_check

CPU = torch.device("cpu")


@pytest.fixture
def prebuilt():
    return importlib.import_module("mask2former.ops.ms_deform_attn._C")


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.delenv(self_check.ENV_SWITCH, raising=False)
    kernels_for.cache_clear()
    self_check.reset()
    yield
    kernels_for.cache_clear()
    self_check.reset()


def stand_in(real, forward=None, backward=None, name="stand_in_C"):
    """A module like the compiled one, whose forward / backward can be replaced."""
    module = types.ModuleType(name)
    module.with_cuda, module.cuda_archs = False, [800, 900]
    module.forward, module.backward = forward or real.forward, backward or real.backward
    return module


def install(monkeypatch, module, jit=None):
    """Makes ``module`` the installed extension; ``jit``: what a JIT build returns (an exception is raised)."""
    calls = []

    def jit_build(with_cuda, arch=None):
        calls.append((with_cuda, arch))
        if isinstance(jit, Exception):
            raise jit
        return jit

    monkeypatch.setattr(kernels, "_prebuilt", lambda: (module, None))
    monkeypatch.setattr(build, "jit_build", jit_build)
    return calls


def inputs(channels=32):
    value, shapes, starts, locations, weights, _ = self_check.check_problem(channels, seed=1)
    return value.float(), shapes, starts, locations.float(), weights.float()


def self_check_warnings(record):
    return [w for w in record if "self-check" in str(w.message)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_compiled_cpu_kernels_pass(prebuilt, dtype):
    assert self_check.first_error(prebuilt, CPU, dtype) is None


def test_wrong_output_is_replaced_by_the_jit_build(monkeypatch, prebuilt):
    wrong = stand_in(prebuilt, forward=lambda *args: prebuilt.forward(*args) * 1.001)
    calls = install(monkeypatch, wrong, jit=prebuilt)
    args = inputs()
    with pytest.warns(RuntimeWarning) as record:
        first = ms_deform_attn(*args)
        second = ms_deform_attn(*args)
    [warning] = self_check_warnings(record)
    message = str(warning.message)
    assert "output is off by" in message and "float32" in message and "cpu" in message
    assert "stand_in_C was built for sm_80, sm_90" in message
    assert calls == [(False, None)]
    torch.testing.assert_close(first, prebuilt.forward(*args), rtol=0, atol=0)
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_wrong_gradient_is_caught(monkeypatch, prebuilt):
    def backward(*args):
        grad_value, grad_locations, grad_weights = prebuilt.backward(*args)
        return grad_value, grad_locations, grad_weights.flip(-1)

    install(monkeypatch, stand_in(prebuilt, backward=backward), jit=prebuilt)
    with pytest.warns(RuntimeWarning, match="grad attention_weights is off by"):
        ms_deform_attn(*inputs())


def test_launch_failure_without_toolchain_falls_back_to_the_reference(monkeypatch, prebuilt):
    def no_kernel_image(*args):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    install(monkeypatch, stand_in(prebuilt, forward=no_kernel_image), jit=RuntimeError("simulated: no compiler"))
    args = [t.requires_grad_() if t.is_floating_point() else t for t in inputs()]
    with pytest.warns(RuntimeWarning) as record:
        out = ms_deform_attn(*args)
        ms_deform_attn(*args)
    [warning] = self_check_warnings(record)
    message = str(warning.message)
    assert "no kernel image is available" in message
    assert "pure-PyTorch reference" in message and "simulated: no compiler" in message
    assert type(out.grad_fn).__name__ != "MSDeformAttnFunctionBackward"
    torch.testing.assert_close(out, ms_deform_attn_reference(*args), rtol=0, atol=0)


def test_wrong_jit_build_falls_back_to_the_reference(monkeypatch, prebuilt):
    wrong = stand_in(prebuilt, forward=lambda *args: torch.zeros_like(prebuilt.forward(*args)))
    install(monkeypatch, wrong, jit=stand_in(prebuilt, forward=wrong.forward, name="stand_in_jit"))
    with pytest.warns(RuntimeWarning, match="the JIT build for this device fails too") as record:
        out = ms_deform_attn(*inputs())
    assert len(self_check_warnings(record)) == 1
    torch.testing.assert_close(out, ms_deform_attn_reference(*inputs()), rtol=0, atol=0)


def test_switched_off_by_the_environment(monkeypatch, prebuilt):
    monkeypatch.setenv(self_check.ENV_SWITCH, "0")
    wrong = stand_in(prebuilt, forward=lambda *args: prebuilt.forward(*args) + 1)
    calls = install(monkeypatch, wrong, jit=prebuilt)
    out = ms_deform_attn(*inputs())
    torch.testing.assert_close(out, prebuilt.forward(*inputs()) + 1, rtol=0, atol=0)
    assert calls == []


def test_checked_once_per_dtype_without_touching_the_random_state(monkeypatch, prebuilt):
    forwards = []
    counting = stand_in(prebuilt, forward=lambda *args: forwards.append(1) or prebuilt.forward(*args))
    install(monkeypatch, counting, jit=None)
    rng = torch.random.get_rng_state()
    ms_deform_attn(*inputs())
    checks = len(forwards) - 1
    assert checks == len(self_check.CHANNELS)
    ms_deform_attn(*inputs())
    assert len(forwards) == checks + 2, "the second call runs the kernels only"
    value, *rest = inputs()
    ms_deform_attn(value.double(), *rest)
    assert len(forwards) == 2 * checks + 3, "a new dtype is checked again"
    assert torch.equal(torch.random.get_rng_state(), rng)

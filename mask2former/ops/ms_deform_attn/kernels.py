"""
Finds the compiled kernels for a device: the extension built by ``pip install -e .``, else a JIT build on first use
(cached by torch in ``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), else none, with one warning,
and the caller falls back to the pure-PyTorch reference.
"""
import functools
import logging
import warnings

from . import build

logger = logging.getLogger(__name__)


def _prebuilt():
    try:
        from . import _C
    except ImportError as e:
        return None, f"the extension built by `pip install -e .` does not import ({e})"
    return _C, None


@functools.lru_cache(maxsize=None)
def kernels_for(device_type):
    """The compiled module whose kernels run on ``device_type`` ("cpu" or "cuda"), or None."""
    if device_type not in ("cpu", "cuda"):
        reason = f"no kernels exist for {device_type} tensors"
    else:
        with_cuda = device_type == "cuda"
        module, reason = _prebuilt()
        if module is not None and (module.with_cuda or not with_cuda):
            return module
        if module is not None:
            reason = "the extension was built without CUDA (no toolkit was found at install time)"
        logger.warning("ms_deform_attn: %s; compiling the %s kernels now (once, then cached)", reason, device_type)
        try:
            return build.jit_build(with_cuda)
        except Exception as e:  # noqa: BLE001 - any toolchain failure means: no kernels, use the reference
            message = str(e) if len(str(e)) <= 300 else str(e)[:300] + "..."  # compiler logs can be long
            reason = f"{reason}, and the JIT build failed ({type(e).__name__}: {message})"
    warnings.warn(
        f"mask2former ms_deform_attn: using the slow pure-PyTorch reference for {device_type} tensors: {reason}. "
        "To get the compiled kernels, reinstall with `pip install -e .` where a C++ compiler (and, for CUDA, nvcc "
        "or CUDA_HOME) is available.",
        RuntimeWarning,
        stacklevel=3,
    )
    return None

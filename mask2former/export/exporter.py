"""Export a MaskFormer's network to ONNX or TorchScript, with dynamic batch size and image size."""
import contextlib
import io
import json
import os
import warnings

import torch

from ..checkpoint.atomic import atomic_write
from .metadata import make_metadata
from .network import INPUT_NAME, OUTPUT_NAMES, MaskFormerNetwork

FORMATS = ("onnx", "torchscript")
# ONNX GridSample, which the deformable attention's exported form uses, exists from opset 16 on.
MIN_OPSET = 16
DEFAULT_OPSET = 17
# Name of the metadata entry in both formats (ONNX metadata_props key; TorchScript extra file).
METADATA_KEY = "mask2former.json"


def export_model(model, cfg, output, file_format="onnx", opset=DEFAULT_OPSET, sample_size=None):
    """
    Write ``model``'s network (``MaskFormerNetwork``) to ``output``, atomically.

    The file maps (N, 3, H, W) normalized images to ``pred_logits`` and ``pred_masks``, for any N and any H, W
    that are multiples of the model's size divisibility. The deformable attention is recorded in its pure-PyTorch
    form (``grid_sample``), so ONNX Runtime and TorchScript run the file without custom operators. The file holds
    the config's network keys (see ``metadata.py``), which :class:`ExportedPredictor` checks.

    Args:
        model: a ``MaskFormer`` with its weights loaded.
        cfg: the config ``model`` was built from.
        file_format: "onnx" or "torchscript".
        opset: ONNX opset, at least 16.
        sample_size: (H, W) of the image the network is traced on; any multiple of the size divisibility gives
            the same file up to the recorded constants (default: 10 x 15 times the size divisibility).
    """
    if file_format not in FORMATS:
        raise ValueError(f"format {file_format!r} is not supported; choose one of {FORMATS}")
    if file_format == "onnx" and opset < MIN_OPSET:
        raise ValueError(
            f"ONNX opset {opset} is too old: the deformable attention exports through GridSample, which needs "
            f"opset >= {MIN_OPSET}; use --opset {DEFAULT_OPSET}"
        )
    divisor = model.size_divisibility if model.size_divisibility > 0 else 1
    height, width = sample_size or (10 * divisor, 15 * divisor)
    if height % divisor or width % divisor:
        raise ValueError(f"sample size {height}x{width} is not a multiple of the size divisibility {divisor}")
    metadata = make_metadata(cfg, divisor, file_format, opset if file_format == "onnx" else None)

    network = MaskFormerNetwork(model).eval().float()
    sample = torch.zeros((1, 3, height, width), device=model.device)
    output = os.fspath(output)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with torch.no_grad(), _quiet_tracing():
        if file_format == "onnx":
            data = _onnx_bytes(network, sample, opset, metadata)
        else:
            traced = torch.jit.trace(network, sample, check_trace=False)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer, _extra_files={METADATA_KEY: json.dumps(metadata)})
            data = buffer.getvalue()
    with atomic_write(output) as f:
        f.write(data)
    return metadata


def _onnx_bytes(network, sample, opset, metadata):
    import onnx

    buffer = io.BytesIO()
    # The TorchScript-based exporter: it records what tracing records, the same graph as the TorchScript format.
    torch.onnx.export(
        network,
        (sample,),
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={
            INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAMES[0]: {0: "batch"},
            OUTPUT_NAMES[1]: {0: "batch", 2: "mask_height", 3: "mask_width"},
        },
    )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata)})
    return proto.SerializeToString()


@contextlib.contextmanager
def _quiet_tracing():
    """
    Silence the tracer's warnings about Python values: the network's only Python-side values are shapes, which it
    keeps as traced tensors, and input checks inside torch's own attention; the tests check other sizes.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
        warnings.filterwarnings("ignore", message=r".*dynamo=False.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        yield

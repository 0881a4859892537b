"""Running an exported file like the model: detectron2 input dicts in, the model's output dicts out."""
import json

import numpy as np
import torch
from detectron2.structures import ImageList

from ..modeling.inference import InferenceSettings, maskformer_inference
from .exporter import METADATA_KEY
from .metadata import check_config
from .network import INPUT_NAME


class ExportedPredictor:
    """
    An exported network (``tools/export_model.py``) with the model's pre- and post-processing: called like a
    ``MaskFormer`` in eval mode with a list of dicts ("image" (C, H, W) in ``INPUT.FORMAT``, optional "height" /
    "width"), it returns per image the dicts the model returns (``sem_seg``, ``panoptic_seg``, ``instances`` as
    ``MODEL.MASK_FORMER.TEST`` switches them on), post-processed by the same function as the model.

    ONNX files run in ONNX Runtime (its CUDA provider where installed and ``MODEL.DEVICE`` is cuda, else CPU, with
    ``torch.get_num_threads()`` threads);
    TorchScript files in torch on ``MODEL.DEVICE``. ``cfg`` must be the config the file was exported from (its
    network keys are checked); its post-processing keys (``MODEL.MASK_FORMER.TEST.*``) may differ.
    """

    def __init__(self, path, cfg):
        self.path = str(path)
        self.device = torch.device(cfg.MODEL.DEVICE)
        with open(self.path, "rb") as f:
            magic = f.read(4)
        # TorchScript files are zip archives; ONNX files are protobuf messages.
        self._runtime = _TorchScriptRuntime(self.path, self.device) if magic == b"PK\x03\x04" else _OnnxRuntime(
            self.path, self.device
        )
        self.metadata = self._runtime.metadata
        check_config(self.metadata, cfg, self.path)
        self.size_divisibility = self.metadata["size_divisibility"]
        self.settings = InferenceSettings.from_config(cfg)
        self.pixel_mean = torch.tensor(cfg.MODEL.PIXEL_MEAN, dtype=torch.float32).view(-1, 1, 1)
        self.pixel_std = torch.tensor(cfg.MODEL.PIXEL_STD, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, batched_inputs):
        images = [(x["image"].float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
        pred_logits, pred_masks = self.run(images.tensor)
        output_sizes = [
            (x.get("height", size[0]), x.get("width", size[1])) for x, size in zip(batched_inputs, images.image_sizes)
        ]
        return maskformer_inference(
            pred_logits, pred_masks, images.tensor.shape[-2:], images.image_sizes, output_sizes, self.settings
        )

    def run(self, images):
        """The exported network alone: (N, 3, H, W) normalized float32 images -> (pred_logits, pred_masks)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        d = self.size_divisibility
        if h % d or w % d:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of {d} (MODEL.MASK_FORMER.SIZE_DIVISIBILITY): pad the batch "
                f"bottom/right to {-(-h // d) * d}x{-(-w // d) * d}, e.g. with detectron2's ImageList.from_tensors"
            )
        return self._runtime(images.float())


class _OnnxRuntime:
    def __init__(self, path, device):
        import onnx

        # The metadata, without the weights (they may be large).
        proto = onnx.load(path, load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        if METADATA_KEY not in props:
            raise ValueError(f"{path} is not a Mask2Former export (no {METADATA_KEY!r} metadata); export it with "
                             "tools/export_model.py")
        self.metadata = json.loads(props[METADATA_KEY])
        self.path, self.device = path, device
        self._session = None

    def _start(self):
        """The ONNX Runtime session, made at the first run: a file that fails the config check costs no session."""
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        # As many threads as torch uses (torch.set_num_threads), so that both runtimes share one setting.
        options.intra_op_num_threads = torch.get_num_threads()
        return ort.InferenceSession(self.path, options, providers=providers)

    def __call__(self, images):
        if self._session is None:
            self._session = self._start()
        outputs = self._session.run(None, {INPUT_NAME: np.ascontiguousarray(images.cpu().numpy())})
        return tuple(torch.from_numpy(o) for o in outputs)


class _TorchScriptRuntime:
    def __init__(self, path, device):
        extra = {METADATA_KEY: ""}
        self.module = torch.jit.load(path, map_location=device, _extra_files=extra)
        if not extra[METADATA_KEY]:
            raise ValueError(f"{path} is not a Mask2Former export (no {METADATA_KEY!r} metadata); export it with "
                             "tools/export_model.py")
        self.metadata = json.loads(extra[METADATA_KEY])
        self.device = device

    @torch.no_grad()
    def __call__(self, images):
        return self.module(images.to(self.device))

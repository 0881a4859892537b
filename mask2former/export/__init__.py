"""
Deployment: the network exported to ONNX or TorchScript (:func:`export_model`, ``tools/export_model.py``) and run
with the model's own pre- and post-processing (:class:`ExportedPredictor`).
"""
from .exporter import DEFAULT_OPSET, FORMATS, MIN_OPSET, export_model
from .network import MaskFormerNetwork
from .predictor import ExportedPredictor

__all__ = ["DEFAULT_OPSET", "FORMATS", "MIN_OPSET", "ExportedPredictor", "MaskFormerNetwork", "export_model"]

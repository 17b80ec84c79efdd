"""ONNX export of pansight models and an onnxruntime predictor with the same result types.

>>> from pansight.export import export_onnx
>>> export_onnx(model, "model.onnx", dynamic=True)
>>> predictor = pansight.load("model.onnx")       # an OnnxPredictor
>>> predictor.predict([image])                     # the eager model's result types
"""

from pansight.export.graph import EXPORT_SPECS, export_checkpoint, export_onnx, exportable_models
from pansight.export.metadata import ExportMetadata
from pansight.export.predictor import OnnxPredictor, is_onnx_file, load_onnx

__all__ = [
    "EXPORT_SPECS",
    "ExportMetadata",
    "OnnxPredictor",
    "export_checkpoint",
    "export_onnx",
    "exportable_models",
    "is_onnx_file",
    "load_onnx",
]

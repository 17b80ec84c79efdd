"""ONNX export of pansight models and an onnxruntime predictor with the same result types.

>>> from pansight.export import export_onnx
>>> export_onnx(model, "model.onnx", dynamic=True)
>>> predictor = pansight.load("model.onnx")       # an OnnxPredictor
>>> predictor.predict([image])                     # the eager model's result types
>>> quantize_onnx("model.onnx", "model_int8.onnx")  # int8, calibrated on the training data
"""

from pansight.export.graph import export_checkpoint, export_onnx
from pansight.export.metadata import ExportMetadata
from pansight.export.predictor import OnnxPredictor, load_onnx
from pansight.export.quantize import Int8Options, quantize_onnx
from pansight.export.specs import exportable_models, quantizable_models
from pansight.export.yolact_edge import YolactEdgeOnnxPredictor

__all__ = [
    "ExportMetadata",
    "Int8Options",
    "OnnxPredictor",
    "YolactEdgeOnnxPredictor",
    "export_checkpoint",
    "export_onnx",
    "exportable_models",
    "load_onnx",
    "quantizable_models",
    "quantize_onnx",
]

"""TorchScript and ONNX export of the whole detector, and running the exported files."""

from .api import (
    EXPORT_FORMATS,
    ONNX_OPSET,
    export_metadata,
    export_model,
    export_onnx,
    export_torchscript,
    sample_input,
)
from .runtime import EXPORTED_EXTENSIONS, ExportedDetector
from .wrapper import ExportableDetector

__all__ = [
    "EXPORT_FORMATS",
    "EXPORTED_EXTENSIONS",
    "ONNX_OPSET",
    "ExportableDetector",
    "ExportedDetector",
    "export_metadata",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "sample_input",
]

"""ONNX (fp32 or int8) and ExportedProgram export of the whole detector, and running the files."""

from .api import (
    EXPORT_FORMATS,
    ONNX_OPSET,
    build_exportable,
    export_metadata,
    export_model,
    export_onnx,
    export_program,
    export_pt2,
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
    "build_exportable",
    "export_metadata",
    "export_model",
    "export_onnx",
    "export_program",
    "export_pt2",
    "export_torchscript",
    "sample_input",
]

"""
int8 ONNX: ONNX Runtime's static quantization of an exported fp32 ``model.onnx``, calibrated on
real images. The convolutions of the backbone, the FPN and the head (93 % of the time) become int8
(QDQ format, per-channel weights); the anchors, the box decoding, the score threshold, top-k and
NMS stay fp32, in the same file: only the nodes of the convolutional trunk (:func:`trunk_nodes`)
are quantized.
"""

import logging
import os
import tempfile
from typing import Dict, Iterable, Iterator, Optional, Set

import numpy as np

from .api import INPUT_NAME, set_onnx_metadata, write_onnx
from .cpu import has_vnni

__all__ = ["QUANTIZED_OPS", "quantize_onnx_int8", "trunk_nodes"]

logger = logging.getLogger(__name__)

# The operators made int8; Relu and MaxPool follow their convolution's int8 output, Add joins
# the ResNet's int8 branches, so that tensors stay int8 between convolutions.
QUANTIZED_OPS = ("Conv", "Relu", "MaxPool", "Add")


def trunk_nodes(graph) -> Set[str]:
    """
    The names of the nodes of the convolutional trunk (backbone, FPN and head): every Conv and
    every node that a Conv's input depends on. The post-processing (anchors, box decoding, NMS)
    feeds no convolution, so it is not among them: its additions, in pixels, would lose
    whole pixels to an 8-bit range (quantized, they cost the demo's model 1.6 AP).

    Args:
        graph: an ``onnx.GraphProto``.
    """
    producers = {output: node for node in graph.node for output in node.output}
    trunk: Set[str] = set()
    pending = [node for node in graph.node if node.op_type == "Conv"]
    while pending:
        node = pending.pop()
        if node.name not in trunk:
            trunk.add(node.name)
            pending.extend(producers[name] for name in node.input if name in producers)
    return trunk


def _require_quantization():
    try:
        from onnxruntime import quantization
    except ImportError as error:
        raise ImportError(
            "--quantize int8 needs 'onnxruntime', which is not installed: "
            "pip install -e '.[export]' (or make install)."
        ) from error
    return quantization


def quantize_onnx_int8(
    fp32_path: str,
    output_path: str,
    images: Iterable[np.ndarray],
    metadata: Dict,
    reduce_range: Optional[bool] = None,
) -> str:
    """
    Quantize an fp32 ONNX file of :func:`.api.export_onnx` to int8.

    Args:
        fp32_path: the fp32 ``.onnx``.
        output_path: where the int8 ``.onnx`` goes (written atomically).
        images: the calibration images, each ``(3, H, W)`` uint8 as the model takes them.
        metadata: stored in the file (see :func:`.api.export_metadata`); "precision" becomes
            "int8", "calibration_images" the number of images used.
        reduce_range: quantize weights to 7 bits, which avoids the saturation of the AVX2 / AVX-512
            int8 instructions of CPUs without VNNI; None: on exactly those CPUs.

    Returns:
        output_path.

    Raises:
        ValueError: no calibration image.
    """
    quantization = _require_quantization()
    import onnx

    if reduce_range is None:
        reduce_range = not has_vnni()
    reader = _CalibrationReader(images)
    output_dir = os.path.dirname(os.path.abspath(output_path))
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".quantize-") as work_dir:
        prepared = os.path.join(work_dir, "prepared.onnx")
        # Constant folding and fusions first, as ONNX Runtime recommends; the symbolic shape
        # inference is skipped: the detections' count depends on the data.
        quantization.shape_inference.quant_pre_process(
            fp32_path, prepared, skip_symbolic_shape=True
        )
        trunk = trunk_nodes(onnx.load(prepared, load_external_data=False).graph)
        quantized = os.path.join(work_dir, "int8.onnx")
        quantization.quantize_static(
            prepared,
            quantized,
            reader,
            quant_format=quantization.QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_quantize=sorted(trunk),
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
        proto = onnx.load(quantized)
    set_onnx_metadata(
        proto,
        {**metadata, "precision": "int8", "calibration_images": reader.count},
    )
    return write_onnx(proto, output_path)


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader over images; counts what it gave."""

    def __init__(self, images: Iterable[np.ndarray]):
        self._images: Iterator[np.ndarray] = iter(images)
        self.count = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        image = next(self._images, None)
        if image is None:
            if self.count == 0:
                raise ValueError("int8 calibration got no image: give it at least one.")
            return None
        self.count += 1
        if self.count % 10 == 0:
            logger.info(f"Calibrated on {self.count} images.")
        return {INPUT_NAME: image}

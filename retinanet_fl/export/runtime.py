"""
Run an exported ``model.onnx`` (ONNX Runtime, CPU), ``model.pt2`` (PyTorch) or legacy
``model.ts`` (TorchScript) on images, with the settings stored in the file.
"""

import json
import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .api import INPUT_NAME, METADATA_KEY, _torchscript_deprecation_silenced
from .cpu import check_precision

__all__ = ["ExportedDetector", "EXPORTED_EXTENSIONS"]

EXPORTED_EXTENSIONS = (".onnx", ".pt2", ".ts")


class ExportedDetector:
    """
    An exported detector: ``detector(image)`` with ``image`` ``(3, H, W)`` uint8 (a tensor or an
    array) in ``metadata["input_format"]``, at the network's resolution, returns boxes ``(D, 4)``,
    scores ``(D,)`` and classes ``(D,)`` as CPU tensors.
    """

    def __init__(self, path: str, intra_op_threads: Optional[int] = None):
        """
        Args:
            path: a file written by ``python -m retinanet_fl.export``: ``.onnx`` (fp32 or int8),
                ``.pt2`` (fp32 or bf16) or ``.ts``. A bf16 file is refused on a CPU without
                native bfloat16 (see :func:`.cpu.check_precision`).
            intra_op_threads: threads of ONNX Runtime's intra-op pool (None: its default, one per
                physical core). ``.pt2`` and ``.ts`` files run on torch's threads
                (``torch.set_num_threads``).
        """
        if intra_op_threads is not None and intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be at least 1, got {intra_op_threads}.")
        extension = os.path.splitext(path)[1]
        if extension not in EXPORTED_EXTENSIONS:
            raise ValueError(
                f"{path!r} is not an exported model: expected a file ending in "
                f"{', '.join(EXPORTED_EXTENSIONS)}, as written by python -m retinanet_fl.export."
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Exported model {path!r} does not exist.")
        self.path = path
        self._session = self._module = None
        if extension == ".onnx":
            self._session, self.metadata = _onnx_session(path, intra_op_threads)
        elif extension == ".pt2":
            self._module, self.metadata = _load_pt2(path)
        else:
            self._module, self.metadata = _load_torchscript(path)
        if self.metadata.get("precision") == "bf16":
            check_precision("bf16")

    def __call__(self, image) -> Tuple[Tensor, Tensor, Tensor]:
        """
        Args:
            image: ``(3, H, W)`` uint8.

        Returns:
            boxes ``(D, 4)`` float32 XYXY in the image's pixels, scores ``(D,)``, classes ``(D,)``
            int64.
        """
        image = torch.as_tensor(np.ascontiguousarray(image))
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"An exported model takes one (3, H, W) uint8 image, got {tuple(image.shape)} "
                f"{image.dtype}."
            )
        if self._module is not None:
            with torch.no_grad():
                return self._module(image)
        boxes, scores, classes = self._session.run(None, {INPUT_NAME: image.numpy()})
        return torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes)


def _parse_metadata(text, path: str) -> Dict:
    if isinstance(text, bytes):
        text = text.decode()
    if not text:
        raise ValueError(
            f"{path!r} holds no {METADATA_KEY}: export it with python -m retinanet_fl.export."
        )
    return json.loads(text)


def _load_pt2(path: str):
    extra_files = {METADATA_KEY: ""}
    program = torch.export.load(path, extra_files=extra_files)
    module = program.module()
    # Exported in the contiguous format (see export_program); eager convolutions run faster on
    # channels-last weights, which the graph's operations take as they are.
    for parameter in module.parameters():
        if parameter.dim() == 4:
            parameter.data = parameter.data.to(memory_format=torch.channels_last)
    return module, _parse_metadata(extra_files[METADATA_KEY], path)


def _load_torchscript(path: str):
    extra_files = {METADATA_KEY: ""}
    with _torchscript_deprecation_silenced():
        module = torch.jit.load(path, map_location="cpu", _extra_files=extra_files)
    return module, _parse_metadata(extra_files[METADATA_KEY], path)


def _onnx_session(path: str, intra_op_threads: Optional[int]):
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "Running an ONNX model needs 'onnxruntime', which is not installed: "
            "pip install -e '.[export]' (or make install)."
        ) from error
    options = onnxruntime.SessionOptions()
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    session = onnxruntime.InferenceSession(
        path, sess_options=options, providers=["CPUExecutionProvider"]
    )
    props = session.get_modelmeta().custom_metadata_map
    return session, _parse_metadata(props.get(METADATA_KEY, ""), path)

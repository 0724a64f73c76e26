"""
Export a trained detector to TorchScript (``model.ts``) or ONNX (``model.onnx``), the whole
inference path inside (see :class:`ExportableDetector`), with the settings a runner needs stored in
the file (:func:`export_metadata`).

Both formats are made by tracing: Detectron2's dense-detector decoding has a tracing branch (the
per-level top-k takes its size from the traced candidate count), and torchvision scripts its
class-wise NMS while tracing, so one file serves any image size and gives empty outputs, not an
error, when nothing scores above the threshold. ONNX uses PyTorch's TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``) at opset :data:`ONNX_OPSET`: the ``torch.export``-based
exporter cannot export Detectron2's ``Boxes``/``Instances`` post-processing, whose Python checks
(``tensor.numel() == 0``) guard on data-dependent sizes.
"""

import json
import os
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from ..data.classes import metadata_for_inference
from ..data.mapper import read_image
from ..engine import AtomicCheckpointer
from .wrapper import OUTPUT_NAMES, ExportableDetector

__all__ = [
    "EXPORT_FORMATS",
    "ONNX_OPSET",
    "METADATA_KEY",
    "export_metadata",
    "sample_input",
    "export_torchscript",
    "export_onnx",
    "export_model",
]

EXPORT_FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}
ONNX_OPSET = 17
# Name of the JSON metadata: an extra file of the TorchScript archive, a metadata_props key of ONNX.
METADATA_KEY = "retinanet_fl.json"
INPUT_NAME = "image"


def export_metadata(cfg: CfgNode) -> Dict:
    """
    Args:
        cfg: the model's config.

    Returns:
        what a runner of the exported file needs: the input's channel order, the test-time resize,
        and the class names and category ids (of the checkpoint, else of the config's datasets).
    """
    classes = metadata_for_inference(cfg)
    class_names = classes.get("thing_classes", None)
    id_map = classes.get("thing_dataset_id_to_contiguous_id", None) or {}
    return {
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        "class_names": list(class_names) if class_names else None,
        # the dataset's category id of each class index, when it has ids of its own
        "category_ids": [i for i, _ in sorted(id_map.items(), key=lambda item: item[1])] or None,
        "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
        "score_thresh_test": cfg.MODEL.RETINANET.SCORE_THRESH_TEST,
        "detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
    }


def sample_input(cfg: CfgNode, image_path: Optional[str] = None) -> torch.Tensor:
    """
    The image the model is traced with: ``image_path`` read in ``INPUT.FORMAT`` and resized as at
    test time, or a random image of the test size. What it shows does not matter: nothing in the
    traced graph depends on it (tests/export proves it with an image without detections).

    Returns:
        ``(3, H, W)`` uint8.
    """
    if image_path is None:
        size = cfg.INPUT.MIN_SIZE_TEST
        image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    else:
        image = read_image(image_path, cfg.INPUT.FORMAT)
        resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _trace(detector: ExportableDetector, sample: torch.Tensor) -> torch.jit.ScriptModule:
    with torch.no_grad():
        # check_trace re-runs the graph and compares outputs: NMS ties make that check flaky.
        return torch.jit.trace(detector, (sample,), check_trace=False)


def export_torchscript(
    detector: ExportableDetector, sample: torch.Tensor, path: str, metadata: Dict
) -> str:
    """
    Trace ``detector`` on ``sample`` and save it, with ``metadata`` as the extra file
    :data:`METADATA_KEY`.

    Returns:
        path.
    """
    traced = _trace(detector, sample)
    torch.jit.save(traced, path, _extra_files={METADATA_KEY: json.dumps(metadata)})
    return path


def export_onnx(
    detector: ExportableDetector, sample: torch.Tensor, path: str, metadata: Dict
) -> str:
    """
    Export ``detector`` to ONNX at opset :data:`ONNX_OPSET`, input "image" ``(3, height, width)``
    uint8 with dynamic height and width, outputs "boxes", "scores", "classes"; ``metadata`` is
    stored as the metadata property :data:`METADATA_KEY`.

    Returns:
        path.
    """
    import onnx

    with torch.no_grad():
        torch.onnx.export(
            detector,
            (sample,),
            path,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={
                INPUT_NAME: {1: "height", 2: "width"},
                **{name: {0: "detections"} for name in OUTPUT_NAMES},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    proto = onnx.load(path)
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata)})
    onnx.save(proto, path)
    return path


def export_model(
    cfg: CfgNode, export_format: str, output_dir: str, sample_image: Optional[str] = None
) -> str:
    """
    Build the model of ``cfg``, load ``MODEL.WEIGHTS`` and export it to ``output_dir``.

    Args:
        cfg: the model's config.
        export_format: "torchscript" or "onnx".
        output_dir: gets ``model.ts`` or ``model.onnx``.
        sample_image: the image to trace with (see :func:`sample_input`).

    Returns:
        the exported file's path.
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(
            f"Unknown export format {export_format!r}; choose one of {sorted(EXPORT_FORMATS)}."
        )
    if export_format == "onnx":
        _require_onnx()
    # Tracing records the eager operations; torch.compile's wrappers would only get in its way.
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.RETINANET_FL.COMPILE = False
    model = build_model(cfg)
    AtomicCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    detector = ExportableDetector(model)
    sample = sample_input(cfg, sample_image).to(model.device)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, EXPORT_FORMATS[export_format])
    export = export_torchscript if export_format == "torchscript" else export_onnx
    return export(detector, sample, path, export_metadata(cfg))


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "ONNX export needs the 'onnx' package: pip install -e '.[export]' (or make install)."
        ) from error

"""
Export a trained detector to ONNX (``model.onnx``), an ExportedProgram (``model.pt2``) or, as a
legacy format, TorchScript (``model.ts``), the whole inference path inside (see
:class:`ExportableDetector`), with the settings a runner needs stored in the file
(:func:`export_metadata`).

ONNX and ``.pt2`` go through ``torch.export`` (ONNX through PyTorch's ``torch.export``-based
exporter, ``torch.onnx.export(..., dynamo=True)``), with the image's height and width dynamic: one
file serves any image size and gives empty outputs, not an error, when nothing scores above the
threshold. TorchScript (``torch.jit.trace``), which PyTorch deprecates, traces the eager model.
"""

import copy
import json
import logging
import os
import warnings
from typing import Callable, Dict, Optional

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from torch import nn

from ..data.classes import metadata_for_inference
from ..data.mapper import read_image
from ..engine import AtomicCheckpointer
from .cpu import check_precision, has_bf16
from .files import write_atomically
from .wrapper import OUTPUT_NAMES, ExportableDetector, TracedDetector

__all__ = [
    "EXPORT_FORMATS",
    "ONNX_OPSET",
    "METADATA_KEY",
    "export_metadata",
    "sample_input",
    "export_program",
    "export_pt2",
    "export_onnx",
    "export_torchscript",
    "build_exportable",
    "export_model",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = {"onnx": "model.onnx", "pt2": "model.pt2", "torchscript": "model.ts"}
ONNX_OPSET = 18
# Name of the JSON metadata: an extra file of the .pt2 and TorchScript archives, a metadata_props
# key of ONNX.
METADATA_KEY = "retinanet_fl.json"
INPUT_NAME = "image"
# The smallest image side an exported graph takes (its sizes are symbolic from there up).
MIN_IMAGE_SIDE = 2


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
        "precision": "fp32",
    }


def sample_input(cfg: CfgNode, image_path: Optional[str] = None) -> torch.Tensor:
    """
    The image the model is exported with: ``image_path`` read in ``INPUT.FORMAT`` and resized as
    at test time, or a random image of the test size. What it shows does not matter: nothing in
    the exported graph depends on it (tests/export proves it with an image without detections).

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


def export_program(detector: ExportableDetector, sample: torch.Tensor):
    """
    ``torch.export`` of ``detector``, with the image's height and width dynamic.

    The weights are exported in the contiguous memory format: with channels-last weights (our
    default, faster in eager mode) a convolution's layout depends on whether a level is 1 pixel
    high or wide, which would tie the graph to images of more than 128 px. Sizes are reasoned
    about without specialising on 0 or 1 for the same reason.

    Returns:
        the ``torch.export.ExportedProgram``.
    """
    detector = copy.deepcopy(detector).to(memory_format=torch.contiguous_format)
    height = torch.export.Dim("height", min=MIN_IMAGE_SIDE)
    width = torch.export.Dim("width", min=MIN_IMAGE_SIDE)
    with torch.no_grad(), torch.fx.experimental._config.patch(backed_size_oblivious=True):
        return torch.export.export(
            detector, (sample,), dynamic_shapes={INPUT_NAME: {1: height, 2: width}}
        )


def export_pt2(
    detector: ExportableDetector, sample: torch.Tensor, path: str, metadata: Dict
) -> str:
    """
    Save ``detector`` as an ExportedProgram (``torch.export.save``), ``metadata`` as its extra
    file :data:`METADATA_KEY`; ``torch.export.load`` reads it back (``ep.module()(image)``).

    Returns:
        path.
    """
    program = export_program(detector, sample)
    extra_files = {METADATA_KEY: json.dumps(metadata)}
    return write_atomically(
        path, lambda tmp: torch.export.save(program, tmp, extra_files=extra_files)
    )


def export_onnx(
    detector: ExportableDetector, sample: torch.Tensor, path: str, metadata: Dict
) -> str:
    """
    Export ``detector`` to ONNX at opset :data:`ONNX_OPSET` with the ``torch.export``-based
    exporter: input "image" ``(3, height, width)`` uint8 with dynamic height and width, outputs
    "boxes", "scores", "classes"; ``metadata`` is stored as the metadata property
    :data:`METADATA_KEY`.

    Returns:
        path.
    """
    _require("onnx", "ONNX export")
    _require("onnxscript", "ONNX export (PyTorch's torch.export-based exporter)")
    program = export_program(detector, sample)
    onnx_program = torch.onnx.export(
        program,
        (sample,),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        opset_version=ONNX_OPSET,
        dynamo=True,
        verbose=False,
    )
    proto = onnx_program.model_proto
    set_onnx_metadata(proto, metadata)
    return write_onnx(proto, path)


def set_onnx_metadata(proto, metadata: Dict) -> None:
    """Store ``metadata`` as the ONNX model's metadata property :data:`METADATA_KEY`."""
    import onnx

    props = {p.key: p.value for p in proto.metadata_props}
    props[METADATA_KEY] = json.dumps(metadata)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)


def write_onnx(proto, path: str) -> str:
    """Save an ONNX model to ``path`` atomically (a temporary file, then a rename)."""
    import onnx

    return write_atomically(path, lambda tmp: onnx.save(proto, tmp))


def export_torchscript(model: nn.Module, sample: torch.Tensor, path: str, metadata: Dict) -> str:
    """
    Legacy: trace the eager model's inference (:class:`TracedDetector`) on ``sample`` with
    ``torch.jit.trace`` and save it, with ``metadata`` as the extra file :data:`METADATA_KEY`.
    PyTorch deprecates TorchScript; ``pt2`` is its successor. PyTorch's deprecation warnings are
    replaced by one log line that says so.

    Returns:
        path.
    """
    logger.warning(
        "TorchScript is a legacy format, deprecated by PyTorch: export --format pt2 (PyTorch) or "
        "--format onnx instead."
    )
    with torch.no_grad(), _torchscript_deprecation_silenced():
        # check_trace re-runs the graph and compares outputs: NMS ties make that check flaky.
        traced = torch.jit.trace(TracedDetector(model), (sample,), check_trace=False)
        extra_files = {METADATA_KEY: json.dumps(metadata)}
        return write_atomically(
            path, lambda tmp: torch.jit.save(traced, tmp, _extra_files=extra_files)
        )


class _torchscript_deprecation_silenced(warnings.catch_warnings):
    """PyTorch's "torch.jit.* is deprecated" warnings, which the legacy format calls for."""

    def __enter__(self):
        super().__enter__()
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated")
        return self


def build_exportable(cfg: CfgNode) -> nn.Module:
    """
    The eager model of ``cfg`` with ``MODEL.WEIGHTS`` loaded, in eval mode, uncompiled (an export
    records the eager operations; torch.compile's wrappers would only get in its way).
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.RETINANET_FL.COMPILE = False
    model = build_model(cfg)
    AtomicCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def export_model(
    cfg: CfgNode,
    export_format: str,
    output_dir: str,
    sample_image: Optional[str] = None,
    precision: str = "fp32",
) -> str:
    """
    Build the model of ``cfg``, load ``MODEL.WEIGHTS`` and export it to ``output_dir``.

    Args:
        cfg: the model's config.
        export_format: "onnx", "pt2" or "torchscript" (legacy).
        output_dir: gets ``model.onnx``, ``model.pt2`` (``model.bf16.pt2``) or ``model.ts``.
        sample_image: the image to export with (see :func:`sample_input`).
        precision: "fp32", or "bf16" (``pt2`` only: the backbone and head under bfloat16
            autocast, for CPUs with AVX-512 BF16 or AMX).

    Returns:
        the exported file's path.
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(
            f"Unknown export format {export_format!r}; choose one of {sorted(EXPORT_FORMATS)}."
        )
    if precision != "fp32":
        if export_format != "pt2":
            raise ValueError(
                f"{precision} runs in PyTorch: export it with --format pt2, not {export_format}."
            )
        check_precision(precision, flags=frozenset(["avx512_bf16"]))  # a known precision
        if not has_bf16():
            logger.warning(
                "This CPU has no native bfloat16 (neither AVX-512 BF16 nor AMX): the bf16 file is "
                "refused here; run it on a CPU that has one."
            )
    if export_format == "onnx":
        _require("onnx", "ONNX export")
        _require("onnxscript", "ONNX export (PyTorch's torch.export-based exporter)")
    model = build_exportable(cfg)
    sample = sample_input(cfg, sample_image).to(model.device)
    os.makedirs(output_dir, exist_ok=True)
    name = EXPORT_FORMATS[export_format]
    if precision != "fp32":
        name = name.replace(".", f".{precision}.")
    path = os.path.join(output_dir, name)
    metadata = {**export_metadata(cfg), "precision": precision}
    if export_format == "torchscript":
        return export_torchscript(model, sample, path, metadata)
    export: Callable = export_onnx if export_format == "onnx" else export_pt2
    return export(ExportableDetector(model, precision), sample, path, metadata)


def _require(module: str, purpose: str) -> None:
    try:
        __import__(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the '{module}' package, which is not installed: "
            "pip install -e '.[export]' (or make install)."
        ) from error

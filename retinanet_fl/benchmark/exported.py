"""
The exported models of the inference benchmark: ours exported by :mod:`retinanet_fl.export` at
each image size (TorchScript, ONNX), loaded as a deployment loads them (:class:`ExportedDetector`:
torch.jit, or ONNX Runtime's CPU execution provider with the benchmark's threads) and run one
image per call; and their section of the inference report.
"""

import importlib
import os
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from torch import nn

from ..export import (
    ONNX_OPSET,
    ExportableDetector,
    ExportedDetector,
    export_metadata,
    export_onnx,
    export_torchscript,
)
from .common import format_ms
from .results import (
    EXPORTED_STAGE,
    ONNXRUNTIME,
    OURS,
    TORCHSCRIPT,
    ExportedFile,
    ExportedSettings,
    InferenceResults,
)

__all__ = [
    "EXPORTED_MIN_WARMUP",
    "missing_packages",
    "exported_settings",
    "export_models",
    "exported_stages",
    "exported_lines",
]

# Exported model -> (the function of retinanet_fl.export that writes it, its file name).
_EXPORTERS = {
    TORCHSCRIPT: (export_torchscript, "model.ts"),
    ONNXRUNTIME: (export_onnx, "model.onnx"),
}
# Warm-up calls an exported model needs before it runs at its steady speed: TorchScript's
# profiling executor records the first call and optimises the graph during the second (measured:
# the first two calls take 1.5-1.7x a later one).
EXPORTED_MIN_WARMUP = 2
# The Python packages each exported model needs beyond PyTorch (the "export" extra).
_PACKAGES = {TORCHSCRIPT: (), ONNXRUNTIME: ("onnx", "onnxruntime")}


def missing_packages(models: Sequence[str]) -> List[str]:
    """
    Args:
        models: exported models to run (``TORCHSCRIPT``, ``ONNXRUNTIME``).

    Returns:
        The packages they need that cannot be imported here.
    """
    missing = []
    for package in (package for model in models for package in _PACKAGES[model]):
        try:
            importlib.import_module(package)
        except ImportError:
            missing.append(package)
    return missing


def exported_settings(models: Sequence[str], threads: int) -> ExportedSettings:
    """
    Args:
        models: the exported models that run.
        threads: the benchmark's torch threads, also given to ONNX Runtime's intra-op pool.

    Returns:
        How they are made and run, as the results record it.
    """
    onnx = ONNXRUNTIME in models
    return ExportedSettings(
        models=list(models),
        onnx_opset=ONNX_OPSET if onnx else None,
        onnxruntime_version=importlib.import_module("onnxruntime").__version__ if onnx else None,
        onnxruntime_intra_op_threads=threads if onnx else None,
        what="our model exported by retinanet_fl.export at each image size (the same weights), the "
        "whole detector in one file (normalisation to class-wise NMS), loaded with "
        "retinanet_fl.export.ExportedDetector and called with one uint8 image at a time (a batch "
        f"of N is N calls), after at least {EXPORTED_MIN_WARMUP} warm-up calls (TorchScript's "
        "profiling executor optimises the graph during the second)",
    )


def export_models(
    model: nn.Module,
    cfg: CfgNode,
    sample: torch.Tensor,
    models: Sequence[str],
    threads: int,
    image_size: int,
) -> Tuple[Dict[str, ExportedDetector], List[ExportedFile]]:
    """
    Export ``model`` to each of ``models`` in a temporary folder and load it from its file.

    Args:
        model: our eager model, in eval mode, on the CPU.
        cfg: its config (the files' metadata).
        sample: a ``(3, S, S)`` uint8 image to trace with (nothing in the graph depends on it).
        models: ``TORCHSCRIPT`` and/or ``ONNXRUNTIME``.
        threads: ONNX Runtime's intra-op threads.
        image_size: S, recorded with each file.

    Returns:
        Exported model -> the loaded detector, and each file's size and export and load times.
    """
    detector = ExportableDetector(model)
    metadata = export_metadata(cfg)
    loaded, files = {}, []
    with tempfile.TemporaryDirectory() as directory:
        for name in models:
            export, file_name = _EXPORTERS[name]
            path = os.path.join(directory, file_name)
            start = time.perf_counter()
            # Tracing warns about every Python value it freezes; the export tests check that the
            # graph is right at other sizes, so here the warnings are only noise.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                export(detector, sample, path, metadata)
            export_s = time.perf_counter() - start
            start = time.perf_counter()
            loaded[name] = ExportedDetector(path, intra_op_threads=threads)
            load_s = time.perf_counter() - start
            files.append(ExportedFile(image_size, name, os.path.getsize(path), export_s, load_s))
    return loaded, files


def exported_stages(
    detector: ExportedDetector, images: Sequence[torch.Tensor]
) -> List[Tuple[str, Callable]]:
    """
    An exported model's forward on a batch, as the one stage ``EXPORTED_STAGE`` (its graph runs
    backbone, head and post-processing in one call, which cannot be timed apart).

    Args:
        detector: the loaded exported model.
        images: ``(3, H, W)`` uint8 images; one call each.

    Returns:
        [(EXPORTED_STAGE, stage)]; the stage returns each image's (boxes, scores, classes).
    """

    def forward(_):
        return [detector(image) for image in images]

    return [(EXPORTED_STAGE, forward)]


def exported_lines(results: InferenceResults) -> List[str]:
    """
    The inference report's section on the exported models (none when none ran): how they ran,
    their time per image against ours, and their files.
    """
    exported = results.settings.exported
    if exported is None:
        return []
    how = (
        f"Exported models: {exported.what}. `{TORCHSCRIPT}`: the traced `model.ts` in torch.jit, "
        f"on the benchmark's {results.settings.threads} torch threads."
    )
    if ONNXRUNTIME in exported.models:
        how += (
            f" `{ONNXRUNTIME}`: `model.onnx` (ONNX opset {exported.onnx_opset}) in ONNX Runtime "
            f"{exported.onnxruntime_version}, CPU execution provider, "
            f"{exported.onnxruntime_intra_op_threads} intra-op threads (the benchmark's torch "
            "threads, so that both runtimes have the same cores), other session options at "
            "their defaults. Its memory is n/a and it is not profiled: it allocates from its own "
            "arena, kept between calls, which neither memory measure sees."
        )
    how += " They run on the same images, in the same interleaved rounds, as the eager models."
    lines = [
        "## Exported models",
        "",
        how,
        "",
        "| image px | batch | precision | ours ms / image | "
        + " | ".join(f"{name} ms / image | {name} / ours time" for name in exported.models)
        + " |",
        "|---:|---:|---|---:|" + "---:|---:|" * len(exported.models),
    ]
    for e in results.entries:
        ratios = e.time_ratio_exported_vs_ours or {}
        cells = [
            f"{format_ms(e.latency_per_image_s[name])} | {ratios[name]:.3f}"
            for name in exported.models
        ]
        lines.append(
            f"| {e.image_size} | {e.batch_size} | {e.precision} | "
            f"{format_ms(e.latency_per_image_s[OURS])} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "| image px | model | file MiB | export s | load s |",
        "|---:|---|---:|---:|---:|",
    ]
    for f in results.exported_files or []:
        lines.append(
            f"| {f.image_size} | {f.model} | {f.file_bytes / 2**20:.1f} | {f.export_s:.1f} | "
            f"{f.load_s:.2f} |"
        )
    return lines + [""]

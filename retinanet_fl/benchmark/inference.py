"""
The ``inference`` benchmark: latency per image and images per second of
:class:`FocalLossRetinaNet`, Detectron2's ``RetinaNet`` (the same config and weights),
torchvision's ``retinanet_resnet50_fpn(weights=None, weights_backbone=None)`` and ours exported to
TorchScript and ONNX (:mod:`.exported`), with a split of the eager models into backbone (with
pre-processing), head, and post-processing (anchors, decoding, NMS, rescaling), and peak memory.
Settings that miss a time target are profiled.
"""

import time
from contextlib import nullcontext
from dataclasses import asdict
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from detectron2.modeling.postprocessing import detector_postprocess
from torch import nn

from .common import finish_model_results, machine_info, medians, synchronize, time_interleaved
from .exported import EXPORTED_MIN_WARMUP, export_models, exported_settings, exported_stages
from .fixtures import (
    ModelOptions,
    build_detectron2_pair,
    build_torchvision_retinanet,
    detectron2_retinanet_cfg,
    make_batch,
)
from .results import (
    DETECTRON2,
    EXPORTED_MODELS,
    ONNXRUNTIME,
    OURS,
    STAGES,
    TORCHVISION,
    ExportedFile,
    InferenceEntry,
    InferenceResults,
    InferenceSettings,
)
from .targets import inference_targets

__all__ = [
    "STAGES",
    "dense_detector_stages",
    "torchvision_stages",
    "InferenceStep",
    "inference_steps",
    "benchmark_inference",
]

Stages = List[Tuple[str, Callable]]


def dense_detector_stages(model: nn.Module, inputs: List[Dict]) -> Stages:
    """
    The inference forward of a Detectron2 ``DenseDetector`` (ours and Detectron2's RetinaNet),
    cut into :data:`STAGES`: each stage is a callable of the previous stage's output, and the
    last one returns what ``model(inputs)`` returns.

    Args:
        model: the detector, in eval mode.
        inputs: its inputs (dicts with ``"image"``).

    Returns:
        (stage name, stage) pairs, in order.
    """

    def backbone(_):
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        return images, [features[name] for name in model.head_in_features]

    def head(state):
        images, features = state
        return images, features, model.head(features)

    def postprocess(state):
        images, features, predictions = state
        results = model.forward_inference(images, features, predictions)
        return [
            {
                "instances": detector_postprocess(
                    result, inp.get("height", image_size[0]), inp.get("width", image_size[1])
                )
            }
            for result, inp, image_size in zip(results, inputs, images.image_sizes)
        ]

    return list(zip(STAGES, (backbone, head, postprocess)))


def torchvision_stages(model: nn.Module, images: List[torch.Tensor]) -> Stages:
    """
    torchvision's ``RetinaNet`` inference forward cut into :data:`STAGES`, as
    :func:`dense_detector_stages` cuts Detectron2's.

    Args:
        model: torchvision's ``RetinaNet``, in eval mode.
        images: float ``(3, H, W)`` images in [0, 1].

    Returns:
        (stage name, stage) pairs, in order; the last returns what ``model(images)`` returns.
    """
    original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]

    def backbone(_):
        image_list, _ = model.transform(images)
        return image_list, list(model.backbone(image_list.tensors).values())

    def head(state):
        image_list, features = state
        return image_list, features, model.head(features)

    def postprocess(state):
        image_list, features, head_outputs = state
        anchors = model.anchor_generator(image_list, features)
        # Per-level sizes of the concatenated outputs, as torchvision's forward splits them.
        num_locations = [feature.shape[-2] * feature.shape[-1] for feature in features]
        anchors_per_location = head_outputs["cls_logits"].shape[1] // sum(num_locations)
        split = [n * anchors_per_location for n in num_locations]
        split_outputs = {
            key: list(value.split(split, dim=1)) for key, value in head_outputs.items()
        }
        split_anchors = [list(image_anchors.split(split)) for image_anchors in anchors]
        detections = model.postprocess_detections(
            split_outputs, split_anchors, image_list.image_sizes
        )
        return model.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    return list(zip(STAGES, (backbone, head, postprocess)))


class InferenceStep:
    """One inference forward under ``no_grad``, run stage by stage; records each stage's time."""

    def __init__(self, stages: Stages, device: torch.device, amp: bool):
        """
        Args:
            stages: the forward, stage by stage.
            device: synchronized after every stage.
            amp: whether to run under autocast.
        """
        self.stages = stages
        self.device = device
        self.amp = amp
        self.stage_times: Dict[str, List[float]] = {name: [] for name, _ in stages}

    def __call__(self) -> object:
        """Run the forward once; returns the model's outputs."""
        autocast = torch.autocast(self.device.type, enabled=True) if self.amp else nullcontext()
        state = None
        with torch.no_grad(), autocast:
            for name, stage in self.stages:
                start = time.perf_counter()
                state = stage(state)
                synchronize(self.device)
                self.stage_times[name].append(time.perf_counter() - start)
        return state


def inference_steps(
    models: Dict[str, object], batch: List[Dict], device: torch.device, amp: bool
) -> Dict[str, InferenceStep]:
    """
    A staged inference forward of each model on the same images.

    Args:
        models: model name -> model in eval mode (an ``ExportedDetector`` for the names in
            ``EXPORTED_MODELS``).
        batch: from :func:`.fixtures.make_batch`.
        device: the models' device.
        amp: whether to run under autocast.

    Returns:
        Model name -> its step.
    """
    steps = {}
    for name, model in models.items():
        if name == TORCHVISION:
            # torchvision takes float images in [0, 1] and normalises them itself.
            images = [x["image"].float() / 255 for x in batch]
            stages = torchvision_stages(model, images)
        elif name in EXPORTED_MODELS:
            stages = exported_stages(model, [x["image"] for x in batch])
        else:
            stages = dense_detector_stages(model, [{"image": x["image"]} for x in batch])
        steps[name] = InferenceStep(stages, device, amp)
    return steps


def benchmark_inference(
    options: ModelOptions,
    *,
    batch_sizes: List[int],
    score_thresh: float,
    torchvision: bool,
    exported: Sequence[str] = (),
) -> InferenceResults:
    """
    Run the inference benchmark: every (image size, batch size, precision).

    Args:
        options: what to build and how to measure (sets the torch threads).
        batch_sizes: images per forward; one setting each.
        score_thresh: every model's score threshold.
        torchvision: whether to compare with torchvision's RetinaNet too.
        exported: exported copies of ours to compare too (some of ``EXPORTED_MODELS``; CPU only:
            they run on the CPU whatever the device), with ONNX Runtime on ``options.threads``.

    Returns:
        Every measurement, with the targets evaluated.
    """
    if exported and options.device != "cpu":
        raise ValueError(
            f"Exported models run on the CPU; they cannot be compared on {options.device!r}."
        )
    torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    torchvision_model = None
    if torchvision:
        torchvision_model = (
            "retinanet_resnet50_fpn(weights=None, weights_backbone=None)"
            if options.depth == 50
            else f"RetinaNet(resnet_fpn_backbone('resnet{options.depth}'))"
        )
    results = InferenceResults(
        benchmark="inference",
        machine=machine_info(device),
        settings=InferenceSettings(
            **asdict(options.settings()),
            batch_sizes=list(batch_sizes),
            score_thresh=score_thresh,
            torchvision_model=torchvision_model,
            what="no_grad forward: backbone (with pre-processing), head, post-processing "
            "(anchors, decoding, NMS, rescaling)",
            exported=exported_settings(exported, options.threads) if exported else None,
        ),
        entries=[],
        exported_files=[] if exported else None,
    )
    all_steps = []
    for size_index, image_size in enumerate(options.image_sizes):
        models, files = _build_models(
            options, image_size, score_thresh, torchvision, exported, size_index
        )
        if exported:
            results.exported_files += files
        for batch_size in batch_sizes:
            for precision in options.precisions:
                seed = options.seed + 100 * size_index + batch_size
                batch = make_batch(batch_size, image_size, options.num_classes, 0, seed, device)
                steps = inference_steps(models, batch, device, amp=precision == "amp")
                results.entries.append(
                    _measure_setting(steps, options, image_size, batch_size, precision, seed)
                )
                all_steps.append(steps)
    # Where no time target is missed, profile the largest image size at the smallest batch.
    default_profile = max(
        range(len(results.entries)),
        key=lambda i: (
            results.entries[i].image_size,
            -results.entries[i].batch_size,
            results.entries[i].precision == "fp32",
        ),
    )
    finish_model_results(
        results,
        all_steps,
        inference_targets,
        default_profile,
        options.profile,
        options.memory_repeats,
        # PyTorch's profiler and allocator do not see ONNX Runtime's work.
        untracked=(ONNXRUNTIME,),
    )
    return results


def _build_models(
    options: ModelOptions,
    image_size: int,
    score_thresh: float,
    torchvision: bool,
    exported: Sequence[str],
    size_index: int,
) -> Tuple[Dict[str, object], List[ExportedFile]]:
    """
    The compared models for one image size, in eval mode.

    Args:
        options: what to build.
        image_size: side of the images (torchvision's transform is sized to it).
        score_thresh: every model's score threshold.
        torchvision: whether to build torchvision's RetinaNet too.
        exported: the exported copies of ours to build.
        size_index: index of the image size; offsets the seed of the weights.

    Returns:
        Model name -> model, and the exported files' records.
    """
    cfg = detectron2_retinanet_cfg(
        options.depth, options.num_classes, score_thresh, options.loss_kernel, options.device
    )
    models = build_detectron2_pair(cfg, options.seed + size_index, image_size, options.ours_opts)
    if torchvision:
        models[TORCHVISION] = build_torchvision_retinanet(
            options.depth,
            options.num_classes,
            image_size,
            score_thresh,
            cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST,
            cfg.MODEL.RETINANET.NMS_THRESH_TEST,
            cfg.TEST.DETECTIONS_PER_IMAGE,
        ).to(options.device)
    models = {name: model.eval() for name, model in models.items()}
    files = []
    if exported:
        # The image to trace with: a noise image of this size, as the benchmark's inputs are.
        sample = make_batch(1, image_size, 1, 0, options.seed + size_index, options.device)
        loaded, files = export_models(
            models[OURS], cfg, sample[0]["image"], exported, options.threads, image_size
        )
        models.update(loaded)
    return models, files


def _num_detections(name: str, outputs: List[Dict]) -> List[int]:
    """Detections of each image in a model's outputs (torchvision's, Detectron2's or exported)."""
    if name == TORCHVISION:
        return [len(output["boxes"]) for output in outputs]
    if name in EXPORTED_MODELS:
        return [len(scores) for _, scores, _ in outputs]
    return [len(output["instances"]) for output in outputs]


def _measure_setting(
    steps: Dict[str, InferenceStep],
    options: ModelOptions,
    image_size: int,
    batch_size: int,
    precision: str,
    seed: int,
) -> InferenceEntry:
    """
    Time one setting: warm-up calls (the first one's detections counted; exported models get at
    least ``EXPORTED_MIN_WARMUP``), then interleaved calls.

    Args:
        steps: each model's forward on the setting's batch.
        options: warm-up and measured iterations, device.
        image_size: side of the images.
        batch_size: images per forward.
        precision: "fp32" or "amp".
        seed: of the shuffles.

    Returns:
        The setting's timings (memory and targets not yet filled in).
    """
    first_call_s, num_detections = {}, {}
    for warmup_index in range(max(options.warmup, EXPORTED_MIN_WARMUP)):
        for name, step in steps.items():
            if warmup_index >= options.warmup and name not in EXPORTED_MODELS:
                continue
            start = time.perf_counter()
            outputs = step()
            if warmup_index == 0:
                first_call_s[name] = time.perf_counter() - start
                num_detections[name] = _num_detections(name, outputs)
            del outputs
    for step in steps.values():
        step.stage_times = {stage: [] for stage in step.stage_times}
    times = time_interleaved(steps, options.iters, torch.device(options.device), seed=seed)
    median_s = medians(times)
    entry = InferenceEntry(
        image_size=image_size,
        batch_size=batch_size,
        precision=precision,
        first_call_s=first_call_s,
        detections_per_image=num_detections,
        times_s=times,
        median_s=median_s,
        latency_per_image_s={name: median / batch_size for name, median in median_s.items()},
        images_per_s={name: batch_size / median for name, median in median_s.items()},
        stage_median_s={name: medians(step.stage_times) for name, step in steps.items()},
        time_ratio_ours_vs_detectron2=median_s[OURS] / median_s[DETECTRON2],
        time_ratio_ours_vs_torchvision=(
            median_s[OURS] / median_s[TORCHVISION] if TORCHVISION in median_s else None
        ),
        time_ratio_exported_vs_ours={
            name: median_s[name] / median_s[OURS] for name in EXPORTED_MODELS if name in median_s
        }
        or None,
    )
    print(
        f"inference {image_size} px, batch {batch_size}, {precision}: "
        + ", ".join(f"{name} {median:.3f} s" for name, median in median_s.items()),
        flush=True,
    )
    return entry

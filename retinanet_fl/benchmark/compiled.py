"""
The ``compile`` benchmark: our model with ``MODEL.RETINANET_FL.COMPILE`` (backbone and head through
``torch.compile``) against the same weights eager, over images of COCO-like sizes (Detectron2's
resizing: a short side drawn from a range, aspect ratios 1:2 to 2:1, the long side capped), in
inference (an image per call) and in training (an iteration per call: forward with losses,
backward, SGD step, on a batch that the model pads to one size, as Detectron2 does). The first pass
over the calls shows which ones compile and what that costs; later passes give the steady-state
speed, and the two give the break-even number of calls.
"""

import math
import random
import time
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch._dynamo
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn
from torch._inductor.utils import fresh_cache

from .common import machine_info, medians, record_load, synchronize
from .fixtures import build_detectron2_pair, detectron2_retinanet_cfg, make_image
from .results import (
    COMPILED,
    EAGER,
    INFERENCE,
    OURS,
    TRAIN,
    CompileEntry,
    CompileMode,
    CompileResults,
)
from .train import TrainStep

__all__ = [
    "COMPILE_KEY",
    "coco_like_sizes",
    "coco_like_batches",
    "graph_count",
    "benchmark_compile",
]

NUM_BOXES = 8  # GT boxes per training image, as in the train benchmark
# What one call of each mode does, as the report says it.
WHAT = {
    INFERENCE: "forward with post-processing, no gradients, one image",
    TRAIN: "forward (labelling, losses) + backward + SGD step (Detectron2's build_optimizer: "
    f"momentum 0.9, weight decay 1e-4, lr 0.001), {NUM_BOXES} random GT boxes per image; images "
    "batched by orientation, as Detectron2's aspect-ratio grouping batches them",
}
COMPILE_KEY = "MODEL.RETINANET_FL.COMPILE"
# A call of a model on a batch; returns the losses of a training iteration, None in inference.
Call = Callable[[List[Dict]], Optional[Dict[str, float]]]


def coco_like_sizes(
    num_images: int, min_short_side: int, max_short_side: int, max_size: int, seed: int
) -> List[Tuple[int, int]]:
    """
    Args:
        num_images: how many sizes.
        min_short_side, max_short_side: the short side is drawn uniformly from this range.
        max_size: cap of the long side (the short side shrinks with it, keeping the aspect).
        seed: of the draw.

    Returns:
        ``num_images`` (height, width) pairs; aspect ratios log-uniform in [1/2, 2].
    """
    rng = random.Random(seed)
    sizes = []
    for _ in range(num_images):
        short = rng.randint(min_short_side, max_short_side)
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        long = short * max(aspect, 1 / aspect)
        scale = min(1.0, max_size / long)
        short, long = round(short * scale), round(long * scale)
        sizes.append((short, long) if aspect >= 1 else (long, short))
    return sizes


def coco_like_batches(
    num_batches: int,
    batch_size: int,
    min_short_side: int,
    max_short_side: int,
    max_size: int,
    seed: int,
) -> List[List[Tuple[int, int]]]:
    """
    Batches of :func:`coco_like_sizes`, grouped as Detectron2's ``AspectRatioGroupedDataset``
    groups a training stream: landscape images with landscape ones, portrait with portrait, a
    batch as soon as its group is full.

    Args:
        num_batches, batch_size: how many batches, of how many images.
        min_short_side, max_short_side, max_size, seed: see :func:`coco_like_sizes`.

    Returns:
        ``num_batches`` lists of (height, width); at batch size 1, the sizes of
        :func:`coco_like_sizes` in order.
    """
    # Each of the two groups leaves fewer than batch_size images out of the batches.
    num_images = num_batches * batch_size + 2 * (batch_size - 1)
    groups: Dict[bool, List[Tuple[int, int]]] = {True: [], False: []}
    batches = []
    for height, width in coco_like_sizes(
        num_images, min_short_side, max_short_side, max_size, seed
    ):
        group = groups[width > height]
        group.append((height, width))
        if len(group) == batch_size:
            batches.append(group.copy())
            group.clear()
    return batches[:num_batches]


def graph_count() -> int:
    """Graphs torch.compile has built in this process (dynamo's counter)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _uncompiled_frame_count() -> int:
    frames = torch._dynamo.utils.counters["frames"]
    return int(frames["total"] - frames["ok"])


def _build_models(
    cfg: CfgNode, seed: int, calibration_size: int, ours_opts: Sequence[str]
) -> Dict[str, nn.Module]:
    """Our model eager and compiled, with ``ours_opts`` and the same (calibrated) weights."""
    eager = build_detectron2_pair(cfg, seed, calibration_size, ours_opts)[OURS]
    compiled_cfg = cfg.clone()
    compiled_cfg.MODEL.META_ARCHITECTURE = "FocalLossRetinaNet"
    compiled_cfg.merge_from_list([*ours_opts, COMPILE_KEY, "True"])
    compiled = build_model(compiled_cfg)
    compiled.load_state_dict(eager.state_dict())
    return {EAGER: eager, COMPILED: compiled}


def _compile_loss_kernel(model: nn.Module) -> None:
    """
    Compile the classification loss (``LOSS_KERNEL "compiled"``: one graph for every number of
    anchors) before the timings: both models share it, and it is not part of what ``COMPILE``
    costs, but the eager model, called first, would compile it in its first iteration.
    """
    num_logits, device = model.num_classes + int(model.background_logit), model.device
    logits = torch.zeros(1, 64, num_logits, device=device, requires_grad=True)
    labels = torch.full((1, 64), model.num_classes, device=device)
    labels[0, 0] = 0  # one foreground anchor
    loss = model.cls_loss(logits, labels, torch.zeros(64, 4, device=device))
    torch.autograd.grad(loss, logits)


def _inference_call(model: nn.Module, amp: bool) -> Call:
    model.eval()

    def call(batch: List[Dict]) -> None:
        with torch.no_grad(), torch.autocast(model.device.type, enabled=amp):
            model(batch)

    return call


def _train_call(step: TrainStep) -> Call:
    def call(batch: List[Dict]) -> Dict[str, float]:
        step(batch)
        return step.last_losses

    return call


def _padded(sizes: List[Tuple[int, int]], divisibility: int) -> Tuple[int, int]:
    """The batch's size as Detectron2's ``ImageList`` pads it: the largest side, rounded up."""
    return tuple(
        math.ceil(max(size[axis] for size in sizes) / divisibility) * divisibility
        for axis in (0, 1)
    )


def _max_relative_difference(pairs: List[Tuple[Dict[str, float], Dict[str, float]]]) -> float:
    """The largest |compiled − eager| / |eager| over the (eager, compiled) losses of each call."""
    return max(
        abs(compiled[name] - eager[name]) / max(abs(eager[name]), 1e-12)
        for eager, compiled in pairs
        for name in eager
    )


def _time_mode(
    mode: str,
    calls: Dict[str, Call],
    batches: List[List[Tuple[int, int]]],
    inputs: List[List[Dict]],
    steady_repeats: int,
    divisibility: int,
) -> CompileMode:
    """
    Time the first pass (each call eager, then compiled), then ``steady_repeats`` passes in
    alternating order; both models get the same batches in the same order, so in training they
    take the same steps.

    Args:
        mode: one of ``COMPILE_MODES``.
        calls: ``{EAGER: call, COMPILED: call}``.
        batches: the (height, width) of each call's images.
        inputs: each call's batch, of those sizes.
        steady_repeats: passes after the first one.
        divisibility: the backbone's; the batches are padded to a multiple of it.

    Returns:
        The mode's results.
    """
    device = inputs[0][0]["image"].device

    def timed(name: str, batch: List[Dict]) -> Tuple[float, Optional[Dict[str, float]]]:
        synchronize(device)
        start = time.perf_counter()
        losses = calls[name](batch)
        synchronize(device)
        return time.perf_counter() - start, losses

    entries, losses = [], []
    for sizes, batch in zip(batches, inputs):
        eager_s, eager_losses = timed(EAGER, batch)
        graphs_before = graph_count()
        compiled_s, compiled_losses = timed(COMPILED, batch)
        graphs = graph_count() - graphs_before
        padded = _padded(sizes, divisibility)
        entries.append(CompileEntry([list(s) for s in sizes], *padded, eager_s, compiled_s, graphs))
        if eager_losses is not None:
            losses.append((eager_losses, compiled_losses))
    steady: Dict[str, List[float]] = {EAGER: [], COMPILED: []}
    graphs_before = graph_count()
    for repeat in range(steady_repeats):
        for index, batch in enumerate(inputs):
            order = [EAGER, COMPILED] if (repeat + index) % 2 == 0 else [COMPILED, EAGER]
            for name in order:
                steady[name].append(timed(name, batch)[0])
    median_s = medians(steady)
    overhead = sum(e.compiled_s - e.eager_s for e in entries if e.compiled_graphs > 0)
    saving = median_s[EAGER] - median_s[COMPILED]
    return CompileMode(
        mode=mode,
        what=WHAT[mode],
        batch_size=len(batches[0]),
        entries=entries,
        steady_times_s=steady,
        steady_compiled_graphs=graph_count() - graphs_before,
        steady_ratio_compiled_vs_eager=median_s[COMPILED] / median_s[EAGER],
        compile_overhead_s=overhead,
        break_even_calls=overhead / saving if saving > 0 else None,
        uncompiled_frames=_uncompiled_frame_count(),
        max_loss_relative_difference=_max_relative_difference(losses) if losses else None,
    )


def _measure_mode(
    mode: str,
    cfg: CfgNode,
    batches: List[List[Tuple[int, int]]],
    *,
    steady_repeats: int,
    amp: bool,
    ours_opts: Sequence[str],
    fresh_compile_cache: bool,
    seed: int,
) -> CompileMode:
    """Build the models and inputs of one mode and time them; see :func:`benchmark_compile`."""
    calibration_size = min(min(size) for batch in batches for size in batch)
    models = _build_models(cfg, seed, calibration_size, ours_opts)
    device = models[EAGER].device
    generator = torch.Generator().manual_seed(seed)
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
    inputs = [
        [make_image(h, w, num_classes, NUM_BOXES, generator, device) for h, w in batch]
        for batch in batches
    ]
    # A new cache per mode: the training graphs would otherwise find kernels of the inference ones.
    with fresh_cache() if fresh_compile_cache else nullcontext():
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        if mode == TRAIN:
            _compile_loss_kernel(models[EAGER])
            calls = {
                name: _train_call(TrainStep(model, cfg, inputs[0], device, amp))
                for name, model in models.items()
            }
        else:
            calls = {name: _inference_call(model, amp) for name, model in models.items()}
        divisibility = models[EAGER].backbone.size_divisibility
        return _time_mode(mode, calls, batches, inputs, steady_repeats, divisibility)


def benchmark_compile(
    *,
    depth: int,
    modes: Sequence[str],
    num_calls: int,
    train_batch_size: int,
    size_range: Tuple[int, int, int],
    steady_repeats: int,
    amp: bool,
    ours_opts: Sequence[str],
    fresh_compile_cache: bool,
    device: str,
    seed: int,
) -> CompileResults:
    """
    Time the eager and the compiled model call by call (the same weights and inputs).

    Args:
        depth: ResNet depth.
        modes: some of ``COMPILE_MODES``.
        num_calls: calls per pass: images in inference (batch 1), iterations in training.
        train_batch_size: images per training iteration.
        size_range: (min short side, max short side, max size) of :func:`coco_like_sizes`.
        steady_repeats: passes over the calls after the first one.
        amp: run under autocast (bf16 on the CPU, fp16 on CUDA); else fp32.
        ours_opts: config overrides of both models, ``KEY VALUE`` strings.
        fresh_compile_cache: compile every mode into an empty inductor cache; else into the
            on-disk one.
        device: "cpu" or "cuda".
        seed: of the weights, the sizes and the images.

    Returns:
        The results.
    """
    cfg = detectron2_retinanet_cfg(depth, 80, 0.05, "compiled", device)
    ours_cfg = cfg.clone()
    ours_cfg.merge_from_list(list(ours_opts))
    machine = machine_info(torch.device(device))
    results = [
        _measure_mode(
            mode,
            cfg,
            coco_like_batches(
                num_calls, train_batch_size if mode == TRAIN else 1, *size_range, seed
            ),
            steady_repeats=steady_repeats,
            amp=amp,
            ours_opts=ours_opts,
            fresh_compile_cache=fresh_compile_cache,
            seed=seed,
        )
        for mode in modes
    ]
    record_load(machine)
    return CompileResults(
        benchmark="compile",
        machine=machine,
        config=f"Detectron2 COCO-Detection/retinanet_R_50_FPN_1x.yaml, RESNETS.DEPTH {depth}"
        + (f", with `{' '.join(ours_opts)}`" if ours_opts else ""),
        channels_last=ours_cfg.MODEL.RETINANET_FL.CHANNELS_LAST,
        precision="amp" if amp else "fp32",
        fresh_compile_cache=fresh_compile_cache,
        recompile_limit=torch._dynamo.config.recompile_limit,
        min_short_side=size_range[0],
        max_short_side=size_range[1],
        max_size=size_range[2],
        steady_repeats=steady_repeats,
        modes=results,
    )

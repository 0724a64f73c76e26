#!/usr/bin/env python
"""
Times our FocalLossRetinaNet against Detectron2's RetinaNet and torchvision's, in one run:

    python tools/benchmark.py                                  # every part, on the CPU
    python tools/benchmark.py --parts train inference --image-sizes 512 --repeats 5
    python tools/benchmark.py --device cuda --parts train inference table1e compile

Parts: ``losses`` (the classification loss alone, forward and backward, against fvcore's and
torchvision's), ``train`` (a training iteration), ``inference`` (a forward with post-processing),
``exported`` (ours exported to ONNX, ``.pt2`` and legacy TorchScript and run from the files),
``table1e`` (the paper's Table 1e sizes, R-50/R-101-FPN), ``compile``
(``MODEL.RETINANET_FL.COMPILE`` against eager over COCO-like sizes) and ``deploy`` (CPU, an image
at batch 1: Detectron2's eager fp32 against ours eager fp32 and bf16, fp32 and int8 ONNX, with
each form's AP; see ``tools/benchmark_deploy.py``) and ``successors`` (a training iteration and
an inference of each row of the successors table, ATSS, QFL and VFL, against FL's; see
``tools/benchmark_successors.py``). The models are Detectron2's RetinaNet
R-50-FPN config with random weights (batch norms calibrated so that activations keep a trained
network's scale); ours is the same config with ``MODEL.META_ARCHITECTURE`` changed, holding
Detectron2's weights.

Every measured call (a *step*) is built and warmed up first; then each round runs every step of
every part once, in a shuffled order, so that a change of load hits all of them alike. A setting's
ratios are taken between its steps (medians; and the quartiles of the per-round ratios, a measure
of the noise). Peak memory is measured after every timing, since measuring it changes how glibc
allocates. The table is printed and written to ``OUTPUT_DIR/benchmark.md``, every measurement as
plain JSON to ``benchmark.json``. The targets and what the figures mean: docs/BENCHMARKS.md.
"""

import argparse
import ctypes
import dataclasses
import datetime
import functools
import gc
import itertools
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

PARTS = ("losses", "train", "inference", "exported", "table1e", "compile", "deploy", "successors")
# Detectron2's model-zoo config that every benchmarked model is built from.
CONFIG_FILE = "COCO-Detection/retinanet_R_50_FPN_1x.yaml"
LOSS_METHODS = ("ours_compiled", "ours_eager", "fvcore_jit", "fvcore", "torchvision", "logits_copy")
# depth -> short side -> (test-dev AP, ms per image on an M40), the paper's Table 1e.
PAPER_TABLE_1E = {
    50: {400: (30.5, 64), 500: (32.5, 72), 600: (34.3, 98), 700: (35.1, 121), 800: (35.7, 153)},
    101: {400: (31.9, 81), 500: (34.4, 90), 600: (36.0, 122), 700: (37.1, 154), 800: (37.8, 198)},
}
TABLE_1E_REFERENCE = 600  # Table 1e's times are also given relative to this size's
NUM_BOXES = 8  # GT boxes per training image
# TorchScript's profiling executor optimises the graph during the second call (the first two take
# 1.5-1.7x a later one), so the exported models get at least this many warm-up calls.
EXPORTED_MIN_WARMUP = 2
MIB = 2**20


@dataclasses.dataclass
class Case:
    """
    One setting of a part: its steps, timed against each other, and what else was measured.

    Attributes:
        part: one of ``PARTS``.
        setting: e.g. "512 px, batch 2, fp32".
        steps: name -> a call to time (a training iteration, a forward, ...).
        pairs: (a, b) of the steps whose time ratio a / b is reported.
        info: measurements besides the timings (detections, files, compiles, the paper's numbers).
        summarize: what of a step's first output to keep (losses, detections), or None.
        memory: whether the steps' peak memory is measured.
        untracked: steps whose memory PyTorch does not see (ONNX Runtime's own arena).
        warmup: warm-up calls of each step, at least; the run's ``--warmup`` if larger.
    """

    part: str
    setting: str
    steps: Dict[str, Callable[[], Any]]
    pairs: List[Tuple[str, str]]
    info: Dict[str, Any] = dataclasses.field(default_factory=dict)
    summarize: Optional[Callable[[Any], Any]] = None
    memory: bool = True
    untracked: Tuple[str, ...] = ()
    warmup: int = 1


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a CUDA device (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def detectron2_cfg(depth: int, num_classes: int, device: str, score_thresh: float = 0.05):
    """
    Returns:
        Detectron2's RetinaNet R-50-FPN config with our keys, random weights, ``depth`` for the
        ResNet, ``num_classes`` classes and ``score_thresh`` at test time, on ``device``.
    """
    from detectron2 import model_zoo

    from retinanet_fl.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(CONFIG_FILE))
    cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE, cfg.MODEL.RESNETS.DEPTH = "", device, depth
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = score_thresh
    # Small, so that many iterations on one batch from random weights stay finite.
    cfg.SOLVER.BASE_LR = 0.001
    return cfg


def calibrate_batch_norms(backbone_forward: Callable[[], Any], model: nn.Module) -> None:
    """
    Set every batch norm's statistics to those of its input in one ``backbone_forward()``. With
    random weights and identity statistics activations grow through the residual blocks (a
    classification loss of ~1e5 at R-50); calibrated, they have a trained network's unit scale.
    """

    def set_statistics(module: nn.Module, inputs: Tuple[torch.Tensor]) -> None:
        module.running_mean.copy_(inputs[0].detach().float().mean(dim=(0, 2, 3)))
        module.running_var.copy_(inputs[0].detach().float().var(dim=(0, 2, 3)))

    norms = [
        m for m in model.modules() if isinstance(getattr(m, "running_var", None), torch.Tensor)
    ]
    handles = [norm.register_forward_pre_hook(set_statistics) for norm in norms]
    was_training = model.training
    model.eval()  # so that BatchNorm2d normalises with the statistics just set
    try:
        with torch.no_grad():
            backbone_forward()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def make_image(
    height: int, width: int, num_classes: int, num_boxes: int, generator, device
) -> Dict:
    """Returns: a Detectron2 input: a uint8 noise image with random boxes of 32 px and more."""
    from detectron2.structures import Boxes, Instances

    size = 32 + torch.rand(num_boxes, 2, generator=generator) * max(min(height, width) / 2 - 32, 1)
    corner = torch.rand(num_boxes, 2, generator=generator) * (torch.tensor([width, height]) - size)
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(torch.cat([corner, corner + size], dim=1))
    instances.gt_classes = torch.randint(num_classes, (num_boxes,), generator=generator)
    image = torch.randint(256, (3, height, width), generator=generator, dtype=torch.uint8)
    return {"image": image.to(device), "instances": instances.to(device)}


def make_batch(size: int, side: int, num_classes: int, num_boxes: int, seed: int, device) -> List:
    """Returns: ``size`` square inputs of :func:`make_image`."""
    generator = torch.Generator().manual_seed(seed)
    return [make_image(side, side, num_classes, num_boxes, generator, device) for _ in range(size)]


def build_pair(
    cfg, seed: int, image_size: int, ours_opts: Sequence[str] = ()
) -> Dict[str, nn.Module]:
    """
    Returns:
        Detectron2's ``RetinaNet`` of ``cfg`` (batch norms calibrated on a noise image) and our
        ``FocalLossRetinaNet`` of the same config (and ``ours_opts``) with its weights.
    """
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    detectron2 = build_model(cfg)
    images = make_batch(1, image_size, 1, 0, seed, detectron2.device)
    calibrate_batch_norms(
        lambda: detectron2.backbone(detectron2.preprocess_image(images).tensor), detectron2
    )
    ours_cfg = cfg.clone()
    ours_cfg.MODEL.META_ARCHITECTURE = "FocalLossRetinaNet"
    ours_cfg.merge_from_list(list(ours_opts))
    ours = build_model(ours_cfg)
    ours.load_state_dict(detectron2.state_dict(), strict=True)
    return {"ours": ours, "detectron2": detectron2}


def build_torchvision(depth: int, image_size: int, cfg) -> nn.Module:
    """
    Returns:
        torchvision's RetinaNet with random weights and ``cfg``'s classes and test settings,
        taking ``image_size`` images as they are; depth 50 is ``retinanet_resnet50_fpn``.
    """
    from torchvision.models.detection import RetinaNet, retinanet_resnet50_fpn
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    settings = cfg.MODEL.RETINANET
    kwargs = dict(
        num_classes=settings.NUM_CLASSES,
        min_size=image_size,
        max_size=image_size,
        score_thresh=settings.SCORE_THRESH_TEST,
        nms_thresh=settings.NMS_THRESH_TEST,
        topk_candidates=settings.TOPK_CANDIDATES_TEST,
        detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE,
    )
    if depth == 50:
        model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
    else:
        backbone = resnet_fpn_backbone(
            backbone_name=f"resnet{depth}",
            weights=None,
            norm_layer=nn.BatchNorm2d,
            trainable_layers=5,
            returned_layers=[2, 3, 4],
            extra_blocks=LastLevelP6P7(256, 256),
        )
        model = RetinaNet(backbone, **kwargs)
    image = torch.rand(3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    calibrate_batch_norms(lambda: model.backbone(model.transform([image])[0].tensors), model)
    return model.to(cfg.MODEL.DEVICE).eval()


class TrainStep:
    """One training iteration as Detectron2's trainers run it: forward, backward, SGD step."""

    def __init__(self, model: nn.Module, cfg, batch: List[Dict], amp: bool):
        """
        Args:
            model: a Detectron2-style detector; set to train mode.
            cfg: its config (the optimizer's settings).
            batch: its inputs, unless a call gives its own.
            amp: run the forward under autocast (bf16 on the CPU, fp16 on CUDA).
        """
        from detectron2.solver import build_optimizer

        self.model, self.batch, self.amp = model.train(), batch, amp
        self.optimizer = build_optimizer(cfg, model)
        self.scaler = torch.amp.GradScaler(model.device.type, enabled=amp)

    def __call__(self, batch: Optional[List[Dict]] = None) -> Dict[str, float]:
        """Returns: the iteration's losses."""
        from detectron2.utils.events import EventStorage

        with EventStorage(), torch.autocast(self.model.device.type, enabled=self.amp):
            losses = self.model(self.batch if batch is None else batch)
        self.scaler.scale(sum(losses.values())).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # Gradients are freed here, so that a step's peak memory includes all of them.
        self.optimizer.zero_grad(set_to_none=True)
        return {name: value.item() for name, value in losses.items()}


def inference(model: Callable, inputs: Any, amp: bool, device: torch.device) -> Callable[[], Any]:
    """Returns: a call of ``model(inputs)`` without gradients (under autocast with ``amp``)."""

    def call() -> Any:
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            return model(inputs)

    return call


def make_loss_inputs(num_anchors: int, num_classes: int, device, seed: int):
    """Returns: (R, K) logits that require grad and (R,) labels: 1 % positive, 1 % ignored."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_anchors, num_classes, generator=generator) * 2 - 4
    draw = torch.rand(num_anchors, generator=generator)
    labels = torch.full((num_anchors,), num_classes, dtype=torch.int64)
    positive = draw < 0.01
    labels[positive] = torch.randint(num_classes, (int(positive.sum()),), generator=generator)
    labels[(draw >= 0.01) & (draw < 0.02)] = -1
    return logits.to(device).requires_grad_(), labels.to(device)


def loss_step(method: str, alpha: float, gamma: float) -> Callable:
    """
    Returns:
        (logits, labels) -> the gradient of the summed loss w.r.t. the logits, for a method of
        ``LOSS_METHODS``; "logits_copy" copies the logits (the floor of any elementwise loss).
    """
    from retinanet_fl.layers.focal_loss import sigmoid_focal_loss_from_labels

    if method == "logits_copy":
        return lambda logits, labels: logits.detach().clone()
    if method.startswith("ours_"):

        def ours(logits, labels):
            loss = sigmoid_focal_loss_from_labels(
                logits,
                labels,
                alpha=alpha,
                gamma=gamma,
                reduction="sum",
                kernel=method[len("ours_") :],
            )
            return torch.autograd.grad(loss, logits)[0]

        return ours
    if method == "torchvision":
        from torchvision.ops import sigmoid_focal_loss as reference
    else:
        from fvcore.nn import sigmoid_focal_loss, sigmoid_focal_loss_jit

        reference = sigmoid_focal_loss_jit if method == "fvcore_jit" else sigmoid_focal_loss

    def detectron2_path(logits, labels):
        # What Detectron2's RetinaNet.losses does: one-hot targets of the non-ignored anchors.
        valid = labels >= 0
        targets = F.one_hot(labels[valid], logits.shape[1] + 1)[:, :-1].to(logits.dtype)
        loss = reference(logits[valid], targets, alpha=alpha, gamma=gamma, reduction="sum")
        return torch.autograd.grad(loss, logits)[0]

    return detectron2_path


def losses_cases(args: argparse.Namespace, device: torch.device) -> List[Case]:
    """The classification loss alone at each number of anchors: every method of LOSS_METHODS."""
    cases = []
    for num_anchors in args.loss_sizes:
        logits, labels = make_loss_inputs(num_anchors, args.num_classes, device, args.seed)
        steps = {
            m: functools.partial(loss_step(m, 0.25, 2.0), logits, labels) for m in LOSS_METHODS
        }
        pairs = [(m, "fvcore_jit") for m in LOSS_METHODS if m != "fvcore_jit"]
        cases.append(
            Case(
                "losses",
                f"R = {num_anchors:,} x K = {args.num_classes}, fp32",
                steps,
                pairs + [("ours_compiled", "logits_copy"), ("ours_eager", "fvcore")],
                info={"rk_fp32_bytes": logits.numel() * 4},
                # The same gradient from every method: the sum of its magnitudes.
                summarize=lambda gradient: gradient.double().abs().sum().item(),
            )
        )
    return cases


def train_cases(args: argparse.Namespace, device: torch.device) -> List[Case]:
    """A training iteration of ours and Detectron2's per image size and precision."""
    cases = []
    for size, precision in itertools.product(args.image_sizes, args.precisions):
        cfg = detectron2_cfg(args.depth, args.num_classes, args.device)
        models = build_pair(cfg, args.seed, size, args.ours_opts)
        batch = make_batch(
            args.train_batch_size, size, args.num_classes, NUM_BOXES, args.seed, device
        )
        steps = {name: TrainStep(m, cfg, batch, precision == "amp") for name, m in models.items()}
        cases.append(
            Case(
                "train",
                f"{size} px, batch {args.train_batch_size}, {precision}",
                steps,
                [("ours", "detectron2")],
                summarize=lambda losses: losses,
            )
        )
    return cases


def _export(model: nn.Module, cfg, size: int, formats: Sequence[str], threads: int, seed: int):
    """Returns: ours exported to each format and loaded from its file, and each file's record."""
    from retinanet_fl.export import (
        ExportableDetector,
        ExportedDetector,
        export_metadata,
        export_onnx,
        export_pt2,
        export_torchscript,
    )

    exporters = {
        "torchscript": (lambda m, *rest: export_torchscript(m, *rest), "model.ts"),
        "pt2": (lambda m, *rest: export_pt2(ExportableDetector(m), *rest), "model.pt2"),
        "onnxruntime": (lambda m, *rest: export_onnx(ExportableDetector(m), *rest), "model.onnx"),
    }
    sample = make_batch(1, size, 1, 0, seed, "cpu")[0]["image"]
    loaded, files = {}, {}
    with tempfile.TemporaryDirectory() as directory:
        for name in formats:
            export, file_name = exporters[name]
            path, start = os.path.join(directory, file_name), time.perf_counter()
            # Tracing warns about every Python value it freezes; the export tests check the graph.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                export(model, sample, path, export_metadata(cfg))
            export_s, start = time.perf_counter() - start, time.perf_counter()
            loaded[name] = ExportedDetector(path, intra_op_threads=threads)
            files[name] = {
                "file_mib": os.path.getsize(path) / MIB,
                "export_s": export_s,
                "load_s": time.perf_counter() - start,
            }
    return loaded, files


def _exported_formats(args: argparse.Namespace) -> List[str]:
    """The exported models to run: .pt2, TorchScript, and ONNX Runtime where it is installed."""
    if "exported" not in args.parts or args.device != "cpu":
        return []
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        print("Not timing ONNX Runtime: pip install -e '.[export]' (or make install).")
        return ["pt2", "torchscript"]
    return ["pt2", "torchscript", "onnxruntime"]


def _detections(outputs: Any) -> List[int]:
    """Detections per image in Detectron2's, torchvision's or an exported model's outputs."""
    if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
        return [len(o["instances"]) if "instances" in o else len(o["boxes"]) for o in outputs]
    return [len(scores) for _, scores, _ in outputs]


def _run_exported(detector: Callable, images: Sequence[torch.Tensor]) -> List:
    """An exported model takes one image a call: a batch of N is N calls."""
    return [detector(image.cpu()) for image in images]


def inference_cases(args: argparse.Namespace, device: torch.device) -> List[Case]:
    """
    A forward with post-processing of ours, Detectron2's and torchvision's RetinaNet, and of ours
    exported (one image per call), per image size, batch size and precision.
    """
    cases, formats = [], _exported_formats(args)
    compared = "inference" in args.parts
    for size in args.image_sizes:
        cfg = detectron2_cfg(args.depth, args.num_classes, args.device, args.score_thresh)
        models = {
            name: m.eval() for name, m in build_pair(cfg, args.seed, size, args.ours_opts).items()
        }
        if compared:
            models["torchvision"] = build_torchvision(args.depth, size, cfg)
        else:
            del models["detectron2"]
        exported, files = _export(models["ours"], cfg, size, formats, args.threads, args.seed)
        for batch_size, precision in itertools.product(args.batch_sizes, args.precisions):
            batch = make_batch(batch_size, size, args.num_classes, 0, args.seed + size, device)
            amp = precision == "amp"
            images = [x["image"] for x in batch]
            steps = {
                name: inference(m, [{"image": x} for x in images], amp, device)
                for name, m in models.items()
                if name != "torchvision"
            }
            if compared:
                # torchvision takes float images in [0, 1] and normalises them itself.
                floats = [x.float() / 255 for x in images]
                steps["torchvision"] = inference(models["torchvision"], floats, amp, device)
            for name, detector in exported.items():
                steps[name] = functools.partial(_run_exported, detector, images)
            pairs = [("ours", "detectron2"), ("ours", "torchvision")] if compared else []
            cases.append(
                Case(
                    "inference",
                    f"{size} px, batch {batch_size}, {precision}",
                    steps,
                    pairs + [(name, "ours") for name in exported],
                    info={"exported_files": files} if files else {},
                    summarize=_detections,
                    untracked=("onnxruntime",),
                    warmup=EXPORTED_MIN_WARMUP if exported else 1,
                )
            )
    return cases


def table1e_cases(args: argparse.Namespace, device: torch.device) -> List[Case]:
    """Ours in inference, batch 1, fp32, 4:3 images of the paper's Table 1e short sides."""
    cases = []
    for depth in args.table1e_depths:
        cfg = detectron2_cfg(depth, 80, args.device)
        model = build_pair(cfg, args.seed, TABLE_1E_REFERENCE)["ours"].eval()
        generator = torch.Generator().manual_seed(args.seed)
        steps = {}
        for side in args.table1e_sizes:
            image = torch.randint(
                256, (3, side, round(side * 4 / 3)), generator=generator, dtype=torch.uint8
            )
            steps[f"{side} px"] = inference(model, [{"image": image.to(device)}], False, device)
        paper = {
            f"{side} px": PAPER_TABLE_1E.get(depth, {}).get(side) for side in args.table1e_sizes
        }
        reference = f"{TABLE_1E_REFERENCE} px"
        cases.append(
            Case(
                "table1e",
                f"R-{depth}-FPN, batch 1, fp32, 4:3 images",
                steps,
                [(name, reference) for name in steps if name != reference],
                info={"paper_ap_and_m40_ms": paper},
                memory=False,
            )
        )
    return cases


def coco_like_batches(
    num: int, batch_size: int, size_range: Sequence[int], seed: int
) -> List[List[Tuple[int, int]]]:
    """
    Returns:
        ``num`` batches of (height, width) as Detectron2 resizes COCO for training: the short
        side in ``size_range[:2]`` (640-800 px), aspect 1:2 to 2:1, the long side at most
        ``size_range[2]`` (1333 px); grouped by orientation as its aspect-ratio grouping does.
    """
    low, high, max_size = size_range
    rng, groups, batches = random.Random(seed), {True: [], False: []}, []
    while len(batches) < num:
        short = rng.randint(low, high)
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        long = short * max(aspect, 1 / aspect)
        scale = min(1.0, max_size / long)
        short, long = round(short * scale), round(long * scale)
        group = groups[aspect >= 1]
        group.append((short, long) if aspect >= 1 else (long, short))
        if len(group) == batch_size:
            batches.append(group.copy())
            group.clear()
    return batches


def _next_call(call: Callable, batches: Iterator) -> Any:
    """``call`` on the next batch: the compile part's steps take the COCO-like sizes in turn."""
    return call(next(batches))


def graph_count() -> int:
    """Graphs torch.compile has built in this process (dynamo's counter)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def compile_cases(args: argparse.Namespace, device: torch.device) -> List[Case]:
    """
    ``MODEL.RETINANET_FL.COMPILE True`` against the same weights eager, in inference (an image a
    call) and training (an iteration of ``--train-batch-size`` images). The first pass over the
    COCO-like sizes, here, shows which calls compile and what that costs (into an empty inductor
    cache); later calls, in the run's rounds, take the sizes again in turn.
    """
    from detectron2.modeling import build_model
    from torch._inductor.utils import fresh_cache

    cfg = detectron2_cfg(args.depth, 80, args.device)
    cases = []
    for mode in args.compile_modes:
        sizes = coco_like_batches(
            args.compile_calls,
            1 if mode == "inference" else args.train_batch_size,
            args.compile_size_range,
            args.seed,
        )
        eager = build_pair(cfg, args.seed, min(min(s) for s in sizes[0]), args.ours_opts)["ours"]
        compiled_cfg = cfg.clone()
        compiled_cfg.MODEL.META_ARCHITECTURE = "FocalLossRetinaNet"
        compiled_cfg.merge_from_list([*args.ours_opts, "MODEL.RETINANET_FL.COMPILE", "True"])
        compiled = build_model(compiled_cfg)
        compiled.load_state_dict(eager.state_dict())
        generator = torch.Generator().manual_seed(args.seed)
        inputs = [[make_image(h, w, 80, NUM_BOXES, generator, device) for h, w in b] for b in sizes]
        amp = args.precisions[0] == "amp"
        if mode == "train":
            calls = {
                "eager": TrainStep(eager, cfg, inputs[0], amp),
                "compiled": TrainStep(compiled, cfg, inputs[0], amp),
            }
        else:
            calls = {"eager": None, "compiled": None}
            for name, model in (("eager", eager.eval()), ("compiled", compiled.eval())):
                calls[name] = functools.partial(lambda m, b: inference(m, b, amp, device)(), model)
        first_pass, losses = [], []
        with fresh_cache():
            for batch in inputs:
                times, outputs = {}, {}
                for name in ("eager", "compiled"):
                    graphs, start = graph_count(), time.perf_counter()
                    outputs[name] = calls[name](batch)
                    synchronize(device)
                    times[name], times[f"{name}_graphs"] = (
                        time.perf_counter() - start,
                        graph_count() - graphs,
                    )
                first_pass.append(
                    {"sizes": [list(s) for s in (x["image"].shape[1:] for x in batch)], **times}
                )
                if mode == "train":
                    losses += [
                        abs(outputs["compiled"][k] - v) / max(abs(v), 1e-12)
                        for k, v in outputs["eager"].items()
                    ]
        compiling = [c for c in first_pass if c["compiled_graphs"]]
        frames = torch._dynamo.utils.counters["frames"]
        info = {
            "first_pass": first_pass,
            "calls_that_compiled": len(compiling),
            "graphs": sum(c["compiled_graphs"] for c in first_pass),
            "compile_overhead_s": sum(c["compiled"] - c["eager"] for c in compiling),
            "uncompiled_frames": int(frames["total"] - frames["ok"]),
            "max_loss_relative_difference": max(losses, default=None),
        }
        steps = {
            name: functools.partial(_next_call, call, itertools.cycle(inputs))
            for name, call in calls.items()
        }
        cases.append(
            Case(
                "compile",
                f"{mode}, batch {len(sizes[0])}, {args.precisions[0]}",
                steps,
                [("compiled", "eager")],
                info=info,
                memory=False,
            )
        )
    return cases


class PeakMemory:
    """
    Peak memory a call needs on top of what is allocated before it: on CUDA from the caching
    allocator; on Linux CPUs from the resident-set high-water mark, reset before the call through
    /proc/self/clear_refs, with glibc told to map every allocation over 64 KiB on its own so that
    freed tensors leave the resident set at once.
    """

    def __init__(self, device: torch.device):
        """``available`` tells whether ``device`` can be measured here."""
        self.device, self.libc = device, None
        linux = sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK)
        if device.type == "cpu" and linux:
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        self.available = device.type == "cuda" or self.libc is not None

    @staticmethod
    def _status_bytes(key: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024

    def measure(self, fn: Callable[[], Any]) -> Optional[int]:
        """Returns: the peak bytes of one call of ``fn`` above those before it, or None."""
        if not self.available:
            return None
        gc.collect()
        if self.device.type == "cuda":
            synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - before
        self.libc.malloc_trim(0)  # freed heap pages back, so that reusing them counts
        before = self._status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        fn()
        return self._status_bytes("VmHWM") - before


def allocator_peak(fn: Callable[[], Any]) -> int:
    """
    Returns:
        the most bytes that tensors allocated during one call of ``fn`` held at once, from the
        CPU allocator's profiler events (the CPU's ``torch.cuda.max_memory_allocated``).
    """
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as directory:
        prof.export_chrome_trace(os.path.join(directory, "trace.json"))
        events = json.loads(Path(directory, "trace.json").read_text())["traceEvents"]
    return max(
        (e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"), default=0
    )


def deploy_cases(args: argparse.Namespace, device: torch.device) -> List[Case]:
    """Deployment forms on the CPU, an image at batch 1: see tools/benchmark_deploy.py."""
    import benchmark_deploy

    return benchmark_deploy.deploy_cases(args, device, sys.modules[__name__])


def successors_cases(args: argparse.Namespace, device: torch.device) -> List[Case]:
    """The focal loss's successors against it: see tools/benchmark_successors.py."""
    import benchmark_successors

    return benchmark_successors.successors_cases(args, device, sys.modules[__name__])


BUILDERS = {
    "losses": losses_cases,
    "train": train_cases,
    "inference": inference_cases,
    "table1e": table1e_cases,
    "compile": compile_cases,
    "deploy": deploy_cases,
    "successors": successors_cases,
}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """
    Build every part's cases, warm their steps up, time them all in interleaved rounds, then
    measure memory.

    Returns:
        the results: the machine, the arguments and every case's measurements.
    """
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average_at_start": os.getloadavg()[0],
    }
    parts = [
        p for p in BUILDERS if p in args.parts or (p == "inference" and "exported" in args.parts)
    ]
    cases = [case for part in parts for case in BUILDERS[part](args, device)]
    steps = {(i, name): step for i, case in enumerate(cases) for name, step in case.steps.items()}
    first_call_s, first_output = {}, {}
    for (i, name), step in steps.items():
        for call in range(max(args.warmup, cases[i].warmup)):
            start = time.perf_counter()
            output = step()
            synchronize(device)
            if call == 0:
                first_call_s[i, name] = time.perf_counter() - start
                if cases[i].summarize:
                    first_output[i, name] = cases[i].summarize(output)
    times = {key: [] for key in steps}
    order, rng = list(steps), random.Random(args.seed)
    for _ in range(args.repeats):
        rng.shuffle(order)
        for key in order:
            synchronize(device)
            start = time.perf_counter()
            steps[key]()
            synchronize(device)
            times[key].append(time.perf_counter() - start)
    memory = PeakMemory(device)
    peaks, allocated = {}, {}
    for (i, name), step in steps.items() if args.memory else ():
        if cases[i].memory and name not in cases[i].untracked:
            peaks[i, name] = memory.measure(step)
            allocated[i, name] = allocator_peak(step) if device.type == "cpu" else None
    results = []
    for i, case in enumerate(cases):
        measured = {
            name: {
                "median_s": statistics.median(times[i, name]),
                "times_s": times[i, name],
                "first_call_s": first_call_s[i, name],
                "first_output": first_output.get((i, name)),
                "peak_bytes": peaks.get((i, name)),
                "allocated_bytes": allocated.get((i, name)),
            }
            for name in case.steps
        }
        results.append(
            {
                "part": case.part,
                "setting": case.setting,
                "info": case.info,
                "steps": measured,
                "ratios": [_ratio(measured, a, b) for a, b in case.pairs],
            }
        )
        if case.part == "compile":
            saving = measured["eager"]["median_s"] - measured["compiled"]["median_s"]
            overhead = case.info["compile_overhead_s"]
            case.info["break_even_calls"] = overhead / saving if saving > 0 else None
    machine["load_average_at_end"] = os.getloadavg()[0]
    return {
        "machine": machine,
        "args": {k: v for k, v in vars(args).items() if k != "output_dir"},
        "cases": results,
    }


def _ratio(measured: Dict[str, Dict[str, Any]], a: str, b: str) -> Dict[str, Any]:
    """The time ratio a / b (of medians, and the quartiles of the per-round ratios) and memory's."""
    if a not in measured or b not in measured:
        return {"a": a, "b": b, "time": None}
    rounds = [x / y for x, y in zip(measured[a]["times_s"], measured[b]["times_s"])]
    quartiles = statistics.quantiles(rounds, n=4) if len(rounds) > 1 else [math.nan] * 3
    ratio = {
        "a": a,
        "b": b,
        "time": measured[a]["median_s"] / measured[b]["median_s"],
        "time_quartiles": [quartiles[0], quartiles[2]],
    }
    for key in ("peak_bytes", "allocated_bytes"):
        x, y = measured[a][key], measured[b][key]
        ratio[key.replace("_bytes", "")] = x / y if x is not None and y else None
    return ratio


def _number(value: Optional[float], form: str = ".3f") -> str:
    return "–" if value is None or math.isnan(value) else format(value, form)


def markdown(results: Dict[str, Any]) -> str:
    """Returns: the table of every ratio, with each setting's notes."""
    m = results["machine"]
    lines = [
        "# Benchmark: FocalLossRetinaNet against Detectron2's and torchvision's RetinaNet",
        "",
        f"{m['platform']}, {m['cpus']} CPUs, {m['threads']} torch threads, device {m['device']}"
        + (f" ({m['gpu']})" if m["gpu"] else "")
        + f", torch {m['torch']}, {m['date']}; load "
        f"average {m['load_average_at_start']:.2f} at the start, {m['load_average_at_end']:.2f} "
        f"at the end. Medians of {results['args']['repeats']} interleaved rounds after "
        f"{results['args']['warmup']} warm-up call(s); quartiles: of the per-round ratios. Memory: "
        "peak above what is held before the call (resident set on the CPU); allocated: tensors.",
        "",
        "| part | setting | a / b | a ms | b ms | time a / b | quartiles | peak memory a / b "
        "| allocated a / b |",
        "|---|---|---|---:|---:|---:|---|---:|---:|",
    ]
    notes = []
    for case in results["cases"]:
        steps = case["steps"]
        for r in (r for r in case["ratios"] if r["time"] is not None):
            low, high = r["time_quartiles"]
            lines.append(
                f"| {case['part']} | {case['setting']} | {r['a']} / {r['b']} | "
                f"{1e3 * steps[r['a']]['median_s']:.1f} | {1e3 * steps[r['b']]['median_s']:.1f} | "
                f"{r['time']:.3f} | {_number(low)}–{_number(high)} | {_number(r['peak'])} | "
                f"{_number(r['allocated'])} |"
            )
        first = {
            name: s["first_output"] for name, s in steps.items() if s["first_output"] is not None
        }
        info = {k: v for k, v in case["info"].items() if k != "first_pass"}
        if first or info:
            notes.append(
                f"- {case['part']}, {case['setting']}: "
                + json.dumps({**info, **({"first call": first} if first else {})}, default=str)
            )
    return (
        "\n".join(
            lines
            + [
                "",
                "Notes (first call's output: losses, detections per image, "
                "the gradient's L1 norm):",
                "",
                *notes,
            ]
        )
        + "\n"
    )


def plot_table1e(results: Dict[str, Any], path: Path) -> None:
    """Figure 2's axes: the paper's AP against our measured ms per image, per depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for case in (c for c in results["cases"] if c["part"] == "table1e"):
        paper = case["info"]["paper_ap_and_m40_ms"]
        points = [
            (1e3 * s["median_s"], paper[n][0], n) for n, s in case["steps"].items() if paper[n]
        ]
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            "o-",
            label=case["setting"].split(",")[0],
        )
        for ms, ap, name in points:
            ax.annotate(name, (ms, ap), fontsize=7)
    ax.set(
        xlabel=f"our inference time (ms), {results['machine']['device']}",
        ylabel="COCO AP (the paper's, test-dev)",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """Returns: the command line's parser."""
    parser = argparse.ArgumentParser(
        prog="python tools/benchmark.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to time")
    add("--device", default="cpu", help="cpu or cuda")
    add("--threads", type=int, default=os.cpu_count(), help="torch (and ONNX Runtime) threads")
    add("--repeats", type=int, default=7, help="interleaved rounds (>= 5 for a median)")
    add("--warmup", type=int, default=2, help="unmeasured calls of each step first")
    add(
        "--precisions",
        nargs="+",
        choices=["fp32", "amp"],
        default=["fp32"],
        help="amp: autocast, bf16 on the CPU and fp16 on CUDA (compile: the first)",
    )
    add("--image-sizes", type=int, nargs="+", default=[512, 800], help="train and inference, px")
    add("--train-batch-size", type=int, default=2, help="images per training iteration")
    add("--batch-sizes", type=int, nargs="+", default=[1, 8], help="inference batch sizes")
    add(
        "--score-thresh",
        type=float,
        default=0.0,
        help="inference: every model's score threshold (0: every pair a candidate)",
    )
    add("--loss-sizes", type=int, nargs="+", default=[200_000, 400_000], help="anchors R")
    add("--table1e-depths", type=int, nargs="+", default=[50, 101])
    add("--table1e-sizes", type=int, nargs="+", default=[400, 500, 600, 700, 800])
    add(
        "--compile-modes", nargs="+", choices=["inference", "train"], default=["inference", "train"]
    )
    add("--compile-calls", type=int, default=12, help="COCO-like sizes in the first pass")
    add(
        "--compile-size-range",
        type=int,
        nargs=3,
        default=[640, 800, 1333],
        metavar=("MIN", "MAX", "MAX_SIZE"),
        help="their short side's range and long side's cap",
    )
    add("--depth", type=int, default=50, choices=[18, 34, 50, 101], help="ResNet of the models")
    add("--num-classes", type=int, default=80)
    add("--ours-opts", nargs="+", default=[], metavar="KEY VALUE", help="our model's overrides")
    add(
        "--deploy-config",
        default="configs/synthetic/retinanet_R18_FPN_synthetic.yaml",
        help="deploy: the config of --deploy-weights",
    )
    add(
        "--deploy-weights",
        default="",
        help="deploy: a trained checkpoint whose AP each form reports on synthetic_val "
        "(e.g. the demo's output/demo/model_final.pth); none: times only",
    )
    add("--deploy-calibration-images", type=int, default=100, help="deploy: int8 calibration")
    add("--no-memory", dest="memory", action="store_false", help="skip the memory measures")
    add("--seed", type=int, default=0)
    add("--output-dir", type=Path, default=Path("benchmarks/results"))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the benchmark; print and write its table and JSON. Returns: the results."""
    args = build_parser().parse_args(argv)
    if args.repeats < 2 or len(args.ours_opts) % 2 or TABLE_1E_REFERENCE not in args.table1e_sizes:
        raise SystemExit(
            "--repeats >= 2, --ours-opts in KEY VALUE pairs, and --table1e-sizes "
            f"with {TABLE_1E_REFERENCE}."
        )
    results = run(args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "benchmark.json").write_text(
        json.dumps(results, indent=1, default=str) + "\n"
    )
    text = markdown(results)
    (args.output_dir / "benchmark.md").write_text(text)
    if "table1e" in args.parts:
        plot_table1e(results, args.output_dir / "table1e.png")
    print(text + f"\nwrote {args.output_dir}/benchmark.{{md,json}}")
    return results


if __name__ == "__main__":
    main()

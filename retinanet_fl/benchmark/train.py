"""
The ``train`` benchmark: one training iteration (forward with labelling and losses, backward,
optimizer step) of :class:`FocalLossRetinaNet` against Detectron2's ``RetinaNet``, both built from
Detectron2's RetinaNet R-50-FPN config with only ``MODEL.META_ARCHITECTURE`` changed and holding
identical weights: seconds per iteration, the forward / backward / optimizer split, the
classification loss's share, and peak memory. Settings that miss the time target are profiled.
"""

import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage
from torch import nn

from .common import finish_model_results, machine_info, medians, synchronize, time_interleaved
from .fixtures import ModelOptions, build_detectron2_pair, detectron2_retinanet_cfg, make_batch
from .loss_kernels import loss_step
from .results import DETECTRON2, OURS, TrainEntry, TrainResults, TrainSettings
from .targets import train_targets

__all__ = ["TrainStep", "benchmark_train"]


class TrainStep:
    """
    One training iteration of a Detectron2-style model: forward (labelling and losses), backward,
    optimizer step, as Detectron2's ``SimpleTrainer`` / ``AMPTrainer`` run it. Records the time
    of each phase in ``phase_times``.
    """

    def __init__(
        self, model: nn.Module, cfg: CfgNode, batch: List[Dict], device: torch.device, amp: bool
    ):
        """
        Args:
            model: a Detectron2-style detector; set to train mode.
            cfg: its config (the optimizer's settings).
            batch: its inputs at every iteration that is not given its own.
            device: the model's device.
            amp: whether the forward runs under autocast (with a gradient scaler).
        """
        self.model = model.train()
        self.optimizer = build_optimizer(cfg, model)
        self.batch = batch
        self.device = device
        self.amp = amp
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp)
        self.phase_times: Dict[str, List[float]] = {"forward": [], "backward": [], "optimizer": []}
        self.last_losses: Dict[str, float] = {}

    def __call__(self, batch: Optional[List[Dict]] = None) -> None:
        """
        Run one iteration; its losses are kept in ``last_losses``.

        Args:
            batch: its inputs; None: the batch given at construction.
        """
        start = time.perf_counter()
        autocast = torch.autocast(self.device.type, enabled=self.amp) if self.amp else nullcontext()
        with EventStorage(), autocast:
            losses = self.model(self.batch if batch is None else batch)
        loss = sum(losses.values())
        synchronize(self.device)
        forward_end = time.perf_counter()
        self.scaler.scale(loss).backward()
        synchronize(self.device)
        backward_end = time.perf_counter()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # Gradients are freed here, so that a step's peak memory includes all of them.
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        end = time.perf_counter()
        self.phase_times["forward"].append(forward_end - start)
        self.phase_times["backward"].append(backward_end - forward_end)
        self.phase_times["optimizer"].append(end - backward_end)
        self.last_losses = {name: value.item() for name, value in losses.items()}


def benchmark_train(
    options: ModelOptions, *, batch_size: int, throughput_batch_size: int, num_boxes: int
) -> TrainResults:
    """
    Run the train benchmark: every (image size, precision) at ``batch_size``, and on CUDA also
    at ``throughput_batch_size``.

    Args:
        options: what to build and how to measure (sets the torch threads).
        batch_size: images per iteration.
        throughput_batch_size: on CUDA, a second batch size for images/s (0: none).
        num_boxes: GT boxes per image.

    Returns:
        Every measurement, with the targets evaluated.
    """
    torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    cuda = device.type == "cuda"
    results = TrainResults(
        benchmark="train",
        machine=machine_info(device),
        settings=TrainSettings(
            **asdict(options.settings()),
            batch_size=batch_size,
            throughput_batch_size=throughput_batch_size if cuda else None,
            num_boxes_per_image=num_boxes,
            optimizer="Detectron2 build_optimizer: SGD, momentum 0.9, weight decay 1e-4, lr 0.001",
            what="forward (labelling, losses) + backward + optimizer step",
        ),
        entries=[],
    )
    batch_sizes = [batch_size] + ([throughput_batch_size] if cuda and throughput_batch_size else [])
    settings = [
        (size, batch, precision)
        for batch in batch_sizes
        for size in options.image_sizes
        for precision in options.precisions
    ]
    all_steps = []
    for index, (image_size, batch, precision) in enumerate(settings):
        entry, steps = _measure_setting(
            options, image_size, batch, precision, num_boxes, options.seed + index
        )
        results.entries.append(entry)
        all_steps.append(steps)
    # Where no time target is missed, profile the largest setting of the base batch in fp32.
    default_profile = max(
        (i for i, e in enumerate(results.entries) if e.batch_size == batch_size),
        key=lambda i: (results.entries[i].image_size, results.entries[i].precision == "fp32"),
    )
    finish_model_results(
        results, all_steps, train_targets, default_profile, options.profile, options.memory_repeats
    )
    return results


def _measure_setting(
    options: ModelOptions,
    image_size: int,
    batch_size: int,
    precision: str,
    num_boxes: int,
    seed: int,
) -> Tuple[TrainEntry, Dict[str, TrainStep]]:
    """
    Time one setting: warm-up iterations, interleaved iterations, the classification loss alone.

    Args:
        options: what to build and how to measure.
        image_size: side of the images.
        batch_size: images per iteration.
        precision: "fp32" or "amp".
        num_boxes: GT boxes per image.
        seed: of the weights, the batch and the shuffles.

    Returns:
        The setting's timings (memory and targets not yet filled in), and each model's step.
    """
    device = torch.device(options.device)
    cfg = detectron2_retinanet_cfg(
        options.depth, options.num_classes, 0.05, options.loss_kernel, options.device
    )
    models = build_detectron2_pair(cfg, seed, image_size, options.ours_opts)
    batch = make_batch(batch_size, image_size, options.num_classes, num_boxes, seed, device)
    steps = {
        name: TrainStep(model, cfg, batch, device, amp=precision == "amp")
        for name, model in models.items()
    }
    first_iteration_s, first_losses = {}, {}
    with _capture_inputs(models[OURS].cls_loss) as loss_inputs:
        for warmup_index in range(options.warmup):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                if warmup_index == 0:
                    first_iteration_s[name] = time.perf_counter() - start
                    first_losses[name] = step.last_losses
    for step in steps.values():
        step.phase_times = {phase: [] for phase in step.phase_times}
    times = time_interleaved(steps, options.iters, device, seed=seed)
    median_s = medians(times)
    loss_median_s = _time_cls_losses(
        models[OURS].cls_loss, cfg, loss_inputs, options.iters, device, seed
    )
    entry = TrainEntry(
        image_size=image_size,
        batch_size=batch_size,
        precision=precision,
        loss_kernel=models[OURS].cls_loss.kernel,
        first_iteration_s=first_iteration_s,
        first_iteration_losses=first_losses,
        times_s=times,
        median_s=median_s,
        images_per_s={name: batch_size / median for name, median in median_s.items()},
        time_ratio_ours_vs_detectron2=median_s[OURS] / median_s[DETECTRON2],
        phase_median_s={name: medians(step.phase_times) for name, step in steps.items()},
        num_anchors_per_image=loss_inputs[1].shape[1],
        cls_loss_median_s=loss_median_s,
        # Every other part of the two steps is the same computation: the ratio if they took the
        # same time and only the classification losses differed.
        time_ratio_bound_from_cls_loss=1
        - (loss_median_s[DETECTRON2] - loss_median_s[OURS]) / median_s[DETECTRON2],
    )
    print(
        f"train {image_size} px, batch {batch_size}, {precision}: "
        + ", ".join(f"{name} {median:.3f} s" for name, median in median_s.items())
        + f", ratio {entry.time_ratio_ours_vs_detectron2:.3f}",
        flush=True,
    )
    return entry, steps


@contextmanager
def _capture_inputs(module: nn.Module) -> Iterator[List[torch.Tensor]]:
    """
    Within the block, the first call's tensor arguments of ``module`` are copied into the
    yielded list (detached).

    Args:
        module: the module whose inputs to capture.

    Returns:
        A context manager that yields the list.
    """
    captured: List[torch.Tensor] = []

    def hook(_, inputs):
        if not captured:
            captured.extend(x.detach().clone() for x in inputs)

    handle = module.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _time_cls_losses(
    cls_loss: nn.Module,
    cfg: CfgNode,
    loss_inputs: List[torch.Tensor],
    iters: int,
    device: torch.device,
    seed: int,
) -> Dict[str, float]:
    """
    Median seconds of the classification loss alone, forward and backward to the logits, on one
    training step's logits ``(N, R, K)`` and labels ``(N, R)``: our model's loss module, and
    Detectron2's path (one-hot targets of the valid anchors into fvcore's
    ``sigmoid_focal_loss_jit``, as ``RetinaNet.losses`` does).

    Args:
        cls_loss: our model's classification loss module.
        cfg: the models' config (α and γ of the focal loss).
        loss_inputs: ``cls_loss``'s arguments in one step: logits, labels, anchors.
        iters: interleaved calls of each.
        device: the models' device.
        seed: of the shuffles.

    Returns:
        ``{OURS: seconds, DETECTRON2: seconds}``.
    """
    pred_logits, gt_labels, anchors = loss_inputs
    pred_logits.requires_grad_()
    detectron2_path = loss_step(
        "fvcore_jit", cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA, cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA
    )
    steps = {
        OURS: lambda: torch.autograd.grad(cls_loss(pred_logits, gt_labels, anchors), pred_logits),
        DETECTRON2: lambda: detectron2_path(pred_logits.flatten(0, 1), gt_labels.flatten()),
    }
    for step in steps.values():
        step()
    return medians(time_interleaved(steps, iters, device, seed=seed))

"""
``losses``: forward + backward of the classification loss from (R, K) logits and (R,) labels to the
gradient of the logits, for our closed form (eager and compiled) against the detector path of
Detectron2 (one-hot targets of the valid rows into fvcore's ``sigmoid_focal_loss_jit``), fvcore's
eager version and ``torchvision.ops.sigmoid_focal_loss``; and the peak memory each one needs on
top of its inputs. Also the compile time of the compiled kernel for a new setting; and the report
(:func:`losses_markdown`).
"""

import functools
import time
from typing import Callable, Dict, Sequence, Tuple

import torch
import torch._functorch.config
import torch._inductor.config
import torch.nn.functional as F
from torch import Tensor

from ..layers.focal_loss import sigmoid_focal_loss_from_labels
from .common import (
    PeakMemory,
    describe_machine,
    machine_info,
    medians,
    record_load,
    synchronize,
    time_interleaved,
)
from .results import LossEntry, LossResults, LossSettings
from .targets import loss_targets

__all__ = [
    "LOSS_METHODS",
    "make_loss_inputs",
    "loss_step",
    "benchmark_losses",
    "losses_markdown",
]

LOSS_METHODS = ("ours_compiled", "ours_eager", "fvcore_jit", "fvcore", "torchvision", "logits_copy")


def make_loss_inputs(
    num_anchors: int,
    num_classes: int,
    device: torch.device,
    seed: int,
    positive_fraction: float = 0.01,
    ignored_fraction: float = 0.01,
) -> Tuple[Tensor, Tensor]:
    """
    Logits (R, K) that require grad and labels (R,) with a detector's mix: mostly background,
    a few positives and a few ignored anchors.

    Args:
        num_anchors: R.
        num_classes: K; label K is background, -1 ignored.
        device: where the tensors are put.
        seed: of the draws.
        positive_fraction: share of anchors with a class label.
        ignored_fraction: share of ignored anchors.

    Returns:
        The logits and the labels.
    """
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_anchors, num_classes, generator=generator) * 2 - 4
    draw = torch.rand(num_anchors, generator=generator)
    labels = torch.full((num_anchors,), num_classes, dtype=torch.int64)
    positive = draw < positive_fraction
    labels[positive] = torch.randint(num_classes, (int(positive.sum()),), generator=generator)
    labels[(draw >= positive_fraction) & (draw < positive_fraction + ignored_fraction)] = -1
    return logits.to(device).requires_grad_(), labels.to(device)


def loss_step(method: str, alpha: float, gamma: float) -> Callable[[Tensor, Tensor], Tensor]:
    """
    A callable (logits, labels) -> gradient of the summed loss w.r.t. the logits; for
    "logits_copy", a copy of the logits (the floor any elementwise loss pays: one read, one write).

    Args:
        method: one of :data:`LOSS_METHODS`.
        alpha: α of the focal loss.
        gamma: γ of the focal loss.

    Returns:
        The callable.
    """
    if method == "logits_copy":
        return lambda logits, labels: logits.detach().clone()
    if method.startswith("ours_"):
        kernel = method[len("ours_") :]

        def ours(logits: Tensor, labels: Tensor) -> Tensor:
            loss = sigmoid_focal_loss_from_labels(
                logits, labels, alpha=alpha, gamma=gamma, reduction="sum", kernel=kernel
            )
            return torch.autograd.grad(loss, logits)[0]

        return ours

    if method == "fvcore_jit":
        from fvcore.nn import sigmoid_focal_loss_jit as reference
    elif method == "fvcore":
        from fvcore.nn import sigmoid_focal_loss as reference
    elif method == "torchvision":
        from torchvision.ops import sigmoid_focal_loss as reference
    else:
        raise ValueError(f"unknown loss method {method!r}; choose from {LOSS_METHODS}.")

    def detectron2_path(logits: Tensor, labels: Tensor) -> Tensor:
        # What Detectron2's RetinaNet.losses does: one-hot targets of the non-ignored anchors.
        valid = labels >= 0
        targets = F.one_hot(labels[valid], logits.shape[1] + 1)[:, :-1].to(logits.dtype)
        loss = reference(logits[valid], targets, alpha=alpha, gamma=gamma, reduction="sum")
        return torch.autograd.grad(loss, logits)[0]

    return detectron2_path


def benchmark_losses(
    *,
    device: str,
    sizes: Sequence[int],
    num_classes: int,
    repeats: int,
    methods: Sequence[str],
    alpha: float,
    gamma: float,
    seed: int,
) -> LossResults:
    """
    Run the losses benchmark: time every method at every size, then measure their memory.

    Args:
        device: "cpu" or "cuda[:index]".
        sizes: numbers of anchors R; one entry each.
        num_classes: K.
        repeats: interleaved timed calls of each method.
        methods: some of :data:`LOSS_METHODS`.
        alpha: α of the focal loss.
        gamma: γ of the focal loss.
        seed: of the inputs and the shuffles.

    Returns:
        Every measurement, with the targets evaluated; with ``ours_compiled``, also its compile
        time for a new γ.
    """
    torch_device = torch.device(device)
    results = LossResults(
        benchmark="losses",
        machine=machine_info(torch_device),
        settings=LossSettings(
            num_classes=num_classes,
            sizes=list(sizes),
            repeats=repeats,
            alpha=alpha,
            gamma=gamma,
            dtype="float32",
            what="forward + backward from (R, K) logits and (R,) labels to d loss / d logits",
        ),
        sizes=[],
    )
    steps = {method: loss_step(method, alpha, gamma) for method in methods}
    # Timings first: the memory measurement changes how glibc allocates, which would slow down
    # every method that allocates large temporaries.
    for size_index, num_anchors in enumerate(sizes):
        logits, labels = make_loss_inputs(num_anchors, num_classes, torch_device, seed)
        first_call_s, gradient_l1 = {}, {}
        for method, step in steps.items():
            start = time.perf_counter()
            gradient = step(logits, labels)  # warm-up; compiles the fused kernel
            synchronize(torch_device)
            first_call_s[method] = time.perf_counter() - start
            if method != "logits_copy":
                gradient_l1[method] = gradient.double().abs().sum().item()
            del gradient
        calls = {method: functools.partial(step, logits, labels) for method, step in steps.items()}
        times = time_interleaved(calls, repeats, torch_device, seed=seed + size_index)
        median_s = medians(times)
        reference = "fvcore_jit" if "fvcore_jit" in median_s else methods[0]
        results.sizes.append(
            LossEntry(
                num_anchors=num_anchors,
                num_classes=num_classes,
                rk_fp32_bytes=logits.numel() * 4,
                first_call_s=first_call_s,
                times_s=times,
                median_s=median_s,
                reference=reference,
                speedup={m: median_s[reference] / median_s[m] for m in median_s},
                # The same gradient from every method: the sum of its magnitudes.
                gradient_l1=gradient_l1,
            )
        )
        print(
            f"R = {num_anchors}: " + ", ".join(f"{m} {median_s[m] * 1e3:.1f} ms" for m in median_s)
        )
        del logits, labels, calls
    memory = PeakMemory(torch_device)
    for entry in results.sizes:
        logits, labels = make_loss_inputs(entry.num_anchors, num_classes, torch_device, seed)
        peaks = {
            method: memory.measure(functools.partial(step, logits, labels))
            for method, step in steps.items()
        }
        entry.peak_extra_bytes = peaks
        entry.peak_extra_in_rk_fp32 = {
            m: (None if peaks[m] is None else peaks[m] / entry.rk_fp32_bytes) for m in peaks
        }
        entry.targets = loss_targets(entry)
        del logits, labels
    if "ours_compiled" in methods:
        results.compile_s_per_new_setting = _compile_time_per_new_setting(
            sizes[0], num_classes, alpha, gamma, torch_device, seed
        )
    record_load(results.machine)
    return results


def _compile_time_per_new_setting(
    num_anchors: int, num_classes: int, alpha: float, gamma: float, device: torch.device, seed: int
) -> Dict[str, float]:
    """
    The first call's time for γ values not compiled yet in this process, minus a warm call's:
    the compiled kernel specializes γ, so each new γ costs one compile. Measured with the
    compilers' on-disk caches off (a machine that never compiled that γ).

    Args:
        num_anchors: R of the inputs.
        num_classes: K of the inputs.
        alpha: α of the focal loss.
        gamma: the benchmark's γ; γ + 0.5 and γ + 1.5 are compiled.
        device: where the inputs are.
        seed: of the inputs.

    Returns:
        ``"gamma=<γ>"`` -> seconds.
    """
    logits, labels = make_loss_inputs(num_anchors, num_classes, device, seed)
    compile_s = {}
    for new_gamma in (gamma + 0.5, gamma + 1.5):
        step = loss_step("ours_compiled", alpha, new_gamma)
        start = time.perf_counter()
        with (
            torch._inductor.config.patch(fx_graph_cache=False),
            torch._functorch.config.patch(enable_autograd_cache=False),
        ):
            step(logits, labels)
        synchronize(device)
        first = time.perf_counter() - start
        start = time.perf_counter()
        step(logits, labels)
        synchronize(device)
        compile_s[f"gamma={new_gamma}"] = first - (time.perf_counter() - start)
    return compile_s


def losses_markdown(results: LossResults) -> str:
    """
    The losses report.

    Args:
        results: the losses benchmark's results.

    Returns:
        The Markdown.
    """
    machine, settings = results.machine, results.settings
    lines = [
        "# Classification loss: forward + backward",
        "",
        f"{settings.what}; fp32, K = {settings.num_classes}, γ = {settings.gamma}, "
        f"α = {settings.alpha}; median of {settings.repeats} interleaved runs.",
        describe_machine(machine)
        + (
            f" Load average at start / end: {machine.load_average_at_start[0]:.2f} / "
            f"{machine.load_average_at_end[0]:.2f}."
            if machine.load_average_at_end is not None
            else ""
        ),
        "",
        "Baselines follow Detectron2's RetinaNet: one-hot targets of the non-ignored anchors, then "
        "the library's `sigmoid_focal_loss`. Speed-up: median time of `fvcore_jit` / median time "
        "of the method. Extra memory: peak above the inputs, in units of one (R, K) fp32 tensor "
        "(the gradient itself is one).",
        "",
    ]
    for entry in results.sizes:
        lines += [
            f"## R = {entry.num_anchors:,} anchors × K = {entry.num_classes}",
            "",
            "| method | median ms | speed-up vs fvcore_jit | time / logits_copy "
            "| extra memory (R×K fp32) | first call s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for method, median in entry.median_s.items():
            extra = entry.peak_extra_in_rk_fp32[method]
            copy = entry.median_s.get("logits_copy")
            lines.append(
                f"| {method} | {median * 1e3:.1f} | {entry.speedup[method]:.2f}× | "
                + ("n/a" if copy is None else f"{median / copy:.2f}")
                + " | "
                + ("n/a" if extra is None else f"{extra:.2f}")
                + f" | {entry.first_call_s[method]:.2f} |"
            )
        lines.append("")
        for target, met in entry.targets.items():
            lines.append(f"- {target}: {'met' if met else 'NOT met'}")
        lines.append("")
    if results.compile_s_per_new_setting is not None:
        lines.append(
            "Compile time of the compiled kernel for a setting not used before in the process "
            "(first call minus a warm call, compile caches off): "
            + ", ".join(f"{k}: {v:.2f} s" for k, v in results.compile_s_per_new_setting.items())
            + "."
        )
    return "\n".join(lines)

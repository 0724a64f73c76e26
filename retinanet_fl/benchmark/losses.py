"""
``losses``: forward + backward of the classification loss from (R, K) logits and (R,) labels to the
gradient of the logits, for our closed form (eager and compiled) against the detector path of
Detectron2 (one-hot targets of the valid rows into fvcore's ``sigmoid_focal_loss_jit``), fvcore's
eager version and ``torchvision.ops.sigmoid_focal_loss``; and the peak memory each one needs on
top of its inputs.
"""
import argparse
import os
import statistics
import time
from typing import Callable, Dict, Optional

import torch
import torch._functorch.config
import torch._inductor.config
import torch.nn.functional as F
from torch import Tensor

from ..layers.focal_loss import sigmoid_focal_loss_from_labels
from .common import PeakMemory, machine_info, synchronize, time_interleaved, write_results


LOSS_METHODS = ("ours_compiled", "ours_eager", "fvcore_jit", "fvcore", "torchvision", "logits_copy")
# Targets: the compiled kernel at least this many times faster than fvcore's scripted loss, and at
# most this many times the memory-bandwidth floor (one copy of the logits, "logits_copy").
MIN_SPEEDUP_VS_FVCORE_JIT = 20.0
MAX_RATIO_TO_LOGITS_COPY = 3.0


def make_loss_inputs(
    num_anchors: int,
    num_classes: int,
    device: torch.device,
    seed: int,
    positive_fraction: float = 0.01,
    ignored_fraction: float = 0.01,
):
    """
    Logits (R, K) that require grad and labels (R,) with a detector's mix: mostly background,
    a few positives and a few ignored anchors.
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
    """
    if method == "logits_copy":
        return lambda logits, labels: logits.detach().clone()
    if method.startswith("ours_"):
        kernel = method[len("ours_"):]

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


def benchmark_losses(args: argparse.Namespace) -> Dict[str, object]:
    device = torch.device(args.device)
    results = {
        "benchmark": "losses",
        "machine": machine_info(device),
        "settings": {
            "num_classes": args.num_classes,
            "sizes": args.sizes,
            "repeats": args.repeats,
            "alpha": args.alpha,
            "gamma": args.gamma,
            "dtype": "float32",
            "what": "forward + backward from (R, K) logits and (R,) labels to d loss / d logits",
        },
        "sizes": [],
    }
    steps = {method: loss_step(method, args.alpha, args.gamma) for method in args.methods}
    # Timings first: the memory measurement changes how glibc allocates, which would slow down
    # every method that allocates large temporaries.
    for size_index, num_anchors in enumerate(args.sizes):
        logits, labels = make_loss_inputs(num_anchors, args.num_classes, device, args.seed)
        first_call_s, gradient_l1 = {}, {}
        for method, step in steps.items():
            start = time.perf_counter()
            gradient = step(logits, labels)  # warm-up; compiles the fused kernel
            synchronize(device)
            first_call_s[method] = time.perf_counter() - start
            if method != "logits_copy":
                gradient_l1[method] = gradient.double().abs().sum().item()
            del gradient
        calls = {method: (lambda step=step: step(logits, labels)) for method, step in steps.items()}
        times = time_interleaved(calls, args.repeats, device, seed=args.seed + size_index)
        medians = {method: statistics.median(times[method]) for method in steps}
        reference = "fvcore_jit" if "fvcore_jit" in medians else args.methods[0]
        results["sizes"].append(
            {
                "num_anchors": num_anchors,
                "num_classes": args.num_classes,
                "rk_fp32_bytes": logits.numel() * 4,
                "first_call_s": first_call_s,
                "times_s": times,
                "median_s": medians,
                "speedup_vs_" + reference: {m: medians[reference] / medians[m] for m in medians},
                # The same gradient from every method: the sum of its magnitudes.
                "gradient_l1": gradient_l1,
            }
        )
        print(f"R = {num_anchors}: " + ", ".join(f"{m} {medians[m] * 1e3:.1f} ms" for m in medians))
        del logits, labels, calls
    memory = PeakMemory(device)
    for entry in results["sizes"]:
        logits, labels = make_loss_inputs(entry["num_anchors"], args.num_classes, device, args.seed)
        peaks = {method: memory.measure(lambda: step(logits, labels)) for method, step in steps.items()}
        entry["peak_extra_bytes"] = peaks
        entry["peak_extra_in_rk_fp32"] = {
            m: (None if peaks[m] is None else peaks[m] / entry["rk_fp32_bytes"]) for m in peaks
        }
        entry["targets"] = _loss_targets(entry)
        del logits, labels
    if "ours_compiled" in args.methods:
        results["compile_s_per_new_setting"] = _compile_time_per_new_setting(args, device)
    if hasattr(os, "getloadavg"):
        results["machine"]["load_average_at_end"] = os.getloadavg()
    return results


def _compile_time_per_new_setting(args: argparse.Namespace, device: torch.device) -> Dict[str, float]:
    """
    The first call's time for γ values not compiled yet in this process, minus a warm call's:
    the compiled kernel specializes γ, so each new γ costs one compile. Measured with the
    compilers' on-disk caches off (a machine that never compiled that γ).
    """
    logits, labels = make_loss_inputs(args.sizes[0], args.num_classes, device, args.seed)
    compile_s = {}
    for gamma in (args.gamma + 0.5, args.gamma + 1.5):
        step = loss_step("ours_compiled", args.alpha, gamma)
        start = time.perf_counter()
        with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(
            enable_autograd_cache=False
        ):
            step(logits, labels)
        synchronize(device)
        first = time.perf_counter() - start
        start = time.perf_counter()
        step(logits, labels)
        synchronize(device)
        compile_s[f"gamma={gamma}"] = first - (time.perf_counter() - start)
    return compile_s


def _loss_targets(entry: Dict[str, object]) -> Dict[str, Optional[bool]]:
    """The targets, evaluated on one size (absent where a method was not run)."""
    median, extra = entry["median_s"], entry["peak_extra_in_rk_fp32"]
    targets = {}
    if "ours_compiled" in median and "fvcore_jit" in median:
        targets[f"compiled {MIN_SPEEDUP_VS_FVCORE_JIT:g}x faster than fvcore_jit"] = (
            median["fvcore_jit"] / median["ours_compiled"] >= MIN_SPEEDUP_VS_FVCORE_JIT
        )
    if "ours_compiled" in median and "logits_copy" in median:
        targets[f"compiled within {MAX_RATIO_TO_LOGITS_COPY:g}x of a logits copy"] = (
            median["ours_compiled"] / median["logits_copy"] <= MAX_RATIO_TO_LOGITS_COPY
        )
    if extra.get("ours_compiled") is not None:
        # The gradient itself is one (R, K) fp32 tensor; allow a few MiB of other allocations.
        slack = 4 * 2**20 / entry["rk_fp32_bytes"]
        targets["compiled extra memory at most one (R, K) fp32"] = extra["ours_compiled"] <= 1 + slack
    if "ours_eager" in median and "fvcore" in median:
        targets["eager no slower than fvcore's eager"] = median["ours_eager"] <= median["fvcore"]
    return targets


def losses_markdown(results: Dict[str, object]) -> str:
    machine, settings = results["machine"], results["settings"]
    lines = [
        "# Classification loss: forward + backward",
        "",
        f"{settings['what']}; fp32, K = {settings['num_classes']}, γ = {settings['gamma']}, "
        f"α = {settings['alpha']}; median of {settings['repeats']} interleaved runs.",
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, "
        f"{machine['torch_threads']} torch threads, device {machine['device']}"
        + (f" ({machine['gpu']})" if "gpu" in machine else "")
        + f", torch {machine['torch']}, {machine['date']}."
        + (
            f" Load average at start / end: {machine['load_average_at_start'][0]:.2f} / "
            f"{machine['load_average_at_end'][0]:.2f}."
            if "load_average_at_end" in machine
            else ""
        ),
        "",
        "Baselines follow Detectron2's RetinaNet: one-hot targets of the non-ignored anchors, then "
        "the library's `sigmoid_focal_loss`. Speed-up: median time of `fvcore_jit` / median time "
        "of the method. Extra memory: peak above the inputs, in units of one (R, K) fp32 tensor "
        "(the gradient itself is one).",
        "",
    ]
    for entry in results["sizes"]:
        reference = next(key for key in entry if key.startswith("speedup_vs_"))
        lines += [
            f"## R = {entry['num_anchors']:,} anchors × K = {entry['num_classes']}",
            "",
            "| method | median ms | speed-up vs fvcore_jit | time / logits_copy "
            "| extra memory (R×K fp32) | first call s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for method, median in entry["median_s"].items():
            extra = entry["peak_extra_in_rk_fp32"][method]
            copy = entry["median_s"].get("logits_copy")
            lines.append(
                f"| {method} | {median * 1e3:.1f} | {entry[reference][method]:.2f}× | "
                + ("n/a" if copy is None else f"{median / copy:.2f}")
                + " | "
                + ("n/a" if extra is None else f"{extra:.2f}")
                + f" | {entry['first_call_s'][method]:.2f} |"
            )
        lines.append("")
        for target, met in entry["targets"].items():
            lines.append(f"- {target}: {'met' if met else 'NOT met'}")
        lines.append("")
    if "compile_s_per_new_setting" in results:
        lines.append(
            "Compile time of the compiled kernel for a setting not used before in the process "
            "(first call minus a warm call, compile caches off): "
            + ", ".join(f"{k}: {v:.2f} s" for k, v in results["compile_s_per_new_setting"].items())
            + "."
        )
    return "\n".join(lines)


def add_losses_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 400_000],
                        help="numbers of anchors R")
    parser.add_argument("--num-classes", type=int, default=80, help="K")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed runs (>= 5)")
    parser.add_argument("--methods", nargs="+", default=list(LOSS_METHODS), choices=LOSS_METHODS)
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--gamma", type=float, default=2.0)


def run_losses(args: argparse.Namespace) -> None:
    if args.repeats < 5:
        raise SystemExit(f"--repeats must be at least 5 for a meaningful median, got {args.repeats}.")
    results = benchmark_losses(args)
    write_results("losses", results, losses_markdown(results), args.output_dir)

"""
Benchmarks (not tests): ``python -m retinanet_fl.benchmark {losses,all} [options]``.

Each benchmark writes ``<name>.json`` (every measurement and the machine it ran on) and
``<name>.md`` (a table of the ratios) under ``--output-dir`` (``benchmarks/results`` by default).
Timings are medians over interleaved repeats, and ratios are taken between methods of the same
run, so a machine shared with other work skews them less than it skews absolute numbers.

``losses``: forward + backward of the classification loss from (R, K) logits and (R,) labels to the
gradient of the logits, for our closed form (eager and compiled) against the detector path of
Detectron2 (one-hot targets of the valid rows into fvcore's ``sigmoid_focal_loss_jit``), fvcore's
eager version and ``torchvision.ops.sigmoid_focal_loss``; and the peak memory each one needs on
top of its inputs.
"""
import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import sigmoid_focal_loss_from_labels

DEFAULT_OUTPUT_DIR = Path("benchmarks/results")


# ---------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> Dict[str, object]:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = os.getloadavg()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class PeakMemory:
    """
    Peak memory a call needs on top of what is allocated before it. On CUDA from the caching
    allocator's statistics; on Linux CPUs from the process's resident-set high-water mark, reset
    before the call through /proc/self/clear_refs, with glibc told to map every allocation over
    64 KiB separately so that freed tensors leave the resident set at once.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.libc = None
        self.available = device.type == "cuda" or self._setup_cpu()

    def _setup_cpu(self) -> bool:
        if not (sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK)):
            return False
        try:
            self.libc = ctypes.CDLL("libc.so.6")
        except OSError:
            return False
        m_mmap_threshold = -3
        return bool(self.libc.mallopt(m_mmap_threshold, 64 * 1024))

    @staticmethod
    def _status_bytes(key: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024

    def measure(self, fn: Callable[[], object]) -> Optional[int]:
        """Run ``fn`` once; returns the peak bytes above the starting allocation, or None."""
        if not self.available:
            fn()
            return None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            result = fn()
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - before
        else:
            # Hand the heap's free pages back, so that reusing them shows up as new memory.
            self.libc.malloc_trim(0)
            before = self._status_bytes("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
            result = fn()
            peak = self._status_bytes("VmHWM") - before
        del result
        return peak


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: Dict[str, Callable[[], object]], repeats: int, device: torch.device, seed: int
) -> Dict[str, List[float]]:
    """Seconds per call of each step; every repeat runs all steps once, in a shuffled order."""
    times = {name: [] for name in steps}
    order = list(steps)
    rng = random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            _synchronize(device)
            start = time.perf_counter()
            steps[name]()
            _synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def write_results(name: str, results: Dict[str, object], markdown: str, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / f"{name}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {output_dir / (name + '.json')} and {output_dir / (name + '.md')}")


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------
LOSS_METHODS = ("ours_compiled", "ours_eager", "fvcore_jit", "fvcore", "torchvision")


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
    """A callable (logits, labels) -> gradient of the summed loss w.r.t. the logits."""
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
            _synchronize(device)
            first_call_s[method] = time.perf_counter() - start
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
    if hasattr(os, "getloadavg"):
        results["machine"]["load_average_at_end"] = os.getloadavg()
    return results


def _loss_targets(entry: Dict[str, object]) -> Dict[str, Optional[bool]]:
    """The issue's targets, evaluated on one size (None where a method was not run)."""
    median, extra = entry["median_s"], entry["peak_extra_in_rk_fp32"]
    targets = {}
    if "ours_compiled" in median and "fvcore_jit" in median:
        targets["compiled_10x_faster_than_fvcore_jit"] = (
            median["fvcore_jit"] / median["ours_compiled"] >= 10
        )
    if extra.get("ours_compiled") is not None:
        # The gradient itself is one (R, K) fp32 tensor; allow a few MiB of other allocations.
        slack = 4 * 2**20 / entry["rk_fp32_bytes"]
        targets["compiled_extra_memory_at_most_one_rk_fp32"] = extra["ours_compiled"] <= 1 + slack
    if "ours_eager" in median and "fvcore" in median:
        targets["eager_no_slower_than_fvcore_eager"] = median["ours_eager"] <= median["fvcore"]
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
            "| method | median ms | speed-up vs fvcore_jit | extra memory (R×K fp32) | first call s |",
            "|---|---:|---:|---:|---:|",
        ]
        for method, median in entry["median_s"].items():
            extra = entry["peak_extra_in_rk_fp32"][method]
            lines.append(
                f"| {method} | {median * 1e3:.1f} | {entry[reference][method]:.2f}× | "
                + ("n/a" if extra is None else f"{extra:.2f}")
                + f" | {entry['first_call_s'][method]:.2f} |"
            )
        lines.append("")
        for target, met in entry["targets"].items():
            lines.append(f"- {target.replace('_', ' ')}: {'met' if met else 'NOT met'}")
        lines.append("")
    return "\n".join(lines)


def add_losses_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000],
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


# name -> (add its arguments to a parser, run it); "all" runs each in this order.
BENCHMARKS = {
    "losses": (add_losses_arguments, run_losses),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retinanet_fl.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="benchmark", required=True)
    for name, (add_arguments, _) in list(BENCHMARKS.items()) + [("all", (None, None))]:
        sub = subparsers.add_parser(name, help=f"run the {name} benchmark" if add_arguments else
                                    "run every benchmark with its default settings")
        sub.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
        sub.add_argument("--device", default="cpu", help="cpu or cuda")
        sub.add_argument("--seed", type=int, default=0)
        if add_arguments is not None:
            add_arguments(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.benchmark != "all":
        BENCHMARKS[args.benchmark][1](args)
        return
    for name, (add_arguments, run) in BENCHMARKS.items():
        defaults = argparse.ArgumentParser()
        add_arguments(defaults)
        run(argparse.Namespace(**{**vars(defaults.parse_args([])), **vars(args)}))


if __name__ == "__main__":
    main()

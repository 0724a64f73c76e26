"""
The command line: ``python -m retinanet_fl.benchmark BENCHMARK [options]`` (BENCHMARK: losses,
train, inference, table1e, compile or all), and ``python -m retinanet_fl.benchmark render
RESULTS.json`` to print a report from its results again. Only this module and
:mod:`.compiled_cli` (the compile benchmark's options) see the parsed arguments; the benchmarks
take plain values.
"""

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .common import DEFAULT_OUTPUT_DIR, write_results
from .compiled_cli import add_compile_arguments, run_compile
from .exported import missing_packages
from .fixtures import ModelOptions
from .inference import benchmark_inference
from .loss_kernels import LOSS_METHODS, benchmark_losses, losses_markdown
from .report import inference_markdown, render, train_markdown
from .results import EXPORTED_MODELS, ONNXRUNTIME, TORCHSCRIPT, load_results
from .table1e import PLOT_NAME, benchmark_table1e, plot_table1e, table1e_markdown
from .train import benchmark_train

__all__ = ["BENCHMARKS", "COMMON_OPTIONS", "build_parser", "main"]

PRECISIONS = ("fp32", "amp")
# Options every benchmark takes; "all" passes them on.
COMMON_OPTIONS = ("output_dir", "device", "seed")


def add_losses_arguments(parser: argparse.ArgumentParser) -> None:
    """The losses benchmark's options."""
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[200_000, 400_000], help="numbers of anchors R"
    )
    parser.add_argument("--num-classes", type=int, default=80, help="K")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed runs (>= 5)")
    parser.add_argument("--methods", nargs="+", default=list(LOSS_METHODS), choices=LOSS_METHODS)
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--gamma", type=float, default=2.0)


def _add_model_arguments(
    parser: argparse.ArgumentParser,
    warmup: int,
    memory_repeats: int,
    precisions: Optional[List[str]],
) -> None:
    """
    The options of :class:`.fixtures.ModelOptions`, with their defaults for one benchmark;
    ``precisions`` None: fp32, plus amp on CUDA.
    """
    parser.add_argument(
        "--image-sizes",
        type=int,
        nargs="+",
        default=[512, 800],
        help="side of the square images, in pixels",
    )
    parser.add_argument("--iters", type=int, default=10, help="measured iterations per model")
    parser.add_argument(
        "--warmup",
        type=int,
        default=warmup,
        help="unmeasured iterations first (>= 1; the first compiles our loss)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument(
        "--depth",
        type=int,
        default=50,
        choices=[18, 34, 50, 101],
        help="ResNet depth of every model",
    )
    parser.add_argument("--num-classes", type=int, default=80, help="K")
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=precisions,
        help="fp32 and/or amp (autocast: bf16 on the CPU, fp16 on CUDA); default: both in "
        "training, fp32 (plus amp on CUDA) in inference",
    )
    parser.add_argument(
        "--loss-kernel",
        choices=["compiled", "eager"],
        default="compiled",
        help="MODEL.RETINANET_FL.LOSS_KERNEL",
    )
    parser.add_argument(
        "--memory-repeats",
        type=int,
        default=memory_repeats,
        help="measured calls per model for peak memory (0: skip)",
    )
    parser.add_argument(
        "--no-profile", dest="profile", action="store_false", help="skip the per-operator profile"
    )
    parser.add_argument("--profile-rows", type=int, default=15, help="operators in the report")
    parser.add_argument(
        "--ours-opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config overrides of our model alone, e.g. MODEL.RETINANET_FL.COMPILE True",
    )


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The train benchmark's options."""
    _add_model_arguments(parser, warmup=2, memory_repeats=3, precisions=list(PRECISIONS))
    parser.add_argument("--batch-size", type=int, default=2, help="images per iteration")
    parser.add_argument(
        "--throughput-batch-size",
        type=int,
        default=16,
        help="on CUDA, also measure images/s at this batch size (0: skip)",
    )
    parser.add_argument("--num-boxes", type=int, default=8, help="GT boxes per image")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The inference benchmark's options."""
    _add_model_arguments(parser, warmup=1, memory_repeats=1, precisions=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=0.0,
        help="MODEL.RETINANET.SCORE_THRESH_TEST and torchvision's score_thresh",
    )
    parser.add_argument(
        "--no-torchvision",
        dest="torchvision",
        action="store_false",
        help="compare with Detectron2 only",
    )
    parser.add_argument(
        "--exported",
        nargs="+",
        choices=EXPORTED_MODELS,
        default=None,
        help="ours exported by retinanet_fl.export, run one image per call: torchscript "
        "(torch.jit) and/or onnxruntime (ONNX Runtime, CPU execution provider, --threads intra-op "
        "threads); default on the CPU: both (onnxruntime where onnx and onnxruntime are "
        "installed), on CUDA: none",
    )
    parser.add_argument(
        "--no-exported",
        dest="exported",
        action="store_const",
        const=[],
        help="compare the eager models only",
    )


def _model_options(args: argparse.Namespace, batch_sizes: List[int]) -> ModelOptions:
    """
    Check the options of a model benchmark and fill in the default precisions.

    Args:
        args: the parsed train or inference options.
        batch_sizes: the benchmark's batch sizes, checked too.

    Returns:
        The options the benchmark takes.
    """
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here; use --device cpu.")
    precisions = args.precisions or (["fp32", "amp"] if cuda else ["fp32"])
    checks = [
        ("--iters", args.iters, 1),
        ("--warmup", args.warmup, 1),
        ("--threads", args.threads, 1),
        ("--memory-repeats", args.memory_repeats, 0),
    ]
    for option, value, minimum in checks:
        if value < minimum:
            raise SystemExit(f"{option} must be at least {minimum}, got {value}.")
    if min(args.image_sizes) < 32 or min(batch_sizes) < 1:
        raise SystemExit("--image-sizes must be >= 32 px and batch sizes >= 1.")
    if len(args.ours_opts) % 2:
        raise SystemExit(f"--ours-opts takes KEY VALUE pairs, got {args.ours_opts}.")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ModelOptions)}
    return ModelOptions(**{**values, "precisions": precisions})


def run_losses(args: argparse.Namespace) -> None:
    """Run the losses benchmark and write its reports."""
    if args.repeats < 5:
        raise SystemExit(
            f"--repeats must be at least 5 for a meaningful median, got {args.repeats}."
        )
    results = benchmark_losses(
        device=args.device,
        sizes=args.sizes,
        num_classes=args.num_classes,
        repeats=args.repeats,
        methods=args.methods,
        alpha=args.alpha,
        gamma=args.gamma,
        seed=args.seed,
    )
    write_results("losses", results, losses_markdown(results), args.output_dir)


def run_train(args: argparse.Namespace) -> None:
    """Run the train benchmark and write its reports."""
    results = benchmark_train(
        _model_options(args, [args.batch_size]),
        batch_size=args.batch_size,
        throughput_batch_size=args.throughput_batch_size,
        num_boxes=args.num_boxes,
    )
    write_results("train", results, train_markdown(results, args.profile_rows), args.output_dir)


def _exported_models(args: argparse.Namespace) -> List[str]:
    """
    The exported models to compare: the ones asked for, checked, or the default for the device.

    Args:
        args: the parsed inference options.

    Returns:
        Some of ``EXPORTED_MODELS``.
    """
    cpu = args.device == "cpu"
    if args.exported is None:
        if not cpu:
            return []
        missing = missing_packages([ONNXRUNTIME])
        if missing:
            print(
                f"Not timing ONNX Runtime: {' and '.join(missing)} not installed "
                "(pip install -e '.[export]', or make install).",
                flush=True,
            )
            return [TORCHSCRIPT]
        return list(EXPORTED_MODELS)
    if args.exported and not cpu:
        raise SystemExit(
            f"--exported: the exported models run on the CPU, so they cannot be compared with "
            f"models on --device {args.device}; pass --no-exported."
        )
    missing = missing_packages(args.exported)
    if missing:
        raise SystemExit(
            f"--exported {' '.join(args.exported)} needs {' and '.join(missing)}: "
            "pip install -e '.[export]' (or make install)."
        )
    return list(dict.fromkeys(args.exported))


def run_inference(args: argparse.Namespace) -> None:
    """Run the inference benchmark and write its reports."""
    options = _model_options(args, args.batch_sizes)
    results = benchmark_inference(
        options,
        batch_sizes=args.batch_sizes,
        score_thresh=args.score_thresh,
        torchvision=args.torchvision,
        exported=_exported_models(args),
    )
    write_results(
        "inference", results, inference_markdown(results, args.profile_rows), args.output_dir
    )


def add_table1e_arguments(parser: argparse.ArgumentParser) -> None:
    """The table1e benchmark's options."""
    parser.add_argument("--depths", type=int, nargs="+", default=[50, 101], help="ResNet depths")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[400, 500, 600, 700, 800], help="short sides, px"
    )
    parser.add_argument("--reference-size", type=int, default=600, help="ratios are to this size")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timed calls (>= 5)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")


def run_table1e(args: argparse.Namespace) -> None:
    """Run the table1e benchmark and write its reports and plot."""
    if args.repeats < 5:
        raise SystemExit(f"--repeats must be at least 5, got {args.repeats}.")
    torch.set_num_threads(args.threads)
    results = benchmark_table1e(
        depths=args.depths,
        sizes=args.sizes,
        reference_size=args.reference_size,
        repeats=args.repeats,
        device=args.device,
        seed=args.seed,
    )
    write_results("table1e", results, table1e_markdown(results), args.output_dir)
    plot_table1e(results, args.output_dir / PLOT_NAME)


def run_render(args: argparse.Namespace) -> None:
    """Print the report of each results file, as its benchmark wrote it."""
    for path in args.results:
        sys.stdout.write(render(load_results(path), args.profile_rows))


# name -> (add its arguments to a parser, run it); "all" runs each in this order.
BENCHMARKS: Dict[str, Tuple[Callable, Callable]] = {
    "losses": (add_losses_arguments, run_losses),
    "train": (add_train_arguments, run_train),
    "inference": (add_inference_arguments, run_inference),
    "table1e": (add_table1e_arguments, run_table1e),
    "compile": (add_compile_arguments, run_compile),
}


def build_parser() -> argparse.ArgumentParser:
    """
    Returns:
        The parser of the command line, one subcommand per benchmark, ``all`` and ``render``.
    """
    from . import __doc__ as description

    parser = argparse.ArgumentParser(
        prog="python -m retinanet_fl.benchmark",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="benchmark", required=True)
    for name, (add_arguments, _) in list(BENCHMARKS.items()) + [("all", (None, None))]:
        sub = subparsers.add_parser(
            name,
            help=f"run the {name} benchmark"
            if add_arguments
            else "run every benchmark with its default settings",
        )
        sub.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
        sub.add_argument("--device", default="cpu", help="cpu or cuda")
        sub.add_argument("--seed", type=int, default=0)
        if add_arguments is not None:
            add_arguments(sub)
    sub = subparsers.add_parser("render", help="print the Markdown report of results JSON files")
    sub.add_argument(
        "results", type=Path, nargs="+", help="train.json, inference.json and/or losses.json"
    )
    sub.add_argument("--profile-rows", type=int, default=15, help="operators in the report")
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    """
    Run the command line.

    Args:
        argv: the arguments; None: ``sys.argv[1:]``.
    """
    args = build_parser().parse_args(argv)
    if args.benchmark == "render":
        run_render(args)
        return
    if args.benchmark != "all":
        BENCHMARKS[args.benchmark][1](args)
        return
    # One process per benchmark: measuring CPU memory changes how glibc allocates for the rest of
    # the process (see PeakMemory), which would slow down the timings of the next benchmark.
    for name in BENCHMARKS:
        common = [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in COMMON_OPTIONS]
        subprocess.run([sys.executable, "-m", "retinanet_fl.benchmark", name, *common], check=True)

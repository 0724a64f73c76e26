"""The compile benchmark's command line: ``python -m retinanet_fl.benchmark compile [options]``."""

import argparse
import os

import torch

from .common import write_results
from .compiled import COMPILE_KEY, benchmark_compile
from .compiled_report import compile_markdown
from .results import COMPILE_MODES

__all__ = ["add_compile_arguments", "run_compile"]


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    """The compile benchmark's options."""
    parser.add_argument("--depth", type=int, default=50, choices=[18, 34, 50, 101])
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=COMPILE_MODES,
        default=list(COMPILE_MODES),
        help="what to time",
    )
    parser.add_argument(
        "--num-calls",
        "--num-images",
        dest="num_calls",
        type=int,
        default=12,
        help="calls per pass: images in inference, iterations (batches) in training",
    )
    parser.add_argument("--train-batch-size", type=int, default=2, help="images per iteration")
    parser.add_argument(
        "--short-side",
        type=int,
        nargs=2,
        default=[640, 800],
        metavar=("MIN", "MAX"),
        help="range of the short side, px (Detectron2's COCO training sizes)",
    )
    parser.add_argument("--max-size", type=int, default=1333, help="cap of the long side, px")
    parser.add_argument("--steady-repeats", type=int, default=2, help="passes after the first")
    parser.add_argument(
        "--precision",
        choices=["fp32", "amp"],
        default="fp32",
        help="amp: autocast (bf16 on the CPU, fp16 on CUDA)",
    )
    parser.add_argument(
        "--ours-opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config overrides of both models, e.g. MODEL.RETINANET_FL.CHANNELS_LAST False",
    )
    parser.add_argument(
        "--reuse-compile-cache",
        action="store_true",
        help="compile into inductor's on-disk cache as earlier runs left it (default: an empty "
        "one, so that the overhead is that of a first compile)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")


def run_compile(args: argparse.Namespace) -> None:
    """Run the compile benchmark and write its report."""
    low, high = args.short_side
    counts = (args.num_calls, args.steady_repeats, args.train_batch_size)
    if not 32 <= low <= high <= args.max_size or min(counts) < 1:
        raise SystemExit(
            "--short-side MIN MAX needs 32 <= MIN <= MAX <= --max-size, and --num-calls, "
            f"--steady-repeats and --train-batch-size >= 1; got {args.short_side}, "
            f"{args.max_size}, {counts}."
        )
    if len(args.ours_opts) % 2 or COMPILE_KEY in args.ours_opts[::2]:
        raise SystemExit(
            f"--ours-opts takes KEY VALUE pairs other than {COMPILE_KEY} (the benchmark sets it); "
            f"got {args.ours_opts}."
        )
    torch.set_num_threads(args.threads)
    results = benchmark_compile(
        depth=args.depth,
        modes=list(dict.fromkeys(args.modes)),
        num_calls=args.num_calls,
        train_batch_size=args.train_batch_size,
        size_range=(low, high, args.max_size),
        steady_repeats=args.steady_repeats,
        amp=args.precision == "amp",
        ours_opts=args.ours_opts,
        fresh_compile_cache=not args.reuse_compile_cache,
        device=args.device,
        seed=args.seed,
    )
    write_results("compile", results, compile_markdown(results), args.output_dir)

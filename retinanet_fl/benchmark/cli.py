"""The command line: ``python -m retinanet_fl.benchmark {losses,train,inference,all} [options]``."""
import argparse
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

from .common import DEFAULT_OUTPUT_DIR
from .losses import add_losses_arguments, run_losses
from .models import add_inference_arguments, add_train_arguments, run_inference, run_train

# name -> (add its arguments to a parser, run it); "all" runs each in this order.
BENCHMARKS = {
    "losses": (add_losses_arguments, run_losses),
    "train": (add_train_arguments, run_train),
    "inference": (add_inference_arguments, run_inference),
}
# Options every benchmark takes; "all" passes them on.
COMMON_OPTIONS = ("output_dir", "device", "seed")


def build_parser() -> argparse.ArgumentParser:
    from . import __doc__ as description

    parser = argparse.ArgumentParser(prog="python -m retinanet_fl.benchmark", description=description,
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
    # One process per benchmark: measuring CPU memory changes how glibc allocates for the rest of
    # the process (see PeakMemory), which would slow down the timings of the next benchmark.
    for name in BENCHMARKS:
        common = [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in COMMON_OPTIONS]
        subprocess.run([sys.executable, "-m", "retinanet_fl.benchmark", name, *common], check=True)

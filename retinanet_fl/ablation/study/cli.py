"""
``python -m retinanet_fl.ablation study NAME``: run a multi-seed study, resumably, and write its
tables and figure (see :mod:`retinanet_fl.ablation.study`).
"""

import argparse
import shlex
from pathlib import Path
from typing import Sequence

from ..runner import FINISHED, Launcher, read_status
from ..sweeps import check_opts
from .definition import STUDIES_DIR, available_studies, load_study, plan_study, select
from .report import write_study
from .results import collect_runs, measure_trained_regime, measure_training_regime
from .run import run_study

__all__ = ["run_study_command"]


def _study_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retinanet_fl.ablation study",
        description="Run a multi-seed study (configs/ablations/studies/NAME.yaml): every arm at "
        "every point with every seed, resumably; write study_NAME.{md,csv,png} with means, "
        "standard deviations and the paired differences to the reference arm.",
    )
    parser.add_argument("name", help=f"the study, one of {available_studies()}")
    parser.add_argument("--points", nargs="+", default=None, help="run only these points, in order")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="replace the seeds")
    parser.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config overrides appended to every run",
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="forwarded to train_net.py")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where runs and tables go (default output/study_NAME)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their status")
    parser.add_argument(
        "--collect-only", action="store_true", help="rewrite the files from the runs, run nothing"
    )
    parser.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    parser.add_argument("--studies-dir", type=Path, default=STUDIES_DIR, help=argparse.SUPPRESS)
    return parser


def run_study_command(argv: Sequence[str], launcher: Launcher) -> None:
    """Parse the ``study`` subcommand's arguments (``argv``, after "study") and run it."""
    args = _study_parser().parse_args(argv)
    path = args.studies_dir / f"{args.name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"Unknown study '{args.name}': no {path}. "
            f"Available studies: {available_studies(args.studies_dir)}."
        )
    study = select(load_study(path), args.points, args.seeds)
    extra_opts = check_opts(args.opts, "--opts")
    output_dir = args.output_dir or Path("output") / f"study_{study.name}"
    command = " ".join(["python -m retinanet_fl.ablation study", *map(shlex.quote, argv)])
    if args.dry_run:
        runs = plan_study(study, output_dir, extra_opts, args.num_gpus)
        for run in runs:
            status = read_status(run.spec.run_dir)
            print(
                f"{run.point.name} {run.arm.name} seed {run.seed} "
                f"[{status['status'] if status else 'pending'}] runs/{run.spec.run_dir.name}"
            )
        distinct = len({run.spec.run_dir for run in runs})
        print(f"{len(runs)} runs ({distinct} distinct), in {Path(output_dir).resolve()}")
        return
    if args.collect_only:
        runs = plan_study(study, output_dir, extra_opts, args.num_gpus)
        for result in collect_runs(runs):
            if result.status == FINISHED:
                measure_trained_regime(result.run.spec)
        results = collect_runs(runs)
        paths = write_study(study, results, output_dir, command, measure_training_regime)
    else:
        run_study(
            study, output_dir, command, extra_opts, launcher, args.num_gpus, args.retry_failed
        )
        paths = {ext: output_dir / f"study_{study.name}.{ext}" for ext in ("md", "csv", "png")}
    print(f"Study {study.name}: " + ", ".join(str(p) for p in paths.values()))

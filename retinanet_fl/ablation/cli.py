"""
``python -m retinanet_fl.ablation``: run the paper's ablation sweeps, collect their tables, draw
Figures 1 and 4.

    python -m retinanet_fl.ablation --table 1a --dry-run
    python -m retinanet_fl.ablation --table all --preset synthetic
    python -m retinanet_fl.ablation --table 1b --opts SOLVER.MAX_ITER 20000 --num-gpus 8
    python -m retinanet_fl.ablation figure1
    python -m retinanet_fl.ablation figure4 --config-file CFG MODEL.WEIGHTS model_final.pth
    python -m retinanet_fl.ablation stats --config-file CFG [MODEL.WEIGHTS model_final.pth]
    python -m retinanet_fl.ablation study imbalance [--points obj1 obj12] [--seeds 0 1 2]
"""

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .collect import RowResult, collect_results
from .figures import figure1, figure4
from .regime import regime_stats, write_regime
from .runner import (
    FAILED,
    FINISHED,
    Launcher,
    execute_run,
    launch_train_net,
    plan_runs,
    read_status,
)
from .study import (
    STUDIES_DIR,
    available_studies,
    collect_runs,
    load_study,
    measure_trained_regime,
    measure_training_regime,
    plan_study,
    run_study,
    select,
    write_study,
)
from .sweeps import SWEEPS_DIR, TABLE_FILES, Sweep, check_opts, load_sweeps
from .tables import write_table

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = Path("output") / "ablations"


def _notes(sweep: Sweep, extra_opts: Sequence[Any]) -> List[str]:
    shared = [*sweep.base_opts, *sweep.opts]
    notes = [f"Overrides of every run, before the row's: `{' '.join(map(str, shared)) or 'none'}`."]
    if extra_opts:
        notes.append(f"Overrides after the row's (`--opts`): `{' '.join(map(str, extra_opts))}`.")
    return notes


def run_sweep(
    sweep: Sweep,
    output_dir: Path,
    extra_opts: Sequence[Any] = (),
    launcher: Launcher = launch_train_net,
    num_gpus: int = 1,
    retry_failed: bool = False,
    seeds: Optional[Sequence[int]] = None,
) -> List[RowResult]:
    """
    Run a table's rows one after the other, skipping finished ones, and rewrite the table files
    (``output_dir/table_<id>.{md,csv,png}``) after each run. A failed run is recorded and the
    sweep goes on. The tables are also written when the sweep is interrupted.

    Args:
        sweep: the table.
        output_dir: the sweep's output folder (runs go to ``output_dir/runs/``).
        extra_opts: overrides appended to every run.
        launcher: starts one run and returns its exit code (``train_net.py`` in a child process).
        num_gpus: forwarded to every run.
        retry_failed: run failed runs again.
        seeds: run every row once per seed, the whole table seed after seed; the table then
            shows each row's mean ± sd over seeds.

    Returns:
        every row's result.
    """
    runs = plan_runs(sweep, output_dir, extra_opts, num_gpus, seeds)
    notes = _notes(sweep, extra_opts)
    try:
        for row, spec in runs:
            execute_run(row, spec, launcher, retry_failed)
            write_table(sweep, collect_results(runs), output_dir, notes)
    finally:
        # Also when interrupted, so the table shows where the sweep stopped.
        results = collect_results(runs)
        write_table(sweep, results, output_dir, notes)
    return results


def describe_sweeps(
    sweeps: Sequence[Sweep],
    output_dir: Path,
    extra_opts: Sequence[Any] = (),
    seeds: Optional[Sequence[int]] = None,
) -> str:
    """
    The dry run: every table's runs, their status, run folder and config overrides.

    Returns:
        the listing, one line per row under a line per table.
    """
    lines = []
    first_use: Dict[Path, str] = {}
    total_rows = 0
    for sweep in sweeps:
        lines.append(sweep.title)
        lines.append(
            f"  base config: {sweep.base_config}"
            + (f" (preset {sweep.preset})" if sweep.preset else "")
        )
        for row, spec in plan_runs(sweep, output_dir, extra_opts, seeds=seeds):
            status = read_status(spec.run_dir)
            name = row.name if spec.seed is None else f"{row.name} seed {spec.seed}"
            shared = f", same run as {first_use[spec.run_dir]}" if spec.run_dir in first_use else ""
            first_use.setdefault(spec.run_dir, f"{sweep.table}/{name}")
            lines.append(
                f"  {name} [{status['status'] if status else 'pending'}{shared}] "
                f"runs/{spec.run_dir.name}: {' '.join(spec.opts)}"
            )
            total_rows += 1
    lines.append(
        f"{total_rows} rows, {len(first_use)} distinct runs, in {Path(output_dir).resolve()}"
    )
    return "\n".join(lines)


def _sweep_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retinanet_fl.ablation",
        description="Reproduce the paper's ablations (Table 1a-d, Table 3, the prior study) "
        "as train_net.py runs.",
        epilog="Figures: 'python -m retinanet_fl.ablation figure1 --help', '... figure4 --help'; "
        "the imbalance regime: '... stats --help'; multi-seed studies: '... study --help'.",
    )
    parser.add_argument(
        "--table",
        nargs="+",
        required=True,
        choices=[*TABLE_FILES, "all"],
        help="the table(s) to run",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="a reduced version, e.g. 'synthetic' (configs/ablations/presets/)",
    )
    parser.add_argument(
        "--base-config", type=Path, default=None, help="replaces every table's base config"
    )
    parser.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config overrides forwarded to every run, after the row's (e.g. SOLVER.MAX_ITER 1000)",
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="forwarded to train_net.py")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help=f"where runs and tables go (default {DEFAULT_OUTPUT_DIR}, with a preset "
        f"{DEFAULT_OUTPUT_DIR}_<preset>)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list the runs and their config overrides"
    )
    parser.add_argument(
        "--collect-only",
        action="store_true",
        help="rewrite the tables from finished runs, run nothing",
    )
    parser.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="run every row with each SEED (the whole table seed after seed); the tables show "
        "mean ± sd over seeds and each row's paired difference to the first row",
    )
    parser.add_argument("--sweeps-dir", type=Path, default=SWEEPS_DIR, help=argparse.SUPPRESS)
    return parser


def _figure1_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retinanet_fl.ablation figure1",
        description="Plot FL against p_t (the paper's Figure 1).",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT_DIR / "figure1.png")
    return parser


def _figure4_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retinanet_fl.ablation figure4",
        description="Cumulative distribution of a trained model's normalized loss over positive "
        "and negative "
        "samples for several γ (the paper's Figure 4).",
    )
    parser.add_argument("--config-file", required=True, help="the model's config")
    parser.add_argument(
        "--num-images", type=int, default=50, help="images of DATASETS.TEST[0] to use"
    )
    parser.add_argument(
        "--max-negatives", type=int, default=10_000_000, help="negative samples kept, at most"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT_DIR / "figure4.png")
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides, e.g. MODEL.WEIGHTS model_final.pth",
    )
    return parser


def _stats_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retinanet_fl.ablation stats",
        description="The class-imbalance regime of a config on a dataset: anchors per image, "
        "positive / ignored / negative anchors per image, negatives per positive; with "
        "MODEL.WEIGHTS, the share of the negatives' CE loss carried by easy negatives "
        "(p < 0.1).",
    )
    parser.add_argument("--config-file", required=True, help="the model's config")
    parser.add_argument(
        "--dataset", default=None, help="a registered dataset (default: DATASETS.TRAIN[0])"
    )
    parser.add_argument("--num-images", type=int, default=100, help="its first images measured")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="count the anchors of one blank H x W image instead (no dataset needed, e.g. COCO)",
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides, e.g. MODEL.WEIGHTS model_final.pth",
    )
    return parser


def _run_stats(args: argparse.Namespace) -> None:
    from ..config import load_config

    cfg = load_config(args.config_file, list(check_opts(args.opts, "stats overrides")))
    stats = regime_stats(
        cfg,
        dataset=args.dataset,
        num_images=args.num_images,
        image_size=None if args.image_size is None else tuple(args.image_size),
    )
    print(stats.format())
    if args.output:
        print(f"wrote {write_regime(stats, args.output)}")


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


def _run_study(argv: Sequence[str], launcher: Launcher) -> None:
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


def _run_figure4(args: argparse.Namespace) -> None:
    from ..config import load_config

    if args.num_images < 1 or args.max_negatives < 1:
        raise ValueError(
            "--num-images and --max-negatives must be >= 1, "
            f"got {args.num_images} and {args.max_negatives}."
        )
    cfg = load_config(args.config_file, list(check_opts(args.opts, "figure4 overrides")))
    summary = figure4(
        cfg, args.output, num_images=args.num_images, max_negatives=args.max_negatives
    )
    for group, per_gamma in summary.items():
        for gamma, stats in per_gamma.items():
            shares = ", ".join(
                f"{float(key.split('_')[1]):.0%}: {value:.1%}"
                for key, value in stats.items()
                if key.endswith("_share")
            )
            print(f"{group} samples, {gamma}: share of the loss in the hardest {shares}")
    print(f"wrote {args.output} and {args.output.with_suffix('.json')}")


def _setup_logging() -> None:
    """Progress of the sweeps on stderr; the runs' own logs go to their folders."""
    package_logger = logging.getLogger(__package__)
    if not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[ablation] %(message)s"))
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.INFO)


def main(argv: Optional[Sequence[str]] = None, launcher: Launcher = launch_train_net) -> int:
    """
    The command line; see the module docstring.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).
        launcher: starts one run (tests inject their own).

    Returns:
        the exit code: 0, also when runs failed (they are in the tables; the sweep went on).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    if argv and argv[0] == "figure1":
        args = _figure1_parser().parse_args(argv[1:])
        print(f"wrote {figure1(args.output)}")
        return 0
    if argv and argv[0] == "figure4":
        _run_figure4(_figure4_parser().parse_args(argv[1:]))
        return 0
    if argv and argv[0] == "stats":
        _run_stats(_stats_parser().parse_args(argv[1:]))
        return 0
    if argv and argv[0] == "study":
        _run_study(argv[1:], launcher)
        return 0

    args = _sweep_parser().parse_args(argv)
    extra_opts = check_opts(args.opts, "--opts")
    if args.num_gpus < 1:
        raise ValueError(f"--num-gpus must be >= 1, got {args.num_gpus}.")
    tables = ["all"] if "all" in args.table else args.table
    sweeps = load_sweeps(
        tables, preset=args.preset, base_config=args.base_config, sweeps_dir=args.sweeps_dir
    )
    output_dir = args.output_dir or Path(
        f"{DEFAULT_OUTPUT_DIR}_{args.preset}" if args.preset else DEFAULT_OUTPUT_DIR
    )
    if args.dry_run:
        print(describe_sweeps(sweeps, output_dir, extra_opts, args.seeds))
        return 0
    for sweep in sweeps:
        if args.collect_only:
            runs = plan_runs(sweep, output_dir, extra_opts, args.num_gpus, args.seeds)
            results = collect_results(runs)
            paths = write_table(sweep, results, output_dir, _notes(sweep, extra_opts))
        else:
            results = run_sweep(
                sweep,
                output_dir,
                extra_opts,
                launcher,
                args.num_gpus,
                args.retry_failed,
                args.seeds,
            )
            paths = {
                ext: Path(output_dir) / f"table_{sweep.table}.{ext}" for ext in ("md", "csv", "png")
            }
        failed = [r.row.name for r in results if r.status == FAILED]
        print(f"Table {sweep.table}: " + ", ".join(str(p) for p in paths.values()))
        if failed:
            logger.warning(f"Table {sweep.table}: failed runs {failed} (see the table for why)")
    return 0

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
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .analysis_cli import DEFAULT_OUTPUT_DIR, run_figure1, run_figure4, run_stats
from .collect import RowResult, collect_results
from .runner import FAILED, Launcher, execute_run, launch_train_net, plan_runs, read_status
from .study.cli import run_study_command
from .sweeps import SWEEPS_DIR, TABLE_FILES, Sweep, check_opts, load_sweeps
from .tables import write_table

logger = logging.getLogger(__name__)

# The subcommands that train nothing, by name.
_MEASURE_COMMANDS = {"figure1": run_figure1, "figure4": run_figure4, "stats": run_stats}


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
    if argv and argv[0] in _MEASURE_COMMANDS:
        _MEASURE_COMMANDS[argv[0]](argv[1:])
        return 0
    if argv and argv[0] == "study":
        run_study_command(argv[1:], launcher)
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

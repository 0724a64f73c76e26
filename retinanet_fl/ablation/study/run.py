"""Running a study: every (point, arm, seed) in order, resumably, its files rewritten as it goes."""

from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from ..regime import RegimeStats
from ..runner import (
    FAILED,
    FINISHED,
    Launcher,
    execute_run,
    launch_train_net,
    read_status,
)
from ..sweeps import SweepRow
from .definition import Study, StudyRun, plan_study
from .report import write_study
from .results import RunResult, collect_runs, measure_trained_regime, measure_training_regime


def _as_row(run: StudyRun) -> SweepRow:
    """The run as the runner's row (its name goes into logs and the status file)."""
    return SweepRow(
        name=f"{run.point.name}/{run.arm.name}/seed{run.seed}",
        label=run.arm.label,
        columns=(run.point.label, run.arm.label, str(run.seed)),
        opts=(),
        paper=(None, None, None),
    )


def run_study(
    study: Study,
    output_dir: Path,
    command: str,
    extra_opts: Sequence[Any] = (),
    launcher: Launcher = launch_train_net,
    num_gpus: int = 1,
    retry_failed: bool = False,
    measure: Optional[Callable[[Any], RegimeStats]] = measure_training_regime,
) -> List[RunResult]:
    """
    Run the study's runs in order (:func:`plan_study`), skipping finished ones, and rewrite its
    files after each run (also when interrupted).

    Args:
        study: the study.
        output_dir: runs go to ``output_dir/runs/``, the files to ``output_dir``.
        command: the command line, printed in the table.
        extra_opts: overrides appended to every run.
        launcher: starts one run and returns its exit code.
        num_gpus: forwarded to every run.
        retry_failed: run failed runs again.
        measure: measures a point's regime (None: only read cached ones); when given, each
            finished run's model is measured too (:func:`measure_trained_regime`).

    Returns:
        every run's result.
    """
    runs = plan_study(study, output_dir, extra_opts, num_gpus)
    try:
        for run in runs:
            previous = read_status(run.spec.run_dir)
            if previous and (
                previous["status"] == FINISHED
                or (previous["status"] == FAILED and not retry_failed)
            ):
                continue  # done: nothing new to write
            status = execute_run(_as_row(run), run.spec, launcher, retry_failed)
            if status == FINISHED and measure is not None:
                measure_trained_regime(run.spec)
            write_study(study, collect_runs(runs), output_dir, command, measure)
    finally:
        results = collect_runs(runs)
        write_study(study, results, output_dir, command, measure)
    return results

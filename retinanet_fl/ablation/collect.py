"""
Collect a sweep's results: each run's status and AP / AP50 / AP75 (from its ``metrics.json``), and
with several seeds each row's mean ± sd and paired difference (:mod:`.tables` writes them).
"""

import dataclasses
import math
import statistics
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .runner import FINISHED, PENDING, RunSpec, read_eval_results, read_status
from .sweeps import METRICS, SweepRow


@dataclasses.dataclass(frozen=True)
class RowResult:
    """
    Attributes:
        row: the table row.
        run_dir: its run's folder.
        status: "finished", "failed", "running" (or interrupted) or "pending" (never started).
        metrics: our ``{"AP", "AP50", "AP75"}`` (and per-class ``AP-<class>``) if finished, else
            None.
        error: why the run failed, or "".
        seed: the run's ``SEED`` in a multi-seed sweep, else None.
    """

    row: SweepRow
    run_dir: Path
    status: str
    metrics: Optional[Dict[str, float]]
    error: str = ""
    seed: Optional[int] = None

    def delta(self, index: int) -> Optional[float]:
        """Ours minus the paper's for ``METRICS[index]``, or None if either is missing."""
        paper = self.row.paper[index]
        if self.metrics is None or paper is None:
            return None
        return self.metrics[METRICS[index]] - paper


@dataclasses.dataclass(frozen=True)
class Spread:
    """
    Attributes:
        values: the per-seed values the statistics are over, by seed.
        mean: their mean (NaN without values).
        sd: their sample standard deviation (NaN with fewer than 2 values).
    """

    values: Mapping[int, float]
    mean: float
    sd: float

    @classmethod
    def of(cls, values: Mapping[int, float]) -> "Spread":
        """Returns: the mean and sample standard deviation of ``values`` (NaN ones left out)."""
        kept = {seed: v for seed, v in values.items() if not math.isnan(v)}
        numbers = list(kept.values())
        mean = statistics.fmean(numbers) if numbers else math.nan
        sd = statistics.stdev(numbers) if len(numbers) >= 2 else math.nan
        return cls(kept, mean, sd)

    @property
    def n(self) -> int:
        """Returns: the number of values."""
        return len(self.values)

    def format(self, signed: bool = False) -> str:
        """
        Args:
            signed: write the mean with its sign (a difference).

        Returns:
            "mean ± sd (n=N)", "mean (n=1)" or "–".
        """
        if not self.n:
            return "–"
        mean = f"{self.mean:+.1f}" if signed else f"{self.mean:.1f}"
        if self.n == 1:
            return f"{mean} (n=1)"
        return f"{mean} ± {self.sd:.1f} (n={self.n})"


def collect_results(runs: Sequence[Tuple[SweepRow, RunSpec]]) -> List[RowResult]:
    """
    Args:
        runs: (row, run) pairs from :func:`~retinanet_fl.ablation.runner.plan_runs`.

    Returns:
        each row's status and our metrics, read from its run folder.
    """
    results = []
    for row, spec in runs:
        status = read_status(spec.run_dir)
        state = status["status"] if status else PENDING
        metrics = read_eval_results(spec.run_dir) if state == FINISHED else None
        error = status.get("error", "") if status else ""
        results.append(RowResult(row, spec.run_dir, state, metrics, error, spec.seed))
    return results


@dataclasses.dataclass(frozen=True)
class SeededRow:
    """
    A row of a multi-seed sweep.

    Attributes:
        row: the table row.
        results: its runs, one per seed.
        metrics: per metric, the spread over the finished seeds (a run without detections,
            COCOEvaluator's NaN, counts as 0).
        vs_first: per metric, the spread of the paired difference to the table's first row
            (same seed, both finished).
    """

    row: SweepRow
    results: Tuple[RowResult, ...]
    metrics: Mapping[str, Spread]
    vs_first: Mapping[str, Spread]


def _finished_values(results: Sequence[RowResult], metric: str) -> Dict[int, float]:
    # A run whose metrics.json lacks the key (a per-class AP of an older run) is left out.
    return {
        r.seed: (0.0 if math.isnan(r.metrics[metric]) else r.metrics[metric])
        for r in results
        if r.metrics is not None and metric in r.metrics
    }


def summarize_seeds(
    results: Sequence[RowResult], extra_metrics: Sequence[str] = ()
) -> List[SeededRow]:
    """
    Args:
        results: a multi-seed sweep's results (every result has a seed).
        extra_metrics: keys of the runs' metrics summarized besides ``METRICS`` (e.g.
            ``AP-blue_triangle``), with their paired differences too.

    Returns:
        one entry per row, in the table's order: mean and sd over seeds, and the paired
        difference to the first row.
    """
    by_row: Dict[str, List[RowResult]] = {}
    for result in results:
        by_row.setdefault(result.row.name, []).append(result)
    groups = list(by_row.values())
    first = groups[0] if groups else []
    rows = []
    for group in groups:
        vs_first = {}
        for metric in (*METRICS, *extra_metrics):
            mine, reference = _finished_values(group, metric), _finished_values(first, metric)
            vs_first[metric] = Spread.of(
                {seed: v - reference[seed] for seed, v in mine.items() if seed in reference}
            )
        metrics = {m: Spread.of(_finished_values(group, m)) for m in (*METRICS, *extra_metrics)}
        rows.append(SeededRow(group[0].row, tuple(group), metrics, vs_first))
    return rows

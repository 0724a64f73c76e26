"""A study's runs collected: each run's AP; per point, each arm's mean, sd and paired difference."""

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ...config import load_config
from ..collect import Spread
from ..regime import RegimeStats, read_regime, regime_stats, write_regime
from ..runner import (
    FINISHED,
    PENDING,
    RunSpec,
    format_opts,
    read_eval_results,
    read_status,
)
from ..sweeps import METRICS
from .definition import (
    REGIME_DIR,
    REGIME_NUM_IMAGES,
    TRAINED_FIELDS,
    TRAINED_REGIME_FILE,
    TRAINED_REGIME_NUM_IMAGES,
    Study,
    StudyPoint,
    StudyRun,
    run_opts,
)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """
    A run's outcome: its status, its metrics if finished, its error if failed, and its model's
    regime on the validation images if measured (:func:`measure_trained_regime`).
    """

    run: StudyRun
    status: str
    metrics: Optional[Dict[str, float]]
    error: str
    trained: Optional[RegimeStats] = None


@dataclasses.dataclass(frozen=True)
class PointResult:
    """
    Attributes:
        point: the point.
        regime: its measured regime (training data, no model), or None if not measured.
        arms: per arm name, per metric, the spread over seeds.
        differences: per non-reference arm name, per metric, the spread of the paired
            differences arm − reference over the seeds where both finished.
        trained: per arm name, per ``TRAINED_FIELDS`` entry, the spread over seeds of its trained
            models' regime on the validation images (in percent; ratios as they are).
    """

    point: StudyPoint
    regime: Optional[RegimeStats]
    arms: Mapping[str, Mapping[str, Spread]]
    differences: Mapping[str, Mapping[str, Spread]]
    trained: Mapping[str, Mapping[str, Spread]] = dataclasses.field(default_factory=dict)

    def verdict(self, arm: str) -> str:
        """
        Returns:
            "<arm> ahead" or "<reference> ahead" when the mean paired AP difference exceeds its
            standard deviation over seeds, "within the seed spread" otherwise, "–" with fewer than
            2 pairs.
        """
        diff = self.differences[arm]["AP"]
        if diff.n < 2:
            return "–"
        if abs(diff.mean) <= diff.sd:
            return "within the seed spread"
        return "ahead" if diff.mean > 0 else "behind"


def collect_runs(runs: Sequence[StudyRun]) -> List[RunResult]:
    """Returns: every run's status, its metrics when finished, its trained regime if measured."""
    results = []
    for run in runs:
        status = read_status(run.spec.run_dir)
        state = status["status"] if status else PENDING
        metrics = read_eval_results(run.spec.run_dir) if state == FINISHED else None
        regime_path = run.spec.run_dir / TRAINED_REGIME_FILE
        trained = read_regime(regime_path) if state == FINISHED and regime_path.is_file() else None
        error = status.get("error", "") if status else ""
        results.append(RunResult(run, state, metrics, error, trained))
    return results


def measure_trained_regime(spec: RunSpec) -> Optional[RegimeStats]:
    """
    Measure a finished run's final model on the first ``TRAINED_REGIME_NUM_IMAGES`` images of its
    ``DATASETS.TEST[0]``: the easy negatives' share of its negatives' CE and FL loss (cached in
    the run folder as ``TRAINED_REGIME_FILE``).

    Returns:
        the regime, or None if the run has no final model.
    """
    path = spec.run_dir / TRAINED_REGIME_FILE
    if path.is_file():
        return read_regime(path)
    weights = spec.run_dir / "model_final.pth"
    if not weights.is_file():
        return None
    cfg = load_config(str(spec.config_file), list(spec.opts))
    cfg.MODEL.WEIGHTS = str(weights)
    stats = regime_stats(cfg, dataset=cfg.DATASETS.TEST[0], num_images=TRAINED_REGIME_NUM_IMAGES)
    write_regime(stats, path)
    return stats


def point_regime(
    study: Study,
    point: StudyPoint,
    output_dir: Path,
    measure: Optional[Callable[[Any], RegimeStats]] = None,
) -> Optional[RegimeStats]:
    """
    The point's regime on its training data (the reference arm's config, first seed), cached in
    ``output_dir/regime/<point>.json``.

    Args:
        study, point: the point.
        output_dir: the study's output folder.
        measure: computes the regime from a config; None: only read the cache.

    Returns:
        the regime, or None when not cached and not measured.
    """
    path = Path(output_dir) / REGIME_DIR / f"{point.name}.json"
    if path.is_file():
        return read_regime(path)
    if measure is None:
        return None
    reference = next(a for a in study.arms if a.name == study.reference)
    opts = format_opts(run_opts(study, point, reference, study.seeds[0]))
    cfg = load_config(str(study.base_config), list(opts))
    cfg.MODEL.WEIGHTS = ""
    stats = measure(cfg)
    write_regime(stats, path)
    return stats


def measure_training_regime(cfg) -> RegimeStats:
    """Returns: the regime of the config's training data (first ``REGIME_NUM_IMAGES`` images)."""
    return regime_stats(cfg, num_images=REGIME_NUM_IMAGES)


def summarize(
    study: Study,
    results: Sequence[RunResult],
    regimes: Mapping[str, Optional[RegimeStats]],
) -> List[PointResult]:
    """
    Args:
        study: the study.
        results: its runs' results.
        regimes: per point name, its regime (or None).

    Returns:
        per point, each arm's spread over seeds and the paired differences to the reference.
    """
    summaries = []
    for point in study.points:
        per_arm: Dict[str, Dict[str, Dict[int, float]]] = {
            arm.name: {m: {} for m in METRICS} for arm in study.arms
        }
        for result in results:
            if result.run.point.name == point.name and result.metrics is not None:
                for metric in METRICS:
                    value = result.metrics[metric]
                    # COCOEvaluator's NaN: the model detected nothing, which scores 0.
                    per_arm[result.run.arm.name][metric][result.run.seed] = (
                        0.0 if math.isnan(value) else value
                    )
        reference = per_arm[study.reference]
        differences = {}
        for arm in study.arms:
            if arm.name == study.reference:
                continue
            differences[arm.name] = {
                metric: Spread.of(
                    {
                        seed: value - reference[metric][seed]
                        for seed, value in per_arm[arm.name][metric].items()
                        if seed in reference[metric]
                    }
                )
                for metric in METRICS
            }
        arms = {
            name: {metric: Spread.of(values) for metric, values in by_metric.items()}
            for name, by_metric in per_arm.items()
        }
        trained = {
            arm.name: {
                field: Spread.of(
                    {
                        r.run.seed: getattr(r.trained, field) * scale
                        for r in results
                        if r.run.point.name == point.name
                        and r.run.arm.name == arm.name
                        and r.trained is not None
                    }
                )
                for field, scale in TRAINED_FIELDS.items()
            }
            for arm in study.arms
        }
        summaries.append(PointResult(point, regimes.get(point.name), arms, differences, trained))
    return summaries

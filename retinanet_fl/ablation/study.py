"""
Multi-seed studies: arms (e.g. FL and α-balanced CE) compared at several points (e.g. datasets with
more or fewer negatives per positive anchor), every (point, arm) trained with several seeds.

A study is data, ``configs/ablations/studies/NAME.yaml``: a base config and overrides, the seeds,
the arms with their overrides, the reference arm, and the points with theirs (plus overrides of one
arm at one point, ``ARM_OPTS``, e.g. a learning rate for FL only). Every (point, arm, seed) is an
ordinary ``train_net.py`` run of :mod:`.runner`, so a run that two points share (the same config)
trains once, finished runs are skipped and an interrupted one resumes.

The collector computes, per point, each arm's mean and standard deviation of AP over seeds and the
*paired* difference arm − reference (same seed, both finished), and measures the point's regime
(:mod:`.regime`: negatives per positive anchor) on its training data; it writes
``study_<name>.md``, ``.csv`` (one line per point and arm), ``_runs.csv`` (one line per run) and
``.png`` (ΔAP against negatives per positive, with error bars).
"""

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .collect import Spread, _relative
from .regime import RegimeStats, read_regime, write_regime
from .runner import (
    FAILED,
    FINISHED,
    PENDING,
    Launcher,
    RunSpec,
    execute_run,
    format_opts,
    launch_train_net,
    make_run_spec,
    read_eval_results,
    read_status,
)
from .sweeps import METRICS, REPO_ROOT, SWEEPS_DIR, SweepRow, _check_keys, _load_yaml, check_opts

STUDIES_DIR = SWEEPS_DIR / "studies"
REGIME_DIR = "regime"
REGIME_NUM_IMAGES = 200
# A finished run's model on its validation images: how much of the loss the easy negatives carry.
TRAINED_REGIME_FILE = "regime_val.json"
TRAINED_REGIME_NUM_IMAGES = 50
# Ticks of the plot's log axis of negatives per positive.
LOG_TICKS = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)

# Fields of a trained model's regime that the collector averages over seeds, and their scale.
TRAINED_FIELDS: Dict[str, float] = {
    "easy_negative_fraction": 100.0,
    "easy_negative_ce_share": 100.0,
    "easy_negative_fl_share": 100.0,
    "negative_to_positive_ce": 1.0,
}

_STUDY_KEYS = {
    "STUDY",
    "TITLE",
    "DESCRIPTION",
    "BASE_CONFIG",
    "BASE_OPTS",
    "SEEDS",
    "REFERENCE",
    "ARMS",
    "POINTS",
}
_ARM_KEYS = {"NAME", "LABEL", "OPTS"}
_POINT_KEYS = {"NAME", "LABEL", "GROUP", "OPTS", "ARM_OPTS"}


@dataclasses.dataclass(frozen=True)
class StudyArm:
    """
    One of the methods compared at every point.

    Attributes:
        name: identifier (e.g. ``fl``).
        label: text for tables and plots.
        opts: its config overrides.
    """

    name: str
    label: str
    opts: Tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class StudyPoint:
    """
    One setting at which the arms are compared.

    Attributes:
        name: identifier (e.g. ``obj1``).
        label: text for tables and plots.
        group: the series it belongs to in the plot (e.g. "objects per image").
        opts: its config overrides, applied before the arm's.
        arm_opts: overrides of single arms at this point, applied after the arm's.
    """

    name: str
    label: str
    group: str
    opts: Tuple[Any, ...]
    arm_opts: Mapping[str, Tuple[Any, ...]]


@dataclasses.dataclass(frozen=True)
class Study:
    """
    Attributes:
        name: the id given on the command line (e.g. ``imbalance``).
        title: caption of the table and the plot.
        description: the setting in a sentence.
        base_config: the config file every run starts from.
        base_opts: overrides of every run, first.
        seeds: the ``SEED`` of each repetition.
        reference: the arm the others are compared with.
        arms: the methods compared.
        points: the settings, in the order they run.
    """

    name: str
    title: str
    description: str
    base_config: Path
    base_opts: Tuple[Any, ...]
    seeds: Tuple[int, ...]
    reference: str
    arms: Tuple[StudyArm, ...]
    points: Tuple[StudyPoint, ...]


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One (point, arm, seed) training run."""

    point: StudyPoint
    arm: StudyArm
    seed: int
    spec: RunSpec


def _unique(names: Sequence[str], where: str) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{where}: NAMEs must be unique, repeated: {repeated}.")


def load_study(path: Path) -> Study:
    """
    Read a study file.

    Args:
        path: e.g. ``configs/ablations/studies/imbalance.yaml``; its ``BASE_CONFIG`` is relative
            to its folder.

    Returns:
        the study.
    """
    path = Path(path)
    data = _load_yaml(path, "Study")
    where = str(path)
    _check_keys(data, _STUDY_KEYS, _STUDY_KEYS - {"DESCRIPTION", "BASE_OPTS"}, where)
    arms = []
    for i, arm in enumerate(data["ARMS"] or []):
        _check_keys(arm, _ARM_KEYS, {"NAME", "OPTS"}, f"{where} ARMS[{i}]")
        name = str(arm["NAME"])
        opts = check_opts(arm["OPTS"], f"{where} ARMS[{i}] ({name}) OPTS")
        arms.append(StudyArm(name, str(arm.get("LABEL", name)), opts))
    if len(arms) < 2:
        raise ValueError(f"{where}: a study compares at least 2 ARMS, got {len(arms)}.")
    _unique([a.name for a in arms], f"{where} ARMS")
    arm_names = [a.name for a in arms]
    reference = str(data["REFERENCE"])
    if reference not in arm_names:
        raise ValueError(f"{where}: REFERENCE '{reference}' is not an arm; arms are {arm_names}.")
    points = []
    for i, point in enumerate(data["POINTS"] or []):
        at = f"{where} POINTS[{i}]"
        _check_keys(point, _POINT_KEYS, {"NAME", "OPTS"}, at)
        name = str(point["NAME"])
        arm_opts = {}
        for arm, opts in (point.get("ARM_OPTS") or {}).items():
            if arm not in arm_names:
                raise ValueError(f"{at} ({name}): ARM_OPTS names '{arm}', not an arm {arm_names}.")
            arm_opts[str(arm)] = check_opts(opts, f"{at} ({name}) ARM_OPTS.{arm}")
        points.append(
            StudyPoint(
                name=name,
                label=str(point.get("LABEL", name)),
                group=str(point.get("GROUP", "")),
                opts=check_opts(point["OPTS"], f"{at} ({name}) OPTS"),
                arm_opts=arm_opts,
            )
        )
    if not points:
        raise ValueError(f"{where}: POINTS is empty.")
    _unique([p.name for p in points], f"{where} POINTS")
    seeds = data["SEEDS"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{where}: SEEDS must be a non-empty list of integers, got {seeds!r}.")
    return Study(
        name=str(data["STUDY"]),
        title=str(data["TITLE"]),
        description=str(data.get("DESCRIPTION", "")),
        base_config=(path.parent / data["BASE_CONFIG"]).resolve(),
        base_opts=check_opts(data.get("BASE_OPTS", []), f"{where} BASE_OPTS"),
        seeds=tuple(seeds),
        reference=reference,
        arms=tuple(arms),
        points=tuple(points),
    )


def available_studies(studies_dir: Path = STUDIES_DIR) -> List[str]:
    """Returns: the names of the study files in ``studies_dir``."""
    return sorted(p.stem for p in Path(studies_dir).glob("*.yaml"))


def select(
    study: Study, points: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None
) -> Study:
    """
    Returns:
        the study restricted to some points (in the order given) and with other seeds.
    """
    if points:
        by_name = {p.name: p for p in study.points}
        unknown = [p for p in points if p not in by_name]
        if unknown:
            raise ValueError(
                f"Study {study.name} has no point(s) {unknown}; its points are {list(by_name)}."
            )
        study = dataclasses.replace(study, points=tuple(by_name[p] for p in points))
    if seeds:
        study = dataclasses.replace(study, seeds=tuple(seeds))
    return study


def run_opts(study: Study, point: StudyPoint, arm: StudyArm, seed: int) -> List[Any]:
    """
    Returns:
        one run's overrides, in order: the study's, the point's, the arm's, the point's for that
        arm, then ``SEED``.
    """
    return [
        *study.base_opts,
        *point.opts,
        *arm.opts,
        *point.arm_opts.get(arm.name, ()),
        "SEED",
        seed,
    ]


def plan_study(
    study: Study, output_dir: Path, extra_opts: Sequence[Any] = (), num_gpus: int = 1
) -> List[StudyRun]:
    """
    The study's runs, point by point, each point seed by seed, each seed arm by arm: the first
    point is complete, with every seed, before the second starts.

    Args:
        study: the study.
        output_dir: runs go to ``output_dir/runs/<digest>``.
        extra_opts: overrides appended to every run (``--opts``).
        num_gpus: forwarded to every run.

    Returns:
        the runs in the order they are run.
    """
    runs = []
    for point in study.points:
        for seed in study.seeds:
            for arm in study.arms:
                opts = format_opts([*run_opts(study, point, arm, seed), *extra_opts])
                where = f"Study {study.name}, point {point.name}, arm {arm.name}"
                spec = make_run_spec(study.base_config, opts, output_dir, num_gpus, where)
                runs.append(StudyRun(point, arm, seed, spec))
    return runs


def _as_row(run: StudyRun) -> SweepRow:
    """The run as the runner's row (its name goes into logs and the status file)."""
    return SweepRow(
        name=f"{run.point.name}/{run.arm.name}/seed{run.seed}",
        label=run.arm.label,
        columns=(run.point.label, run.arm.label, str(run.seed)),
        opts=(),
        paper=(None, None, None),
    )


# ---------------------------------------------------------------------------------------------
# Collecting
# ---------------------------------------------------------------------------------------------
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
    from ..config import load_config
    from .regime import regime_stats

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
    from ..config import load_config

    reference = next(a for a in study.arms if a.name == study.reference)
    opts = format_opts(run_opts(study, point, reference, study.seeds[0]))
    cfg = load_config(str(study.base_config), list(opts))
    cfg.MODEL.WEIGHTS = ""
    stats = measure(cfg)
    write_regime(stats, path)
    return stats


def measure_training_regime(cfg) -> RegimeStats:
    """Returns: the regime of the config's training data (first ``REGIME_NUM_IMAGES`` images)."""
    from .regime import regime_stats

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


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _cell(value: Optional[float]) -> str:
    return "" if value is None or math.isnan(value) else repr(round(value, 4))


def _ratio(regime: Optional[RegimeStats]) -> Optional[float]:
    return None if regime is None else regime.negatives_per_positive


def write_study_csv(study: Study, summaries: Sequence[PointResult], path: Path) -> None:
    """
    One line per point and arm: the regime, each metric's mean, sd and n over seeds, the per-seed
    APs, and for non-reference arms the paired difference to the reference (mean, sd, n).
    """
    header = [
        "point",
        "group",
        "label",
        "arm",
        "negatives_per_positive",
        "positive_per_image",
        "objects_per_image",
    ]
    for metric in METRICS:
        header += [f"{metric}_mean", f"{metric}_sd", f"{metric}_n"]
    header += ["AP_per_seed"]
    for metric in METRICS:
        header += [f"delta_{metric}_mean", f"delta_{metric}_sd", f"delta_{metric}_n"]
    header += ["verdict"]
    for field in TRAINED_FIELDS:
        header += [f"val_{field}_mean", f"val_{field}_sd"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for summary in summaries:
            regime = summary.regime
            for arm in study.arms:
                spreads = summary.arms[arm.name]
                row = [
                    summary.point.name,
                    summary.point.group,
                    summary.point.label,
                    arm.name,
                    _cell(_ratio(regime)),
                    _cell(regime.positive_per_image if regime else None),
                    _cell(regime.objects_per_image if regime else None),
                ]
                for metric in METRICS:
                    s = spreads[metric]
                    row += [_cell(s.mean), _cell(s.sd), s.n]
                row.append(
                    " ".join(f"{seed}:{v:.2f}" for seed, v in sorted(spreads["AP"].values.items()))
                )
                diff = summary.differences.get(arm.name)
                for metric in METRICS:
                    if diff is None:
                        row += ["", "", ""]
                    else:
                        row += [_cell(diff[metric].mean), _cell(diff[metric].sd), diff[metric].n]
                row.append(summary.verdict(arm.name) if diff is not None else "")
                for field in TRAINED_FIELDS:
                    spread = summary.trained[arm.name][field]
                    row += [_cell(spread.mean), _cell(spread.sd)]
                writer.writerow(row)


def write_runs_csv(results: Sequence[RunResult], path: Path) -> None:
    """One line per run: point, arm, seed, status, AP / AP50 / AP75, error, run folder."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["point", "arm", "seed", "status", *METRICS, "error", "run_dir"])
        for r in results:
            metrics = [r.metrics[m] if r.metrics else None for m in METRICS]
            writer.writerow(
                [
                    r.run.point.name,
                    r.run.arm.name,
                    r.run.seed,
                    r.status,
                    *map(_cell, metrics),
                    r.error,
                    str(_relative(r.run.spec.run_dir, Path(path).parent)),
                ]
            )


def write_study_markdown(
    study: Study,
    summaries: Sequence[PointResult],
    results: Sequence[RunResult],
    path: Path,
    command: str,
) -> None:
    """
    The study as a Markdown table: per point its regime, each arm's AP mean ± sd, the paired
    difference and the verdict; then the runs' states.
    """
    others = [a for a in study.arms if a.name != study.reference]
    reference = next(a for a in study.arms if a.name == study.reference)
    base_config = study.base_config
    if base_config.is_relative_to(REPO_ROOT):
        base_config = base_config.relative_to(REPO_ROOT)
    lines = [
        f"# {study.title}",
        "",
        f"Setting: {study.description}.",
        "",
        f"Base config: `{base_config}`; study file: `configs/ablations/studies/{study.name}.yaml`; "
        f"seeds {', '.join(map(str, study.seeds))}.",
        "",
        f"Command: `{command}`",
        "",
        "AP on each point's validation set, mean ± sample standard deviation over the seeds that "
        f"finished (n); Δ is the paired difference arm − {reference.label} over the seeds where "
        "both finished; a model without detections (COCOEvaluator's NaN) counts as AP 0. "
        "'ahead' / 'behind': |mean Δ| exceeds the sd of Δ. Negatives per positive: "
        f"anchors, on the first {REGIME_NUM_IMAGES} training images "
        "(`python -m retinanet_fl.ablation stats`).",
        "",
    ]
    header = ["point", "group", "neg / pos", "pos anchors / image", f"{reference.label} AP"]
    for arm in others:
        header += [f"{arm.label} AP", f"Δ AP ({arm.name} − {reference.name})", "Δ AP50", "verdict"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for summary in summaries:
        regime = summary.regime
        cells = [
            summary.point.label,
            summary.point.group,
            f"{regime.negatives_per_positive:.0f}" if regime else "–",
            f"{regime.positive_per_image:.1f}" if regime else "–",
            summary.arms[reference.name]["AP"].format(),
        ]
        for arm in others:
            diff = summary.differences[arm.name]
            delta = diff["AP"]
            delta_text = (
                "–"
                if not delta.n
                else f"{delta.mean:+.1f}" + (f" ± {delta.sd:.1f}" if delta.n > 1 else "")
            )
            delta50 = diff["AP50"]
            cells += [
                summary.arms[arm.name]["AP"].format(),
                delta_text,
                "–" if not delta50.n else f"{delta50.mean:+.1f}",
                summary.verdict(arm.name),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    if any(
        spread.n
        for s in summaries
        for by_field in s.trained.values()
        for spread in by_field.values()
    ):
        lines += [
            "",
            "The trained models on their validation images (first "
            f"{TRAINED_REGIME_NUM_IMAGES}; mean ± sd over seeds): the share of negative samples "
            "that are easy (p < 0.1), the share of the negatives' CE they carry, the same for FL "
            "γ = 2, and the negatives' CE over the positives' CE.",
            "",
            "| point | arm | easy negatives % | their % of negatives' CE | their % of FL | "
            "neg CE / pos CE |",
            "|---|---|---|---|---|---|",
        ]
        for summary in summaries:
            for arm in study.arms:
                spreads = summary.trained[arm.name]
                if not any(sp.n for sp in spreads.values()):
                    continue
                lines.append(
                    f"| {summary.point.label} | {arm.label} | "
                    + " | ".join(spreads[field].format() for field in TRAINED_FIELDS)
                    + " |"
                )
    counts: Dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    lines += ["", "Runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "."]
    failures = [r for r in results if r.status == FAILED]
    if failures:
        lines += ["", "Failed runs:", ""]
        lines += [
            f"- {r.run.point.name} / {r.run.arm.name} / seed {r.run.seed}: {r.error}"
            for r in failures
        ]
    lines += ["", f"Per run (point, arm, seed, AP, run folder): `study_{study.name}_runs.csv`."]
    Path(path).write_text("\n".join(lines) + "\n")


def plot_study(study: Study, summaries: Sequence[PointResult], path: Path) -> None:
    """
    Left: the paired ΔAP (mean ± sd over seeds) of each non-reference arm against negatives per
    positive anchor, one series per group. Right: each arm's AP (mean ± sd) against the same axis.
    Each group's markers are shifted right by 4 % per group, so that points on the same data stay
    apart. Points without a measured regime or without results are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    others = [a for a in study.arms if a.name != study.reference]
    reference = next(a for a in study.arms if a.name == study.reference)
    groups = list(dict.fromkeys(s.point.group for s in summaries))
    markers = "osD^v<>px"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.5))
    for g, group in enumerate(groups):
        # Groups that share a regime (same data, another setting) are shifted apart a little.
        offset = 1.0 + 0.04 * g
        members = sorted(
            (s for s in summaries if s.point.group == group and s.regime is not None),
            key=lambda s: s.regime.negatives_per_positive,
        )
        for arm in others:
            shown = [s for s in members if s.differences[arm.name]["AP"].n]
            if not shown:
                continue
            left.errorbar(
                [s.regime.negatives_per_positive * offset for s in shown],
                [s.differences[arm.name]["AP"].mean for s in shown],
                yerr=[_zero_if_nan(s.differences[arm.name]["AP"].sd) for s in shown],
                fmt=markers[g % len(markers)] + ("-" if len(shown) > 1 else ""),
                capsize=4,
                label=f"{group}" + (f" ({arm.name})" if len(others) > 1 else ""),
            )
            for s in shown:
                left.annotate(
                    s.point.label,
                    (s.regime.negatives_per_positive * offset, s.differences[arm.name]["AP"].mean),
                    textcoords="offset points",
                    xytext=(5, 5),
                    fontsize=7,
                )
        for a, arm in enumerate(study.arms):
            shown = [s for s in members if s.arms[arm.name]["AP"].n]
            if not shown:
                continue
            right.errorbar(
                [s.regime.negatives_per_positive * offset for s in shown],
                [s.arms[arm.name]["AP"].mean for s in shown],
                yerr=[_zero_if_nan(s.arms[arm.name]["AP"].sd) for s in shown],
                fmt=markers[g % len(markers)] + ("-" if len(shown) > 1 else ""),
                color=f"C{a}",
                capsize=4,
                label=f"{arm.label}, {group}",
            )
    left.axhline(0.0, color="gray", lw=1)
    ratios = [
        s.regime.negatives_per_positive
        for s in summaries
        if s.regime is not None and any(spreads["AP"].n for spreads in s.arms.values())
    ]
    for ax in (left, right):
        ax.set_xscale("log")
        if ratios:
            # Round numbers in the data's range, without matplotlib's crowded minor labels.
            ticks = [t for t in LOG_TICKS if min(ratios) / 1.5 <= t <= max(ratios) * 1.5]
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("negative anchors per positive anchor (training images; groups offset)")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    left.set_ylabel(f"Δ AP, arm − {reference.label} (mean ± sd over seeds)")
    right.set_ylabel("AP (mean ± sd over seeds)")
    fig.suptitle(study.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _zero_if_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def write_study(
    study: Study,
    results: Sequence[RunResult],
    output_dir: Path,
    command: str,
    measure: Optional[Callable[[Any], RegimeStats]] = None,
) -> Dict[str, Path]:
    """
    Summarize the runs and write ``study_<name>.md``, ``.csv``, ``_runs.csv`` and ``.png``.

    Args:
        study: the study.
        results: its runs' results (:func:`collect_runs`).
        output_dir: where the files go; regimes are cached in ``output_dir/regime/``.
        command: the command that reproduces the study, printed in the table.
        measure: measures a point's regime from its config when not cached (None: cache only).

    Returns:
        the paths, keyed by "md", "csv", "runs_csv", "png".
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    regimes = {p.name: point_regime(study, p, output_dir, measure) for p in study.points}
    summaries = summarize(study, results, regimes)
    stem = f"study_{study.name}"
    paths = {
        "md": output_dir / f"{stem}.md",
        "csv": output_dir / f"{stem}.csv",
        "runs_csv": output_dir / f"{stem}_runs.csv",
        "png": output_dir / f"{stem}.png",
    }
    write_study_markdown(study, summaries, results, paths["md"], command)
    write_study_csv(study, summaries, paths["csv"])
    write_runs_csv(results, paths["runs_csv"])
    plot_study(study, summaries, paths["png"])
    return paths


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

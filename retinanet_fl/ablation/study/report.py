"""A study's files: CSVs, the Markdown table and the plot of ΔAP against negatives per positive."""

import csv
import math
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from ...model_zoo import CONFIGS_DIR
from ..regime import RegimeStats
from ..runner import (
    FAILED,
)
from ..sweeps import METRICS
from ..tables import _relative
from .definition import REGIME_NUM_IMAGES, TRAINED_FIELDS, TRAINED_REGIME_NUM_IMAGES, Study
from .results import PointResult, RunResult, point_regime, summarize

# Ticks of the plot's log axis of negatives per positive.
LOG_TICKS = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


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
    if base_config.is_relative_to(CONFIGS_DIR):  # shown as the repository's configs/ path
        base_config = "configs" / base_config.relative_to(CONFIGS_DIR)
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

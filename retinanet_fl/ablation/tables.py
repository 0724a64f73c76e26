"""
A sweep's results in the paper's table layout: ``table_<id>.md``, ``.csv`` and ``.png``. Each row
shows our AP / AP50 / AP75, the paper's, and ours minus the paper's (with several seeds: mean ± sd,
each seed's AP and the paired difference to the first row; then the table's extra metrics, such
as one class's AP); failed runs appear as failed with their
error, runs not done yet as pending.
"""

import csv
import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..model_zoo import CONFIGS_DIR
from .collect import RowResult, SeededRow, summarize_seeds
from .runner import FAILED
from .sweeps import METRICS, Sweep, SweepRow


def _seeds_text(seeded: SeededRow) -> str:
    return " / ".join(
        f"{r.metrics['AP']:.1f}" if r.metrics else r.status
        for r in sorted(seeded.results, key=lambda r: r.seed)
    )


def _extra_cell(entry: SeededRow, key: str, is_first: bool) -> str:
    """An extra metric's mean ± sd and, below the first row, its paired difference to it."""
    cell = entry.metrics[key].format()
    paired = entry.vs_first[key]
    return cell if is_first or not paired.n else f"{cell}; Δ {paired.format(signed=True)}"


def write_seeded_markdown(
    sweep: Sweep, results: Sequence[RowResult], path: Path, notes: Sequence[str] = ()
) -> None:
    """
    A multi-seed table in Markdown: per row, AP / AP50 / AP75 as mean ± sd over seeds, the
    table's extra metrics (mean ± sd and the paired difference to the first row), each seed's
    AP, the paired AP difference to the first row, and the paper's AP (if the table has any).
    """
    extra = sweep.extra_metrics
    seeded = summarize_seeds(results, [key for _, key in extra])
    seeds = sorted({r.seed for r in results})
    first = seeded[0].row.columns if seeded else ()
    # A table beyond the paper (no paper numbers at all) has no paper column.
    with_paper = any(v is not None for r in sweep.rows for v in r.paper) or any(
        r.paper_note for r in sweep.rows
    )
    header = [
        *sweep.columns,
        "AP (mean ± sd)",
        "AP50",
        "AP75",
        *(label for label, _ in extra),
        f"AP per seed ({' / '.join(map(str, seeds))})",
        f"ΔAP vs {' '.join(first)} (paired)",
        *(["paper AP"] if with_paper else []),
    ]
    lines = [f"# {sweep.title}", "", _setting(sweep), "", f"Seeds: {', '.join(map(str, seeds))}."]
    lines += [""] + [f"{note}" for note in notes] + ([""] if notes else [])
    lines += [
        "Mean ± sample standard deviation over the seeds that finished (n); a run without "
        "detections counts as AP 0. ΔAP: the row minus the first row, seed by seed.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for entry in seeded:
        delta = entry.vs_first["AP"]
        lines.append(
            "| "
            + " | ".join(
                [
                    *entry.row.columns,
                    entry.metrics["AP"].format(),
                    "–" if not entry.metrics["AP50"].n else f"{entry.metrics['AP50'].mean:.1f}",
                    "–" if not entry.metrics["AP75"].n else f"{entry.metrics['AP75'].mean:.1f}",
                    *(_extra_cell(entry, key, entry is seeded[0]) for _, key in extra),
                    _seeds_text(entry),
                    "–" if entry is seeded[0] or not delta.n else delta.format(signed=True),
                    *(_paper_cells(entry.row)[:1] if with_paper else []),
                ]
            )
            + " |"
        )
    lines += _runs_footer(results, path, lambda r: f"{r.row.name}, seed {r.seed}")
    Path(path).write_text("\n".join(lines) + "\n")


def write_seeded_csv(sweep: Sweep, results: Sequence[RowResult], path: Path) -> None:
    """
    One line per row: key columns, row name, per metric mean, sd and n over seeds, the per-seed
    APs, the paired AP difference to the first row (mean, sd, n) and the paper's AP; then per
    extra metric its mean, sd, n and paired difference to the first row (mean, sd).
    """
    extra = [key for _, key in sweep.extra_metrics]
    header = [*sweep.columns, "row"]
    for metric in METRICS:
        header += [f"{metric}_mean", f"{metric}_sd", f"{metric}_n"]
    header += ["AP_per_seed", "delta_AP_vs_first_mean", "delta_AP_vs_first_sd"]
    header += ["delta_AP_vs_first_n", "paper_AP"]
    for key in extra:
        header += [f"{key}_mean", f"{key}_sd", f"{key}_n"]
        header += [f"delta_{key}_vs_first_mean", f"delta_{key}_vs_first_sd"]

    def cell(value: Optional[float]) -> str:
        return "" if value is None or math.isnan(value) else repr(round(value, 4))

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for entry in summarize_seeds(results, extra):
            line = [*entry.row.columns, entry.row.name]
            for metric in METRICS:
                spread = entry.metrics[metric]
                line += [cell(spread.mean), cell(spread.sd), spread.n]
            line.append(
                " ".join(
                    f"{seed}:{v:.2f}" for seed, v in sorted(entry.metrics["AP"].values.items())
                )
            )
            delta = entry.vs_first["AP"]
            line += [cell(delta.mean), cell(delta.sd), delta.n, cell(entry.row.paper[0])]
            for key in extra:
                spread, paired = entry.metrics[key], entry.vs_first[key]
                line += [cell(spread.mean), cell(spread.sd), spread.n]
                line += [cell(paired.mean), cell(paired.sd)]
            writer.writerow(line)


def _number(value: Optional[float]) -> str:
    if value is None:
        return "–"
    return "nan" if math.isnan(value) else f"{value:.1f}"


def _signed(value: Optional[float]) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:+.1f}"


def _our_cells(result: RowResult, extra: Sequence[str] = ()) -> List[str]:
    if result.metrics is not None:
        return [_number(result.metrics.get(m)) for m in (*METRICS, *extra)]
    return [result.status] + ["–"] * (len(METRICS) + len(extra) - 1)


def _paper_cells(row: SweepRow) -> List[str]:
    if all(v is None for v in row.paper) and row.paper_note:
        return [row.paper_note] + ["–"] * (len(METRICS) - 1)
    return [_number(v) for v in row.paper]


def _relative(run_dir: Path, start: Path) -> Path:
    try:
        return Path(run_dir).resolve().relative_to(start.resolve())
    except ValueError:
        return Path(run_dir)


def _runs_footer(
    results: Sequence[RowResult],
    path: Path,
    run_name: Callable[[RowResult], str],
    failure_name: Optional[Callable[[RowResult], str]] = None,
) -> List[str]:
    """
    The table's closing lines: the failed runs with their errors, then every run's folder.

    Args:
        results: the table's runs.
        path: the table file (run folders are given relative to its folder).
        run_name: how a run is named in the list of runs.
        failure_name: how a failed run is named; default ``run_name``.
    """
    failure_name = failure_name or run_name
    lines = []
    failures = [r for r in results if r.status == FAILED]
    if failures:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {failure_name(r)}: {r.error}" for r in failures]
    lines += ["", "Runs:", ""]
    lines += [
        f"- {run_name(r)}: `{_relative(r.run_dir, Path(path).parent)}` ({r.status})"
        for r in results
    ]
    return lines


def _best_index(results: Sequence[RowResult]) -> Optional[int]:
    scores = [
        r.metrics["AP"] if r.metrics and not math.isnan(r.metrics["AP"]) else None for r in results
    ]
    valid = [i for i, s in enumerate(scores) if s is not None]
    return max(valid, key=lambda i: scores[i]) if valid else None


def _setting(sweep: Sweep) -> str:
    """The setting and the base config, as lines of Markdown."""
    if sweep.preset:
        setting = (
            f"{sweep.preset_description.rstrip('.')} (preset `{sweep.preset}`); "
            f"the paper: {sweep.description}"
        )
    else:
        setting = sweep.description
    base_config = sweep.base_config
    if base_config.is_relative_to(CONFIGS_DIR):  # shown as the repository's configs/ path
        base_config = "configs" / base_config.relative_to(CONFIGS_DIR)
    return f"Setting: {setting}\n\nBase config: `{base_config}`."


def write_markdown(
    sweep: Sweep, results: Sequence[RowResult], path: Path, notes: Sequence[str] = ()
) -> None:
    """
    Write the table in Markdown: key columns, ours, the paper's, the difference; our best AP bold.

    Args:
        sweep: the table.
        results: its rows' results.
        path: the ``.md`` file.
        notes: lines printed under the setting (e.g. the overrides of every run).
    """
    extra = [key for _, key in sweep.extra_metrics]
    header = [
        *sweep.columns,
        *METRICS,
        *(label for label, _ in sweep.extra_metrics),
        *(f"paper {m}" for m in METRICS),
        *(f"Δ{m}" for m in METRICS),
    ]
    lines = [f"# {sweep.title}", "", _setting(sweep), ""]
    lines += [f"{note}" for note in notes] + ([""] if notes else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = _best_index(results)
    for index, result in enumerate(results):
        ours = _our_cells(result, extra)
        if index == best:
            ours[0] = f"**{ours[0]}**"
        deltas = [_signed(result.delta(i)) for i in range(len(METRICS))]
        lines.append(
            "| "
            + " | ".join([*result.row.columns, *ours, *_paper_cells(result.row), *deltas])
            + " |"
        )
    if any(r.metrics and any(math.isnan(v) for v in r.metrics.values()) for r in results):
        lines += [
            "",
            "nan: the model made no detection above the score threshold (COCOEvaluator's NaN).",
        ]
    lines += _runs_footer(
        results, path, lambda r: r.row.name, lambda r: f"{' '.join(r.row.columns)} ({r.row.name})"
    )
    Path(path).write_text("\n".join(lines) + "\n")


def write_csv(sweep: Sweep, results: Sequence[RowResult], path: Path) -> None:
    """
    Write one line per row: key columns, row name, status, ours, the paper's, the difference,
    the paper's note, the error and the run folder (relative to the table). Missing numbers are
    empty cells.
    """

    def cell(value: Optional[float]) -> str:
        return "" if value is None else repr(round(value, 4))

    extra = [key for _, key in sweep.extra_metrics]
    header = [
        *sweep.columns,
        "row",
        "status",
        *METRICS,
        *extra,
        *(f"paper_{m}" for m in METRICS),
        *(f"delta_{m}" for m in METRICS),
        "paper_note",
        "error",
        "run_dir",
    ]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for result in results:
            ours = [result.metrics.get(m) if result.metrics else None for m in (*METRICS, *extra)]
            writer.writerow(
                [
                    *result.row.columns,
                    result.row.name,
                    result.status,
                    *map(cell, ours),
                    *map(cell, result.row.paper),
                    *(cell(result.delta(i)) for i in range(len(METRICS))),
                    result.row.paper_note,
                    result.error,
                    str(_relative(result.run_dir, Path(path).parent)),
                ]
            )


def plot_table(sweep: Sweep, results: Sequence[RowResult], path: Path) -> None:
    """
    Plot AP against the swept value, ours and the paper's; failed runs as red crosses on the axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    extra = sweep.extra_metrics
    seeded = (
        summarize_seeds(results, [key for _, key in extra])
        if any(r.seed is not None for r in results)
        else None
    )
    if seeded is not None:
        results = [entry.results[0] for entry in seeded]
    positions = list(range(len(results)))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(results) + 2.0), 4.0))
    paper = [(i, r.row.paper[0]) for i, r in zip(positions, results) if r.row.paper[0] is not None]
    ours = [(i, r.metrics["AP"]) for i, r in zip(positions, results) if r.metrics is not None]
    failed = [i for i, r in zip(positions, results) if r.status == FAILED]
    if seeded is not None:
        ours = [(i, e.metrics["AP"].mean) for i, e in zip(positions, seeded) if e.metrics["AP"].n]
        failed = []
    if paper:
        ax.plot(*zip(*paper), "s--", color="tab:gray", label="paper")
    if ours and seeded is not None:
        sds = [seeded[i].metrics["AP"].sd for i, _ in ours]
        ax.errorbar(
            *zip(*ours),
            yerr=[0.0 if math.isnan(sd) else sd for sd in sds],
            fmt="o-",
            capsize=4,
            color="tab:blue",
            label="ours, mean ± sd over seeds" + (f" ({sweep.preset})" if sweep.preset else ""),
        )
    if seeded is not None:
        # The extra metrics (e.g. the rarest class's AP) beside AP, each with its spread.
        styles = (
            ("s--", "tab:green"),
            ("^:", "tab:orange"),
            ("v-.", "tab:purple"),
            ("D--", "tab:brown"),
        )
        for (label, key), (style, colour) in zip(extra, styles):
            points = [(i, e.metrics[key]) for i, e in enumerate(seeded) if e.metrics[key].n]
            if points:
                ax.errorbar(
                    [i for i, _ in points],
                    [p.mean for _, p in points],
                    yerr=[0.0 if math.isnan(p.sd) else p.sd for _, p in points],
                    fmt=style,
                    color=colour,
                    capsize=3,
                    label=label,
                )
    if ours and seeded is None:
        ax.plot(
            *zip(*ours),
            "o-",
            color="tab:blue",
            label="ours" + (f" ({sweep.preset})" if sweep.preset else ""),
        )
    if failed:
        ax.plot(
            failed,
            [0.0] * len(failed),
            "x",
            color="tab:red",
            markersize=10,
            mew=2,
            label="ours: failed",
        )
    ax.set_xticks(positions)
    labels = [r.row.label for r in results]
    # Slanted when the labels would run into each other.
    slanted = len(results) > 6 or sum(len(label) for label in labels) > 60
    ax.set_xticklabels(labels, rotation=30 if slanted else 0, ha="right" if slanted else "center")
    ax.set_xlabel(sweep.xlabel)
    ax.set_ylabel("AP")
    ax.set_title(sweep.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_table(
    sweep: Sweep, results: Sequence[RowResult], output_dir: Path, notes: Sequence[str] = ()
) -> Dict[str, Path]:
    """
    Write ``table_<id>.md``, ``.csv`` and ``.png`` into ``output_dir``; for a multi-seed sweep
    (results with seeds), with each row's mean ± sd over seeds and its paired difference to the
    first row.

    Returns:
        the paths, keyed by "md", "csv", "png".
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: output_dir / f"table_{sweep.table}.{ext}" for ext in ("md", "csv", "png")}
    if any(r.seed is not None for r in results):
        write_seeded_markdown(sweep, results, paths["md"], notes)
        write_seeded_csv(sweep, results, paths["csv"])
    else:
        write_markdown(sweep, results, paths["md"], notes)
        write_csv(sweep, results, paths["csv"])
    plot_table(sweep, results, paths["png"])
    return paths

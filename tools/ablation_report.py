"""
The ablations' report and measurements (see ``tools/ablation.py``): an experiment's runs, read from
the long-form ``runs.csv``, as the paper's tables (mean ± sd over seeds, the paired difference to
the reference, the paper's numbers beside ours) and plots; the class-imbalance regime of a config
or a trained model; Figures 1 and 4.

A *sample* (Figure 4, the regime) is one binary classification: an (anchor, class) pair of a
non-ignored anchor. Positives are the foreground anchors' ground-truth classes; negatives are all
other pairs. *Easy* negatives have a probability below ``EASY_NEGATIVE_P``.
"""

import argparse
import csv
import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from retinanet_fl.config import load_config
from retinanet_fl.layers.focal_loss import sigmoid_focal_loss

METRICS = ("AP", "AP50", "AP75")
# The text columns of runs.csv; every other column holds numbers.
_TEXT_COLUMNS = {"table", "row", "arm", "status", "error", "run_dir"}
EASY_NEGATIVE_P = 0.1
REGIME_NUM_IMAGES = 200  # training images a row's regime is measured on
TRAINED_REGIME_NUM_IMAGES = 50  # validation images a trained model's regime is measured on
TRAINED_REGIME_FILE = "regime_val.json"
# The trained model's regime in runs.csv (as val_<field>), and the scale it is given there.
TRAINED_FIELDS = {
    "easy_negative_fraction": 100.0,
    "easy_negative_ce_share": 100.0,
    "easy_negative_fl_share": 100.0,
    "negative_to_positive_ce": 1.0,
}
FIGURE1_GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
FIGURE4_GAMMAS = (0.0, 0.5, 1.0, 2.0)
HARDEST_FRACTIONS = (0.01, 0.1, 0.2)  # Figure 4's summary: the loss share of the hardest samples
LOG_TICKS = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_runs_csv(path: Path) -> List[Dict[str, Any]]:
    """
    Returns:
        the records of ``runs.csv`` (none if it does not exist), numbers as floats (NaN where
        empty) and the seed as an int (None where empty).
    """
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        records = list(csv.DictReader(f))
    for record in records:
        for key, value in record.items():
            if key == "seed":
                record[key] = int(value) if value else None
            elif key not in _TEXT_COLUMNS:
                record[key] = float(value) if value else math.nan
    return records


@dataclasses.dataclass(frozen=True)
class Spread:
    """Values by seed, with their mean and sample standard deviation (NaN where undefined)."""

    values: Mapping[Optional[int], float]

    @property
    def n(self) -> int:
        """Returns: the number of values."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Returns: the mean, NaN without values."""
        return statistics.fmean(self.values.values()) if self.values else math.nan

    @property
    def sd(self) -> float:
        """Returns: the sample standard deviation, NaN with fewer than 2 values."""
        return statistics.stdev(self.values.values()) if self.n >= 2 else math.nan

    def format(self, signed: bool = False) -> str:
        """Returns: "mean ± sd (n=N)", "mean (n=1)" or "–"; ``signed`` for a difference."""
        if not self.n:
            return "–"
        mean = f"{self.mean:+.1f}" if signed else f"{self.mean:.1f}"
        return f"{mean} (n=1)" if self.n == 1 else f"{mean} ± {self.sd:.1f} (n={self.n})"


@dataclasses.dataclass(frozen=True)
class Line:
    """One (row, arm) of a table: each metric's spread over seeds and its paired difference."""

    row: Any
    arm: Any
    metrics: Mapping[str, Spread]
    deltas: Mapping[str, Spread]

    def verdict(self) -> str:
        """Returns: "ahead" / "behind" where |mean ΔAP| exceeds its sd, else "within the seed
        spread"; "–" with fewer than 2 pairs."""
        delta = self.deltas.get("AP")
        if delta is None or delta.n < 2:
            return "–"
        if abs(delta.mean) <= delta.sd:
            return "within the seed spread"
        return "ahead" if delta.mean > 0 else "behind"


def _values(records: Sequence[Dict[str, Any]], row: str, arm: str, key: str) -> Dict:
    # A run without detections (COCOEvaluator's NaN) scores 0; a missing column is left out.
    return {
        r["seed"]: 0.0 if math.isnan(r[key]) else r[key]
        for r in records
        if r["row"] == row and r["arm"] == arm and r["status"] == "finished" and key in r
    }


def summarize(experiment: Any, records: Sequence[Dict[str, Any]]) -> List[Line]:
    """
    Args:
        experiment: the grid (``tools/ablation.py``'s Experiment).
        records: its runs, from ``runs.csv``.

    Returns:
        per (row, arm), in the table's order: each metric's spread over the finished seeds, and
        the paired difference to the reference (same seed, both finished; none for the reference
        itself).
    """
    keys = [*METRICS, *(key for _, key in experiment.extra_metrics)]
    lines = []
    for row in experiment.rows:
        for arm in experiment.arms:
            reference = experiment.reference_of(row.name, arm.name)
            metrics, deltas = {}, {}
            for key in keys:
                mine = _values(records, row.name, arm.name, key)
                metrics[key] = Spread(mine)
                if reference != (row.name, arm.name):
                    theirs = _values(records, *reference, key)
                    deltas[key] = Spread({s: v - theirs[s] for s, v in mine.items() if s in theirs})
            lines.append(Line(row, arm, metrics, deltas))
    return lines


def _cell(value: Optional[float]) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1f}"


def write_report(
    experiment: Any,
    records: Sequence[Dict[str, Any]],
    regimes: Mapping[str, Optional[Dict[str, Any]]],
    output_dir: Path,
    shared_opts: str,
) -> Tuple[Path, Path]:
    """
    Write ``table_<name>.md`` and ``.png``: per (row, arm) AP / AP50 / AP75 and the extra metrics
    as mean ± sd over seeds, each seed's AP, the paired ΔAP to the reference and its verdict, the
    row's negatives per positive anchor (where measured) and the paper's numbers (where given).

    Args:
        experiment: the grid.
        records: its runs, from ``runs.csv``.
        regimes: per row name, its measured regime (or None).
        output_dir: where the files go.
        shared_opts: the overrides of every run, as text.

    Returns:
        the paths of the Markdown and the plot.
    """
    lines = summarize(experiment, records)
    with_arms = len(experiment.arms) > 1
    with_paper = any(v is not None for r in experiment.rows for v in r.paper)
    seeds = sorted({r["seed"] for r in records if r["seed"] is not None})
    reference = f"{experiment.reference} at the same row" if with_arms else "the first row"
    header = [
        *experiment.columns,
        *(["arm"] if with_arms else []),
        *(["neg / pos"] if regimes else []),
        "AP (mean ± sd)",
        "AP50",
        "AP75",
        *(label for label, _ in experiment.extra_metrics),
        f"AP per seed ({' / '.join(map(str, seeds))})" if seeds else "AP per seed",
        "ΔAP (paired)",
        "ΔAP50",
        "verdict",
        *(["paper AP", "paper AP50", "paper AP75"] if with_paper else []),
    ]
    text = [
        f"# {experiment.title}",
        "",
        f"Setting: {experiment.description}",
        "",
        f"Base config: `{_repository_path(experiment.base_config)}`; overrides of every run: "
        f"`{shared_opts or 'none'}`; per run: `runs.csv`.",
        "",
        "Mean ± sample standard deviation over the seeds that finished (n); a run without "
        f"detections counts as AP 0. Δ: the line minus {reference}, seed by seed; 'ahead' / "
        "'behind': |mean ΔAP| exceeds its sd.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for line in lines:
        regime = regimes.get(line.row.name) if regimes else None
        per_seed = " / ".join(f"{v:.1f}" for _, v in sorted(line.metrics["AP"].values.items()))
        cells = [
            *line.row.columns,
            *([line.arm.label] if with_arms else []),
            *([_cell(regime and regime["negatives_per_positive"])] if regimes else []),
            line.metrics["AP"].format(),
            _cell(line.metrics["AP50"].mean),
            _cell(line.metrics["AP75"].mean),
            *(line.metrics[key].format() for _, key in experiment.extra_metrics),
            per_seed or "–",
            line.deltas["AP"].format(signed=True) if line.deltas else "–",
            line.deltas["AP50"].format(signed=True) if line.deltas else "–",
            line.verdict(),
        ]
        if with_paper:
            note = line.row.paper_note
            cells += [note or _cell(line.row.paper[0]), *map(_cell, line.row.paper[1:])]
        text.append("| " + " | ".join(cells) + " |")
    failed = [r for r in records if r["status"] == "failed"]
    counts = {s: sum(r["status"] == s for r in records) for s in {r["status"] for r in records}}
    text += ["", "Runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "."]
    text += [f"- failed: {run_name(r)}: {r['error']}" for r in failed]
    markdown = Path(output_dir) / f"table_{experiment.name}.md"
    markdown.write_text("\n".join(text) + "\n")
    plot = markdown.with_suffix(".png")
    if regimes:
        plot_study(experiment, lines, regimes, plot)
    else:
        plot_table(experiment, lines, plot)
    return markdown, plot


def run_name(record: Mapping[str, Any]) -> str:
    """Returns: "row[/arm][ seed N]" of a runs.csv record."""
    name = "/".join(n for n in (record["row"], record["arm"]) if n)
    return name if record["seed"] is None else f"{name} seed {record['seed']}"


def _repository_path(path: Path) -> Path:
    """The path relative to the repository when it is inside it."""
    repository = Path(__file__).resolve().parents[1]
    return path.relative_to(repository) if path.is_relative_to(repository) else path


def _errorbar(ax, xs: Sequence[float], spreads: Sequence[Spread], **style) -> None:
    """Means with their sd as error bars (none where undefined)."""
    sds = [0.0 if math.isnan(s.sd) else s.sd for s in spreads]
    ax.errorbar(xs, [s.mean for s in spreads], yerr=sds, capsize=4, **style)


def plot_table(experiment: Any, lines: Sequence[Line], path: Path) -> None:
    """AP (mean ± sd) and the extra metrics against the rows, with the paper's AP dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(lines) + 2.0), 4.0))
    paper = [(i, line.row.paper[0]) for i, line in enumerate(lines) if line.row.paper[0]]
    if paper:
        ax.plot(*zip(*paper), "s--", color="tab:gray", label="paper")
    series = [("ours" + (f" ({experiment.preset})" if experiment.preset else ""), "AP")]
    for (label, key), style in zip(
        [*series, *experiment.extra_metrics], ("o-", "s--", "^:", "v-.")
    ):
        shown = [i for i, line in enumerate(lines) if line.metrics[key].n]
        if shown:
            _errorbar(ax, shown, [lines[i].metrics[key] for i in shown], fmt=style, label=label)
    labels = [line.row.label for line in lines]
    slanted = len(lines) > 6 or sum(map(len, labels)) > 60  # labels that would run together
    ax.set_xticks(
        range(len(lines)),
        labels,
        rotation=30 if slanted else 0,
        ha="right" if slanted else "center",
    )
    ax.set(xlabel=experiment.xlabel, ylabel="AP (mean ± sd over seeds)")
    _finish(plt, fig, [ax], experiment.title, path)


def plot_study(
    experiment: Any, lines: Sequence[Line], regimes: Mapping[str, Optional[Dict]], path: Path
) -> None:
    """
    Left: each non-reference arm's paired ΔAP (mean ± sd) against the row's negatives per positive
    anchor, one series per row group; right: every arm's AP. Groups are shifted right by 4 % each,
    so that rows on the same data stay apart.
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.5))
    groups = list(dict.fromkeys(row.group for row in experiment.rows))
    ratios = []
    for g, group in enumerate(groups):
        for a, arm in enumerate(experiment.arms):
            shown = [
                line
                for line in lines
                if line.row.group == group
                and line.arm == arm
                and regimes.get(line.row.name)
                and line.metrics["AP"].n
            ]
            shown.sort(key=lambda line: regimes[line.row.name]["negatives_per_positive"])
            xs = [
                regimes[line.row.name]["negatives_per_positive"] * (1 + 0.04 * g) for line in shown
            ]
            ratios += xs
            style = dict(fmt="osD^v<>px"[g % 9] + "-" * (len(shown) > 1), color=f"C{a}")
            _errorbar(
                right,
                xs,
                [line.metrics["AP"] for line in shown],
                label=f"{arm.label}, {group}",
                **style,
            )
            if arm.name != experiment.reference and shown:
                _errorbar(left, xs, [line.deltas["AP"] for line in shown], label=group, **style)
                for x, line in zip(xs, shown):
                    left.annotate(
                        line.row.label,
                        (x, line.deltas["AP"].mean),
                        fontsize=7,
                        textcoords="offset points",
                        xytext=(5, 5),
                    )
    left.axhline(0.0, color="gray", lw=1)
    for ax in (left, right):
        ax.set_xscale("log")
        ticks = [t for t in LOG_TICKS if ratios and min(ratios) / 1.5 <= t <= max(ratios) * 1.5]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], minor=False)
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("negative anchors per positive anchor (training images; groups offset)")
    left.set_ylabel(f"ΔAP, arm − {experiment.reference} (mean ± sd over seeds)")
    right.set_ylabel("AP (mean ± sd over seeds)")
    _finish(plt, fig, [left, right], experiment.title, path)


def _finish(plt, fig, axes: Sequence, title: str, path: Path) -> None:
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def focal_loss_of_pt(p_t: Tensor, gamma: float) -> Tensor:
    """Returns: FL(p_t) = -(1 - p_t)^γ log(p_t), without α, by the project's loss."""
    logits = torch.logit(p_t.double()).float()
    return sigmoid_focal_loss(
        logits, torch.ones_like(logits), alpha=-1.0, gamma=gamma, kernel="eager"
    )


def figure1(output: Path, gammas: Sequence[float] = FIGURE1_GAMMAS) -> Path:
    """Plot FL against p_t for several γ (the paper's Figure 1) into ``output``; returns it."""
    plt = _pyplot()
    p_t = torch.linspace(1e-3, 1 - 1e-6, 1000)
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    for gamma in gammas:
        ax.plot(p_t.numpy(), focal_loss_of_pt(p_t, gamma).numpy(), label=f"γ = {gamma:g}")
    ax.axvspan(0.6, 1.0, color="tab:green", alpha=0.08)
    ax.text(0.8, 4.6, "well-classified\nexamples", ha="center", va="top", fontsize=9)
    ax.set(xlim=(0, 1), ylim=(0, 5), xlabel="probability of ground truth class", ylabel="loss")
    _finish(plt, fig, [ax], r"Figure 1: FL$(p_t) = -(1 - p_t)^\gamma \log(p_t)$", output)
    return Path(output)


def split_samples(logits: Tensor, gt_labels: Tensor, num_classes: int) -> Tuple[Tensor, Tensor]:
    """
    Args:
        logits: (R, K) classification logits of one image's anchors.
        gt_labels: (R,) a class in [0, K), K for background, -1 for ignored.
        num_classes: K.

    Returns:
        the (P,) logits of the foreground anchors at their class, and the (M,) logits of every
        other (anchor, class) pair of the non-ignored anchors.
    """
    is_fg = (gt_labels >= 0) & (gt_labels < num_classes)
    is_target = torch.zeros_like(logits, dtype=torch.bool)
    is_target[is_fg, gt_labels[is_fg]] = True
    return logits[is_target], logits[(gt_labels >= 0)[:, None] & ~is_target]


@torch.no_grad()
def dense_predictions_and_labels(
    model: torch.nn.Module, batched_input: Dict
) -> Tuple[Tensor, Tensor]:
    """
    Returns:
        one image's (R, K) logits from a FocalLossRetinaNet in eval mode, and the (R,) labels the
        model gives its anchors in training (``model.label_anchors``).
    """
    images = model.preprocess_image([batched_input])
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    logits, _ = model._transpose_dense_predictions(model.head(features), [model.num_classes, 4])
    anchors = model.anchor_generator(features)
    labels, _ = model.label_anchors(anchors, [batched_input["instances"].to(model.device)])
    return torch.cat(logits, dim=1)[0].float().cpu(), labels[0].cpu()


def _build_model(cfg) -> torch.nn.Module:
    """A FocalLossRetinaNet from ``cfg`` with ``MODEL.WEIGHTS`` loaded, in eval mode."""
    from detectron2.modeling import build_model

    from retinanet_fl.engine import AtomicCheckpointer

    model = build_model(cfg)
    if not hasattr(model, "label_anchors"):
        raise ValueError(f"Needs FocalLossRetinaNet, got {cfg.MODEL.META_ARCHITECTURE}.")
    AtomicCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def load_inputs(cfg, num_images: int, dataset: str) -> List[Dict]:
    """Returns: the dataset's first images, resized as at test time, with their boxes."""
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.data import transforms as T

    mapper = DatasetMapper(
        is_train=True,  # keeps the annotations; the only augmentation is the test resize
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
        image_format=cfg.INPUT.FORMAT,
    )
    return [mapper(d) for d in DatasetCatalog.get(dataset)[:num_images]]


def hardest_share(losses: Tensor, fraction: float) -> float:
    """Returns: the share of the summed loss held by the hardest ``fraction`` of the samples."""
    count = max(1, round(fraction * len(losses)))
    total = losses.double().sum().clamp(min=torch.finfo(torch.float64).tiny)
    return float(torch.topk(losses.double(), count).values.sum() / total)


def figure4(cfg, output: Path, num_images: int = 50, max_negatives: int = 10_000_000) -> Dict:
    """
    The paper's Figure 4 for a trained model: the cumulative distribution of the normalized focal
    loss over its positive and its negative samples on ``DATASETS.TEST[0]``, one curve per γ.

    Args:
        cfg: the model's config, ``MODEL.WEIGHTS`` its checkpoint.
        output: the PNG; a ``.json`` beside it gets the summary.
        num_images: images run through the model.
        max_negatives: negative samples kept at most (the paper: ~10^7), drawn evenly per image.

    Returns:
        per group ("positive", "negative") and γ, the sample count and the loss share of the
        hardest 1 %, 10 % and 20 % of the samples.
    """
    model = _build_model(cfg)
    generator = torch.Generator().manual_seed(0)
    samples: Dict[str, List[Tensor]] = {"positive": [], "negative": []}
    inputs = load_inputs(cfg, num_images, cfg.DATASETS.TEST[0])
    for batched_input in inputs:
        positive, negative = split_samples(
            *dense_predictions_and_labels(model, batched_input), model.num_classes
        )
        keep = torch.randperm(len(negative), generator=generator)[: max_negatives // len(inputs)]
        samples["positive"].append(positive)
        samples["negative"].append(negative[keep])
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.2))
    summary: Dict[str, Dict[str, Dict[str, float]]] = {}
    for ax, (group, parts) in zip(axes, samples.items()):
        logits = torch.cat(parts)
        targets = torch.full_like(logits, float(group == "positive"))
        summary[group] = {}
        for gamma in FIGURE4_GAMMAS:
            losses = sigmoid_focal_loss(logits, targets, alpha=-1.0, gamma=gamma, kernel="eager")
            ordered = torch.sort(losses.double()).values
            cumulative = torch.cumsum(ordered, 0) / ordered.sum().clamp(min=1e-300)
            step = max(1, len(cumulative) // 1000)  # a thousand points draw the same curve
            fractions = torch.arange(1, len(cumulative) + 1) / len(cumulative)
            ax.plot(fractions[::step], cumulative[::step], label=f"γ = {gamma:g}")
            summary[group][f"gamma={gamma:g}"] = {
                "samples": len(losses),
                **{f"hardest_{f:g}_share": hardest_share(losses, f) for f in HARDEST_FRACTIONS},
            }
        kind = "foreground" if group == "positive" else "background"
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel=f"fraction of {kind} examples",
            ylabel="cumulative normalized loss",
            title=f"{group} samples ({len(logits):,})",
        )
    _finish(plt, fig, axes, f"Figure 4: {cfg.MODEL.WEIGHTS}, {len(inputs)} images", output)
    Path(output).with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary


def loss_shares(positive_logits: Tensor, negative_logits: Tensor) -> Dict[str, float]:
    """
    Returns:
        the share of negative samples that are easy, the share of the negatives' CE and FL
        (γ = 2) loss they carry, and the negatives' summed CE over the positives' (NaN where a
        total is zero).
    """
    probabilities = torch.sigmoid(negative_logits.double())
    easy = probabilities < EASY_NEGATIVE_P
    negative_ce = F.softplus(negative_logits.double())  # -log(1 - p), stable
    negative_fl = probabilities**2 * negative_ce
    positive_ce = F.softplus(-positive_logits.double()).sum()

    def share(part: Tensor, whole: Tensor) -> float:
        return float(part / whole) if whole > 0 else math.nan

    return {
        "easy_negative_fraction": share(easy.sum(), torch.tensor(float(len(easy)))),
        "easy_negative_ce_share": share(negative_ce[easy].sum(), negative_ce.sum()),
        "easy_negative_fl_share": share(negative_fl[easy].sum(), negative_fl.sum()),
        "negative_to_positive_ce": share(negative_ce.sum(), positive_ce),
    }


def measure_regime(model: torch.nn.Module, inputs: Sequence[Dict], with_losses: bool) -> Dict:
    """
    Count the anchors by their training label over images; with ``with_losses``, also split the
    negatives' loss between easy and hard ones (:func:`loss_shares`).

    Returns:
        per-image averages (objects, anchors, positive, ignored and negative anchors), the
        negatives per positive over all images, the image size and the loss shares.
    """
    counts = torch.zeros(5, dtype=torch.float64)  # objects, anchors, positive, ignored, negative
    positives, negatives = [], []
    for batched_input in inputs:
        logits, labels = dense_predictions_and_labels(model, batched_input)
        negative, ignored = labels == model.num_classes, labels == -1
        counts += torch.tensor(
            [
                len(batched_input["instances"]),
                len(labels),
                int((~negative & ~ignored).sum()),
                int(ignored.sum()),
                int(negative.sum()),
            ],
            dtype=torch.float64,
        )
        if with_losses:
            positive_logits, negative_logits = split_samples(logits, labels, model.num_classes)
            positives.append(positive_logits)
            negatives.append(negative_logits)
    per_image = (counts / len(inputs)).tolist()
    regime = dict(
        zip(
            (
                "objects_per_image",
                "anchors_per_image",
                "positive_per_image",
                "ignored_per_image",
                "negative_per_image",
            ),
            per_image,
        )
    )
    regime["negatives_per_positive"] = float(counts[4] / counts[2]) if counts[2] else math.inf
    regime["image_size"] = list(inputs[0]["image"].shape[-2:])
    regime["num_images"] = len(inputs)
    if with_losses:
        regime.update(loss_shares(torch.cat(positives), torch.cat(negatives)))
    return regime


def regime_stats(
    cfg, dataset: Optional[str] = None, num_images: int = 100, image_size=None
) -> Dict:
    """
    The class-imbalance regime of a config on a dataset (default ``DATASETS.TRAIN[0]``), with the
    loss shares when ``MODEL.WEIGHTS`` is set; or the anchors of one blank ``image_size`` image.
    """
    from detectron2.structures import Boxes, Instances

    if image_size is not None:
        cfg = cfg.clone()
        cfg.MODEL.WEIGHTS = ""  # the anchors alone: no checkpoint to load
    model = _build_model(cfg)
    if image_size is not None:
        instances = Instances(tuple(image_size))
        instances.gt_boxes, instances.gt_classes = Boxes(torch.zeros(0, 4)), torch.zeros(0).long()
        return {
            "dataset": "",
            **measure_regime(
                model, [{"image": torch.zeros(3, *image_size), "instances": instances}], False
            ),
        }
    dataset = dataset or cfg.DATASETS.TRAIN[0]
    inputs = load_inputs(cfg, num_images, dataset)
    weights = cfg.MODEL.WEIGHTS
    return {"dataset": dataset, "weights": weights, **measure_regime(model, inputs, bool(weights))}


def format_regime(regime: Dict) -> str:
    """Returns: the regime as readable lines."""
    size = "x".join(map(str, regime["image_size"]))
    lines = [
        f"{regime['dataset'] or 'a blank image'}: {regime['num_images']} image(s) at {size} px"
    ]
    lines += [
        f"  {key.replace('_', ' ')}: {value:,.2f}"
        for key, value in regime.items()
        if isinstance(value, float)
    ]
    return "\n".join(lines)


def _measure_cached(path: Path, config_file: Path, opts: Sequence[str], **overrides) -> Dict:
    """The regime of a run's config (``overrides`` of keyword arguments and weights), cached."""
    if path.is_file():
        return json.loads(path.read_text())
    cfg = load_config(str(config_file), list(opts))
    cfg.MODEL.WEIGHTS = overrides.pop("weights")
    regime = regime_stats(cfg, **overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(regime, indent=2))
    return regime


def measure_training_regime(config_file: Path, opts: Sequence[str], cache: Path) -> Dict:
    """Returns: a run config's regime on its first ``REGIME_NUM_IMAGES`` training images."""
    return _measure_cached(cache, config_file, opts, weights="", num_images=REGIME_NUM_IMAGES)


def measure_trained_regime(config_file: Path, opts: Sequence[str], run_dir: Path) -> None:
    """Measure a finished run's final model on its first validation images, cached in the run."""
    if (run_dir / "model_final.pth").is_file():
        cfg_test = load_config(str(config_file), list(opts)).DATASETS.TEST[0]
        _measure_cached(
            run_dir / TRAINED_REGIME_FILE,
            config_file,
            opts,
            weights=str(run_dir / "model_final.pth"),
            dataset=cfg_test,
            num_images=TRAINED_REGIME_NUM_IMAGES,
        )


def read_trained_regime(run_dir: Path) -> Dict[str, float]:
    """Returns: the trained model's regime as ``val_<field>`` (shares in percent), if measured."""
    path = Path(run_dir) / TRAINED_REGIME_FILE
    regime = json.loads(path.read_text()) if path.is_file() else {}
    return {f"val_{k}": regime[k] * scale for k, scale in TRAINED_FIELDS.items() if k in regime}


def analysis_command(args: argparse.Namespace, opts: Sequence[str], output_dir: Path) -> int:
    """``--figure 1``, ``--figure 4`` and ``--stats`` of ``tools/ablation.py``."""
    if args.figure == 1:
        print(f"wrote {figure1(args.output or output_dir / 'figure1.png')}")
        return 0
    if not args.config_file:
        raise SystemExit("--figure 4 and --stats need --config-file (and usually MODEL.WEIGHTS).")
    cfg = load_config(args.config_file, list(opts))
    if args.figure == 4:
        output = args.output or output_dir / "figure4.png"
        summary = figure4(cfg, output, args.num_images or 50, args.max_negatives)
        for group, per_gamma in summary.items():
            for gamma, shares in per_gamma.items():
                print(f"{group} samples, {gamma}: {shares}")
        print(f"wrote {output} and {output.with_suffix('.json')}")
        return 0
    regime = regime_stats(cfg, args.dataset, args.num_images or 100, args.image_size)
    print(format_regime(regime))
    if args.output:
        args.output.write_text(json.dumps(regime, indent=2))
    return 0

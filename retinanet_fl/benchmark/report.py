"""
The Markdown reports of the train and inference benchmarks, rendered from their results alone, so
that a report can be rendered again from its JSON (:func:`render`, which also dispatches to the
losses, table1e and compile reports, kept beside their benchmarks).
"""

import statistics
from typing import List, Optional, Sequence, Tuple, Union

from .common import describe_machine
from .common import format_ms as _ms
from .compiled_report import compile_markdown
from .exported import exported_lines
from .loss_kernels import losses_markdown
from .results import (
    DETECTRON2,
    OURS,
    STAGES,
    BenchmarkResults,
    CompileResults,
    InferenceEntry,
    InferenceResults,
    Profile,
    Table1eResults,
    TrainEntry,
    TrainResults,
)
from .table1e import table1e_markdown
from .targets import TIME_TARGET_MODELS, TRAIN_TIME_MAX_RATIO

__all__ = ["train_markdown", "inference_markdown", "render"]

MIB = 2**20


def render(results: BenchmarkResults, profile_rows: int = 15) -> str:
    """
    The report of any benchmark.

    Args:
        results: a benchmark's results.
        profile_rows: operators per profile table (train and inference).

    Returns:
        The Markdown, as the benchmark wrote it.
    """
    if isinstance(results, TrainResults):
        return train_markdown(results, profile_rows)
    if isinstance(results, InferenceResults):
        return inference_markdown(results, profile_rows)
    if isinstance(results, Table1eResults):
        return table1e_markdown(results)
    if isinstance(results, CompileResults):
        return compile_markdown(results)
    return losses_markdown(results)


def _header(results: Union[TrainResults, InferenceResults], title: str) -> List[str]:
    """Title, machine and the models' description of a train or inference report."""
    machine, settings = results.machine, results.settings
    load = ""
    if machine.load_average_at_start is not None and machine.load_average_at_end is not None:
        load = (
            f" Load average (1 min) at start / end: {machine.load_average_at_start[0]:.2f} / "
            f"{machine.load_average_at_end[0]:.2f}."
        )
    lines = [
        f"# {title}",
        "",
        describe_machine(machine) + load,
        "",
        f"Models: {settings.config}, K = {settings.num_classes}, random weights with "
        "batch-norm statistics calibrated on a noise image (so activations keep a trained "
        "network's scale); ours "
        "(`FocalLossRetinaNet`) is the same config with `MODEL.META_ARCHITECTURE` changed, "
        "holding Detectron2's weights. Square images of the sizes below (uint8 noise). Medians of "
        f"{settings.iters} interleaved iterations (shuffled order) after {settings.warmup} "
        "warm-up iterations.",
    ]
    if settings.iters < 10:
        lines.append(f"**Quick run: {settings.iters} measured iterations, not representative.**")
    return lines + [""]


def _mib(value: Optional[float]) -> str:
    """Bytes in MiB, or n/a."""
    return "n/a" if value is None else f"{value / MIB:.0f}"


def _ratio(value: Optional[float]) -> str:
    """A ratio with three decimals, or n/a."""
    return "n/a" if value is None else f"{value:.3f}"


def _setting(entry: Union[TrainEntry, InferenceEntry]) -> str:
    """The first cells of a row: image size, batch size, precision."""
    return f"| {entry.image_size} | {entry.batch_size} | {entry.precision} |"


def _paired_ratio_quartiles(
    entry: Union[TrainEntry, InferenceEntry], model: str, other: str
) -> Optional[Tuple[float, float]]:
    """
    First and third quartiles of model/other over the repeats: each repeat runs every model once,
    so its ratio is a paired measurement, and their spread shows how much the load moved it.
    """
    times, theirs = entry.times_s[model], entry.times_s[other]
    if len(times) < 2:
        return None
    quartiles = statistics.quantiles([a / b for a, b in zip(times, theirs)], n=4)
    return quartiles[0], quartiles[2]


def _targets_lines(entries: Sequence[Union[TrainEntry, InferenceEntry]]) -> List[str]:
    """The targets section: every target of every setting, met or missed."""
    lines = [
        "## Targets",
        "",
        "Time ratios are ratios of medians; in brackets the quartiles of the per-iteration "
        "ratios (each interleaved iteration runs every model once), a measure of the noise.",
        "",
    ]
    for entry in entries:
        setting = f"{entry.image_size} px, batch {entry.batch_size}, {entry.precision}"
        for name, target in entry.targets.items():
            verdict = "met" if target.met else f"**missed by {target.missed_by:.3f}**"
            model, other = TIME_TARGET_MODELS.get(name, (OURS, None))
            quartiles = None if other is None else _paired_ratio_quartiles(entry, model, other)
            spread = "" if quartiles is None else f" [{quartiles[0]:.3f}–{quartiles[1]:.3f}]"
            # Targets of ours against another model read "ours/other", as they always have.
            ratio = "ours/other" if model == OURS else f"{model}/{other}"
            lines.append(
                f"- {setting}, {name.replace('_', ' ')}: {ratio} = {target.ratio:.3f}"
                f"{spread} (target {target.target}): {verdict}"
            )
    return lines + [""]


def _profile_lines(profile: Profile, rows: int) -> List[str]:
    """The operators with the most self time in any model, with each model's time and calls."""
    ops = profile.ops
    names = list(ops)
    both = {OURS, DETECTRON2} <= set(names)
    totals = {name: sum(op.self_ms for op in ops[name].values()) for name in names}

    def self_ms(name: str, key: str) -> float:
        """A model's self time of an operator; 0 where the model did not call it."""
        return ops[name][key].self_ms if key in ops[name] else 0.0

    keys = sorted(
        {key for name in names for key in ops[name]},
        key=lambda key: -max(self_ms(name, key) for name in names),
    )[:rows]
    lines = [
        f"## Profile: {profile.time} per operator, one iteration at {profile.image_size} px, "
        f"batch {profile.batch_size}, {profile.precision}",
        "",
        "| operator | "
        + " | ".join(f"{name} ms (calls)" for name in names)
        + " |"
        + (" ours − detectron2 ms |" if both else ""),
        "|---|" + "---:|" * (len(names) + both),
    ]
    for key in keys:
        cells = []
        for name in names:
            op = ops[name].get(key)
            cells.append("–" if op is None else f"{op.self_ms:.1f} ({op.calls})")
        row = f"| `{key}` | " + " | ".join(cells) + " |"
        if both:
            row += f" {self_ms(OURS, key) - self_ms(DETECTRON2, key):+.1f} |"
        lines.append(row)
    lines.append(
        "| total (all operators) | "
        + " | ".join(f"{totals[name]:.0f}" for name in names)
        + " |"
        + (f" {totals[OURS] - totals[DETECTRON2]:+.0f} |" if both else "")
    )
    return lines + [""]


def _profiles_lines(profiles: Optional[List[Profile]], rows: int) -> List[str]:
    """Every profile's table (none when not profiled)."""
    return [line for profile in profiles or [] for line in _profile_lines(profile, rows)]


def train_markdown(results: TrainResults, profile_rows: int = 15) -> str:
    """
    The train report.

    Args:
        results: the train benchmark's results.
        profile_rows: operators per profile table.

    Returns:
        The Markdown.
    """
    settings, entries = results.settings, results.entries
    lines = _header(results, "Training iteration: FocalLossRetinaNet vs Detectron2 RetinaNet")
    lines += [
        f"One iteration: {settings.what}; {settings.optimizer}; "
        f"{settings.num_boxes_per_image} random GT boxes per image. "
        "Peak memory: the most a step needs on top of what is held before it (weights, "
        f"optimizer state), median of {settings.memory_repeats} measured steps"
        + (
            "; *peak*: the process's resident-set high-water mark (as in the losses benchmark: "
            "every allocation over 64 KiB mapped separately, so freed tensors leave the resident "
            "set at once; includes non-tensor allocations); *allocated*: the most bytes held by "
            "tensors allocated during one step, from the CPU allocator's profiler events (the "
            "CPU counterpart of `torch.cuda.max_memory_allocated`)."
            if results.machine.device == "cpu"
            else "; `torch.cuda.max_memory_allocated`."
        ),
        "",
        "| image px | batch | precision | ours s/it | Detectron2 s/it | ours/D2 time | "
        "ours img/s | ours peak MiB | D2 peak MiB | ours/D2 memory | ours allocated MiB | "
        "D2 allocated MiB | ours/D2 allocated |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        median, peak, allocated = e.median_s, e.peak_memory_bytes, e.peak_allocated_bytes or {}
        lines.append(
            f"{_setting(e)} {median[OURS]:.3f} | "
            f"{median[DETECTRON2]:.3f} | {e.time_ratio_ours_vs_detectron2:.3f} | "
            f"{e.images_per_s[OURS]:.2f} | {_mib(peak[OURS])} | {_mib(peak[DETECTRON2])} | "
            f"{_ratio(e.memory_ratio_ours_vs_detectron2)} | {_mib(allocated.get(OURS))} | "
            f"{_mib(allocated.get(DETECTRON2))} | "
            f"{_ratio(e.allocated_ratio_ours_vs_detectron2)} |"
        )
    lines += [
        "",
        "## Where the time goes: median ms per phase (forward includes labelling and losses)",
        "",
        "| image px | batch | precision | model | forward | backward | optimizer | "
        "first iteration s | loss_cls at it. 1 | loss_box_reg at it. 1 |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        for name, phases in e.phase_median_s.items():
            losses = e.first_iteration_losses[name]
            lines.append(
                f"{_setting(e)} {name} | "
                f"{_ms(phases['forward'])} | {_ms(phases['backward'])} | "
                f"{_ms(phases['optimizer'])} | {e.first_iteration_s[name]:.2f} | "
                f"{losses['loss_cls']:.5f} | {losses['loss_box_reg']:.5f} |"
            )
    lines += [
        "",
        "## The classification loss's share",
        "",
        "The classification loss alone, forward and backward to the logits, on one step's "
        "logits `(N, R, K)` and labels `(N, R)`: our model's loss module against Detectron2's "
        "path (one-hot targets of the valid anchors into fvcore's `sigmoid_focal_loss_jit`). "
        "Everything else in the two steps is the same computation, so the *bound* is the "
        "ours/D2 time ratio if only the losses differed: 1 − (D2 loss − our loss) / D2 step.",
        "",
        "| image px | batch | precision | anchors / image | ours loss ms | D2 loss ms | "
        "D2 loss / D2 step | bound on ours/D2 time | measured ours/D2 time |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        loss = e.cls_loss_median_s
        lines.append(
            f"{_setting(e)} "
            f"{e.num_anchors_per_image:,} | {_ms(loss[OURS])} | {_ms(loss[DETECTRON2])} | "
            f"{loss[DETECTRON2] / e.median_s[DETECTRON2]:.1%} | "
            f"{e.time_ratio_bound_from_cls_loss:.3f} | {e.time_ratio_ours_vs_detectron2:.3f} |"
        )
    kernel = entries[0].loss_kernel if entries else "n/a"
    first = [
        f"{e.image_size} px: {e.first_iteration_s[OURS] - e.first_iteration_s[DETECTRON2]:+.1f} s"
        for e in entries
    ]
    lines += [
        "",
        f"Our classification loss kernel: `{kernel}`. When it is `compiled`, our first iteration "
        "in the process compiles the loss (forward and backward graphs; the number of anchors is "
        "a symbolic size, so later settings reuse them). First-iteration time, ours − "
        "Detectron2's: " + "; ".join(first) + ". The first setting's difference is about the "
        "compile time (less when inductor's on-disk cache already holds the graphs); the later "
        "ones compile nothing and show the noise of a single iteration. Equal losses at "
        "iteration 1 show that the two models compute the same thing.",
        "",
    ]
    lines += _targets_lines(entries)
    lines += [line for e in entries if not e.targets["time"].met for line in (_train_miss(e), "")]
    lines += _profiles_lines(results.profiles, profile_rows)
    return "\n".join(lines)


def _train_miss(entry: TrainEntry) -> str:
    """Why a train-time target was missed, from the classification loss's share of the step."""
    setting = f"At {entry.image_size} px, batch {entry.batch_size}, {entry.precision}"
    share = entry.cls_loss_median_s[DETECTRON2] / entry.median_s[DETECTRON2]
    bound = entry.time_ratio_bound_from_cls_loss
    if 1 - share > TRAIN_TIME_MAX_RATIO:
        return (
            f"{setting}, Detectron2's classification loss is {share:.1%} of its step: even a loss "
            f"that took no time would give ours/D2 = {1 - share:.3f}, above the target "
            f"{TRAIN_TIME_MAX_RATIO}; ours gives the bound {bound:.3f}. "
            "The rest of the step is the same computation in both models (see the profile)."
        )
    if bound > TRAIN_TIME_MAX_RATIO:
        return (
            f"{setting}, the bound from the losses alone is {bound:.3f}: our classification loss "
            "is too slow to reach the target (see the loss's share above)."
        )
    return (
        f"{setting}, the bound from the losses alone is {bound:.3f}, within the target: the "
        "rest of the step differs between the models (see the phases and the profile)."
    )


def inference_markdown(results: InferenceResults, profile_rows: int = 15) -> str:
    """
    The inference report.

    Args:
        results: the inference benchmark's results.
        profile_rows: operators per profile table.

    Returns:
        The Markdown.
    """
    settings = results.settings
    title = "Inference: FocalLossRetinaNet vs Detectron2 RetinaNet and torchvision"
    if settings.exported is not None:
        title += ", and exported"
    lines = _header(results, title)
    lines += [
        f"Forward: {settings.what}. torchvision: {settings.torchvision_model}, K = "
        f"{settings.num_classes}, its transform sized to the images (it still resamples "
        "them, at scale 1); it differs from Detectron2's R-50-FPN in details that cost time: P6 "
        "comes from P5 (256 channels) instead of C5 (2048 channels), and the backbone has "
        "BatchNorm2d layers instead of FrozenBatchNorm2d. Score threshold "
        f"{settings.score_thresh} for all models: with random weights every score is close to "
        "the prior 0.01, so the usual 0.05 would keep nothing and skip the post-processing; with "
        "the threshold at 0 every (anchor, class) pair is a candidate, each level keeps its top "
        "1000, and NMS runs over all of them for every model alike.",
        "",
        "| image px | batch | precision | model | ms / image | images/s | ours / this model time | "
        "backbone ms | head ms | post-proc. ms | detections / image | peak MiB | allocated MiB |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in results.entries:
        for name in e.median_s:
            stages = e.stage_median_s[name]
            ratio = e.median_s[OURS] / e.median_s[name]
            detections = e.detections_per_image.get(name, [])
            # Exported models run as one graph: their stages are not measured apart.
            backbone, head, postprocess = (
                "–" if stage not in stages else _ms(stages[stage]) for stage in STAGES
            )
            lines.append(
                f"{_setting(e)} {name} | "
                f"{_ms(e.latency_per_image_s[name])} | {e.images_per_s[name]:.2f} | "
                f"{ratio:.3f} | {backbone} | {head} | {postprocess} | "
                f"{statistics.mean(detections) if detections else 0:.0f} | "
                f"{_mib(e.peak_memory_bytes[name])} | "
                f"{_mib((e.peak_allocated_bytes or {}).get(name))} |"
            )
    lines += [
        "",
        "Stage times are per batch; ms / image is the whole forward divided by the batch size.",
        "",
    ]
    lines += exported_lines(results)
    lines += _targets_lines(results.entries)
    lines += _profiles_lines(results.profiles, profile_rows)
    return "\n".join(lines)

"""
``table1e``: the paper's speed/accuracy table (Table 1e) and Figure 2 on this machine: inference
time per image of R-50-FPN and R-101-FPN at 400–800 px (short side, COCO-like 4:3 images) beside the
paper's M40 milliseconds and test-dev AP. Absolute times depend on the hardware; each size's time
relative to the 600 px one (the shape of the curve) is comparable with the paper's.
"""

from pathlib import Path
from typing import Dict, Sequence

import torch

from .common import machine_info, medians, record_load, synchronize, time_interleaved
from .fixtures import build_detectron2_pair, detectron2_retinanet_cfg
from .results import OURS, Table1eEntry, Table1eResults

__all__ = ["PAPER_TABLE_1E", "PLOT_NAME", "benchmark_table1e", "plot_table1e", "table1e_markdown"]

# depth -> short side -> (test-dev AP, ms per image on an M40), paper Table 1e.
PAPER_TABLE_1E: Dict[int, Dict[int, tuple]] = {
    50: {400: (30.5, 64), 500: (32.5, 72), 600: (34.3, 98), 700: (35.1, 121), 800: (35.7, 153)},
    101: {400: (31.9, 81), 500: (34.4, 90), 600: (36.0, 122), 700: (37.1, 154), 800: (37.8, 198)},
}
# Images are 4:3, the most common COCO aspect (e.g. 640 × 480).
ASPECT = 4 / 3
PLOT_NAME = "table1e.png"


def _image(short_side: int, seed: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    width = round(short_side * ASPECT)
    image = torch.randint(256, (3, short_side, width), generator=generator, dtype=torch.uint8)
    return image.to(device)


def benchmark_table1e(
    *,
    depths: Sequence[int],
    sizes: Sequence[int],
    reference_size: int,
    repeats: int,
    device: str,
    seed: int,
) -> Table1eResults:
    """
    Time inference (batch 1, fp32, the paper's test settings) of our model per depth and size.

    Args:
        depths: ResNet depths (the paper: 50, 101).
        sizes: short sides in px; must include ``reference_size``.
        reference_size: the size the ratios are taken to (the paper's default: 600).
        repeats: interleaved timed calls per size (a warm-up call comes first).
        device: "cpu" or "cuda".
        seed: of the weights and images.

    Returns:
        The results, one entry per (depth, size).
    """
    if reference_size not in sizes:
        raise ValueError(f"reference_size {reference_size} must be one of the sizes {sizes}.")
    torch_device = torch.device(device)
    entries = []
    for depth in depths:
        cfg = detectron2_retinanet_cfg(depth, 80, 0.05, "compiled", device)
        model = build_detectron2_pair(cfg, seed, reference_size)[OURS].eval()
        inputs = {size: [{"image": _image(size, seed, torch_device)}] for size in sizes}

        def infer(size: int) -> None:
            with torch.no_grad():
                model(inputs[size])

        for size in sizes:  # warm-up: first calls allocate and compile the loss
            infer(size)
        synchronize(torch_device)
        times = time_interleaved(
            {size: (lambda s=size: infer(s)) for size in sizes}, repeats, torch_device, seed
        )
        median_s = medians(times)
        paper = PAPER_TABLE_1E.get(depth, {})
        for size in sizes:
            height, width = inputs[size][0]["image"].shape[1:]
            paper_ap, paper_ms = paper.get(size, (None, None))
            reference_paper = paper.get(reference_size, (None, None))[1]
            entries.append(
                Table1eEntry(
                    depth=depth,
                    short_side=size,
                    height=height,
                    width=width,
                    times_s=times[size],
                    median_ms=median_s[size] * 1e3,
                    ratio_to_reference=median_s[size] / median_s[reference_size],
                    paper_ms=paper_ms,
                    paper_ap=paper_ap,
                    paper_ratio_to_reference=(
                        paper_ms / reference_paper if paper_ms and reference_paper else None
                    ),
                )
            )
    machine = machine_info(torch_device)
    record_load(machine)
    return Table1eResults("table1e", machine, reference_size, repeats, entries)


def table1e_markdown(results: Table1eResults, plot_name: str = PLOT_NAME) -> str:
    """
    Args:
        results: the measurements.
        plot_name: file name of the Figure 2 style plot, beside the report.

    Returns:
        The report: one table per depth, ours beside the paper.
    """
    reference = results.reference_size
    lines = [
        "# Table 1e: speed against accuracy",
        "",
        f"Inference of our FocalLossRetinaNet (random weights, BN calibrated), batch 1, fp32, "
        f"4:3 images; median of {results.repeats} interleaved calls. Machine: "
        f"{results.machine.platform}, {results.machine.cpu_count} CPUs, "
        f"{results.machine.torch_threads} torch threads, device {results.machine.device}, "
        f"torch {results.machine.torch}, {results.machine.date}. The paper: test-dev AP and ms "
        f"on an M40 GPU. Ratios: time at the size / time at {reference} px.",
        "",
        f"![Figure 2 style: the paper's AP against our ms]({plot_name})",
    ]
    for depth in sorted({entry.depth for entry in results.entries}):
        lines += [
            "",
            f"## R-{depth}-FPN",
            "",
            f"| short side | image | ours ms | ours / {reference} px | paper ms | "
            f"paper / {reference} px | paper AP |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for e in (entry for entry in results.entries if entry.depth == depth):
            paper = (
                f"{e.paper_ms:.0f} | {e.paper_ratio_to_reference:.2f} | {e.paper_ap:.1f}"
                if e.paper_ms
                else "– | – | –"
            )
            lines.append(
                f"| {e.short_side} | {e.height} × {e.width} | {e.median_ms:.1f} | "
                f"{e.ratio_to_reference:.2f} | {paper} |"
            )
    return "\n".join(lines) + "\n"


def plot_table1e(results: Table1eResults, path: Path) -> None:
    """Figure 2's axes: the paper's AP (y) against our measured ms per image (x), per depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for depth in sorted({entry.depth for entry in results.entries}):
        points = [e for e in results.entries if e.depth == depth and e.paper_ap is not None]
        if not points:
            continue
        axes.plot([e.median_ms for e in points], [e.paper_ap for e in points], "o-",
                  label=f"RetinaNet R-{depth}-FPN")  # fmt: skip
        for e in points:
            axes.annotate(str(e.short_side), (e.median_ms, e.paper_ap), fontsize=7)
    axes.set_xlabel(f"our inference time (ms), {results.machine.device}")
    axes.set_ylabel("COCO AP (the paper's, test-dev)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

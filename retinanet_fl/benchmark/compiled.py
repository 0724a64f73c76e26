"""
The ``compile`` benchmark: our model with ``MODEL.RETINANET_FL.COMPILE`` (backbone and head through
``torch.compile``) against the same weights eager, in inference, over images of COCO-like sizes
(Detectron2's resizing: a short side drawn from a range, aspect ratios 1:2 to 2:1, the long side
capped). The first pass over the sizes shows which calls compile and what that costs; later passes
give the steady-state speed, and the two give the break-even number of images.
"""

import math
import random
import time
from typing import Dict, List, Tuple

import torch
import torch._dynamo
from detectron2.modeling import build_model

from .common import describe_machine, machine_info, medians, record_load, synchronize
from .fixtures import build_detectron2_pair, detectron2_retinanet_cfg
from .results import OURS, CompileEntry, CompileResults

__all__ = ["coco_like_sizes", "benchmark_compile", "compile_markdown"]

EAGER, COMPILED = "eager", "compiled"


def coco_like_sizes(
    num_images: int, min_short_side: int, max_short_side: int, max_size: int, seed: int
) -> List[Tuple[int, int]]:
    """
    Args:
        num_images: how many sizes.
        min_short_side, max_short_side: the short side is drawn uniformly from this range.
        max_size: cap of the long side (the short side shrinks with it, keeping the aspect).
        seed: of the draw.

    Returns:
        ``num_images`` (height, width) pairs; aspect ratios log-uniform in [1/2, 2].
    """
    rng = random.Random(seed)
    sizes = []
    for _ in range(num_images):
        short = rng.randint(min_short_side, max_short_side)
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        long = short * max(aspect, 1 / aspect)
        scale = min(1.0, max_size / long)
        short, long = round(short * scale), round(long * scale)
        sizes.append((short, long) if aspect >= 1 else (long, short))
    return sizes


def _graph_count() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def benchmark_compile(
    *,
    depth: int,
    sizes: List[Tuple[int, int]],
    steady_repeats: int,
    device: str,
    seed: int,
    size_range: Tuple[int, int, int],
) -> CompileResults:
    """
    Time the eager and the compiled model image by image (the same weights, batch 1, fp32).

    Args:
        depth: ResNet depth.
        sizes: (height, width) of each image, see :func:`coco_like_sizes`.
        steady_repeats: passes over the sizes after the first one.
        device: "cpu" or "cuda".
        seed: of the weights and the images.
        size_range: (min short side, max short side, max size) the sizes were drawn with.

    Returns:
        The results.
    """
    torch_device = torch.device(device)
    cfg = detectron2_retinanet_cfg(depth, 80, 0.05, "compiled", device)
    eager = build_detectron2_pair(cfg, seed, min(sizes)[0])[OURS].eval()
    compiled_cfg = cfg.clone()
    compiled_cfg.MODEL.META_ARCHITECTURE = "FocalLossRetinaNet"
    compiled_cfg.MODEL.RETINANET_FL.COMPILE = True
    compiled = build_model(compiled_cfg).eval()
    compiled.load_state_dict(eager.state_dict())
    models = {EAGER: eager, COMPILED: compiled}
    generator = torch.Generator().manual_seed(seed)
    images = [
        [{"image": torch.randint(256, (3, h, w), generator=generator, dtype=torch.uint8)}]
        for h, w in sizes
    ]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()

    def timed(name: str, image: List[Dict]) -> float:
        synchronize(torch_device)
        start = time.perf_counter()
        with torch.no_grad():
            models[name](image)
        synchronize(torch_device)
        return time.perf_counter() - start

    entries = []
    for (height, width), image in zip(sizes, images):
        eager_s = timed(EAGER, image)
        graphs_before = _graph_count()
        compiled_s = timed(COMPILED, image)
        entries.append(
            CompileEntry(height, width, eager_s, compiled_s, _graph_count() - graphs_before)
        )
    steady: Dict[str, List[float]] = {EAGER: [], COMPILED: []}
    graphs_before = _graph_count()
    for repeat in range(steady_repeats):
        for index, image in enumerate(images):
            order = [EAGER, COMPILED] if (repeat + index) % 2 == 0 else [COMPILED, EAGER]
            for name in order:
                steady[name].append(timed(name, image))
    steady_graphs = _graph_count() - graphs_before
    median_s = medians(steady)
    overhead = sum(e.compiled_s - e.eager_s for e in entries if e.compiled_graphs > 0)
    per_image_saving = median_s[EAGER] - median_s[COMPILED]
    machine = machine_info(torch_device)
    record_load(machine)
    return CompileResults(
        benchmark="compile",
        machine=machine,
        config=f"Detectron2 COCO-Detection/retinanet_R_50_FPN_1x.yaml, RESNETS.DEPTH {depth}",
        min_short_side=size_range[0],
        max_short_side=size_range[1],
        max_size=size_range[2],
        steady_repeats=steady_repeats,
        entries=entries,
        steady_times_s=steady,
        steady_compiled_graphs=steady_graphs,
        steady_ratio_compiled_vs_eager=median_s[COMPILED] / median_s[EAGER],
        compile_overhead_s=overhead,
        break_even_images=overhead / per_image_saving if per_image_saving > 0 else None,
    )


def compile_markdown(results: CompileResults) -> str:
    """Returns: the report of :func:`benchmark_compile`'s results."""
    steady_ms = {name: 1e3 * v for name, v in medians(results.steady_times_s).items()}
    num_compiling = sum(e.compiled_graphs > 0 for e in results.entries)
    break_even = (
        f"{results.break_even_images:.0f} images"
        if results.break_even_images is not None
        else "never (the compiled model is not faster)"
    )
    lines = [
        "# MODEL.RETINANET_FL.COMPILE: compiled backbone and head against eager, inference",
        "",
        describe_machine(results.machine),
        "",
        f"Models: {results.config}, random weights, batch 1, fp32; the compiled model has the "
        f"eager one's weights. {len(results.entries)} images with the short side drawn from "
        f"{results.min_short_side}–{results.max_short_side} px, aspect 1:2 to 2:1, long side at "
        f"most {results.max_size} px (uint8 noise). First pass: each image once in each model; "
        f"then {results.steady_repeats} more passes in alternating order.",
        "",
        f"- Calls that compiled: **{num_compiling} of {len(results.entries)}** "
        f"(graphs built: {sum(e.compiled_graphs for e in results.entries)}); graphs built in the "
        f"later passes, over sizes seen before: {results.steady_compiled_graphs}.",
        f"- Compile overhead (compiled − eager on those calls): "
        f"{results.compile_overhead_s:.1f} s.",
        f"- Steady state, median per image: eager {steady_ms[EAGER]:.0f} ms, compiled "
        f"{steady_ms[COMPILED]:.0f} ms, compiled/eager = "
        f"**{results.steady_ratio_compiled_vs_eager:.3f}**.",
        f"- Break-even: {break_even}.",
        "",
        "| image | H × W | eager s | compiled s | graphs compiled |",
        "|---:|---|---:|---:|---:|",
    ]
    for index, e in enumerate(results.entries, 1):
        lines.append(
            f"| {index} | {e.height} × {e.width} | {e.eager_s:.2f} | {e.compiled_s:.2f} | "
            f"{e.compiled_graphs} |"
        )
    return "\n".join(lines) + "\n"

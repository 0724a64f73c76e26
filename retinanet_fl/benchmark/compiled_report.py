"""The Markdown report of the compile benchmark (:mod:`.compiled`), from its results alone."""

from typing import List

from .common import describe_machine, medians
from .results import COMPILED, EAGER, TRAIN, CompileMode, CompileResults

__all__ = ["compile_markdown"]


def _precision(results: CompileResults) -> str:
    if results.precision == "fp32":
        return "fp32"
    return ("fp16" if results.machine.device.startswith("cuda") else "bf16") + " autocast"


def _mode_lines(mode: CompileMode, recompile_limit: int) -> List[str]:
    """The section of one mode: its totals, then its first pass call by call."""
    unit = "iteration" if mode.mode == TRAIN else "image"
    steady_ms = {name: 1e3 * v for name, v in medians(mode.steady_times_s).items()}
    num_compiling = sum(e.compiled_graphs > 0 for e in mode.entries)
    break_even = (
        f"{mode.break_even_calls:.0f} {unit}s"
        if mode.break_even_calls is not None
        else "never (the compiled model is not faster)"
    )
    title = "Training" if mode.mode == TRAIN else "Inference"
    lines = [
        f"## {title}, batch {mode.batch_size}",
        "",
        f"A call: {mode.what}.",
        "",
        f"- Calls that compiled: **{num_compiling} of {len(mode.entries)}** "
        f"(graphs built: {sum(e.compiled_graphs for e in mode.entries)}); graphs built in the "
        f"later passes, over sizes seen before: {mode.steady_compiled_graphs}.",
        f"- Recompile limit ({recompile_limit} graphs per function) reached: "
        + (
            f"**yes** ({mode.uncompiled_frames} frames left uncompiled; from then on, a size "
            "without a graph runs eagerly)."
            if mode.uncompiled_frames
            else "no."
        ),
        f"- Compile overhead (compiled − eager on those calls): {mode.compile_overhead_s:.1f} s.",
        f"- Steady state, median per {unit}: eager {steady_ms[EAGER]:.0f} ms, compiled "
        f"{steady_ms[COMPILED]:.0f} ms, compiled/eager = "
        f"**{mode.steady_ratio_compiled_vs_eager:.3f}**.",
        f"- Break-even: {break_even}.",
    ]
    if mode.max_loss_relative_difference is not None:
        lines.append(
            "- Losses in the first pass: compiled within "
            f"{mode.max_loss_relative_difference:.1e} of eager (largest relative difference)."
        )
    lines += [
        "",
        f"| {unit} | H × W | padded H × W | eager s | compiled s | graphs compiled |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for index, e in enumerate(mode.entries, 1):
        sizes = ", ".join(f"{height} × {width}" for height, width in e.image_sizes)
        lines.append(
            f"| {index} | {sizes} | {e.padded_height} × {e.padded_width} | {e.eager_s:.2f} | "
            f"{e.compiled_s:.2f} | {e.compiled_graphs} |"
        )
    return lines


def compile_markdown(results: CompileResults) -> str:
    """Returns: the report of :func:`.compiled.benchmark_compile`'s results."""
    layout = "channels-last" if results.channels_last else "contiguous"
    cache = (
        "an empty inductor cache for each mode, so the overhead is that of a first compile"
        if results.fresh_compile_cache
        else "inductor's on-disk cache as earlier runs left it (a graph compiled before costs less)"
    )
    lines = [
        "# MODEL.RETINANET_FL.COMPILE: compiled backbone and head against eager",
        "",
        describe_machine(results.machine),
        "",
        f"Models: {results.config}, random weights, {_precision(results)}, {layout} layout "
        f"(`MODEL.RETINANET_FL.CHANNELS_LAST {results.channels_last}`); the compiled model starts "
        "from the eager one's weights and gets the same inputs. Image sizes: short side drawn "
        f"from {results.min_short_side}–{results.max_short_side} px, aspect 1:2 to 2:1, long side "
        f"at most {results.max_size} px (uint8 noise); a batch runs padded to its largest image, "
        f"rounded up to the backbone's size divisibility. Compiled into {cache}. First pass: each "
        f"call once in each model, eager first; then {results.steady_repeats} more passes in "
        "alternating order.",
    ]
    for mode in results.modes:
        lines += ["", *_mode_lines(mode, results.recompile_limit)]
    return "\n".join(lines) + "\n"

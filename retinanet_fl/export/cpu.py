"""
What the CPU can do fast: int8 dot products (VNNI) and bfloat16 arithmetic (AVX-512 BF16, AMX),
and the messages for a precision the CPU lacks.
"""

import functools
import logging
from typing import FrozenSet

__all__ = ["PRECISIONS", "cpu_flags", "has_vnni", "has_bf16", "check_precision", "warn_int8_speed"]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> FrozenSet[str]:
    """The CPU's feature flags as Linux lists them in /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_vnni(flags: FrozenSet[str] = None) -> bool:
    """Whether the CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX)."""
    return any(flag in (cpu_flags() if flags is None else flags) for flag in VNNI_FLAGS)


def has_bf16(flags: FrozenSet[str] = None) -> bool:
    """Whether the CPU computes in bfloat16 natively (AVX-512 BF16 or AMX)."""
    return any(flag in (cpu_flags() if flags is None else flags) for flag in BF16_FLAGS)


def check_precision(precision: str, runtime: str = "torch", flags: FrozenSet[str] = None) -> None:
    """
    Refuse a precision this CPU or runtime cannot run fast.

    Args:
        precision: "fp32" or "bf16".
        runtime: "torch" (eager models and ``.pt2``/``.ts`` files) or "ONNX Runtime".
        flags: the CPU's flags (default: this CPU's).

    Raises:
        ValueError: an unknown precision; bf16 on a CPU without AVX-512 BF16 or AMX (emulated
            bfloat16 is slower than fp32), or for an ONNX file.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {list(PRECISIONS)}.")
    if precision != "bf16":
        return
    if runtime != "torch":
        raise ValueError(
            f"bf16 runs in PyTorch (a checkpoint, or a .pt2 file): {runtime} has no bf16 "
            "convolutions on the CPU. Export with --format pt2 --precision bf16, or use "
            "--format onnx --quantize int8 for a faster ONNX file."
        )
    if not has_bf16(flags):
        raise ValueError(
            "This CPU has no native bfloat16 (neither AVX-512 BF16 nor AMX in /proc/cpuinfo): "
            "bf16 would be emulated and slower than fp32. Run in fp32 (leave out --precision "
            "bf16), or an int8 ONNX file (python -m retinanet_fl.export --format onnx "
            "--quantize int8)."
        )


def warn_int8_speed(flags: FrozenSet[str] = None) -> bool:
    """
    Log a warning when the CPU lacks VNNI: int8 still runs (and keeps its accuracy), but its
    speed-up is smaller than on a CPU with VNNI (AVX-512 VNNI, AVX-VNNI or AMX).

    Returns:
        whether it warned.
    """
    if has_vnni(flags):
        return False
    logger.warning(
        "This CPU has no VNNI (neither AVX-512 VNNI, AVX-VNNI nor AMX in /proc/cpuinfo): the int8 "
        "model runs, but gains less speed over fp32 than on a CPU with VNNI. Measure it with "
        "tools/benchmark.py --parts deploy before deploying it here."
    )
    return True

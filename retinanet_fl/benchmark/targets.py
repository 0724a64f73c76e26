"""
The pass/fail targets of every benchmark, and their evaluation on one entry.

Model targets are ratios ours / other model of the same run (time: medians; memory: peaks above
what is held before a step), and for the exported models exported / ours; loss targets compare the
loss methods of the same run.
"""

from typing import Dict

from .results import (
    DETECTRON2,
    ONNXRUNTIME,
    OURS,
    TORCHVISION,
    InferenceEntry,
    LossEntry,
    Target,
    TrainEntry,
)

__all__ = [
    "TRAIN_TIME_MAX_RATIO",
    "TRAIN_MEMORY_MAX_RATIO",
    "INFERENCE_TIME_MAX_RATIO",
    "INFERENCE_TIME_VS_TORCHVISION_MAX_RATIO",
    "INFERENCE_ONNXRUNTIME_MAX_RATIO",
    "INFERENCE_EXPORTED_TARGET_BATCH_SIZES",
    "LOSS_MIN_SPEEDUP_VS_FVCORE_JIT",
    "LOSS_MAX_RATIO_TO_LOGITS_COPY",
    "LOSS_MEMORY_SLACK_BYTES",
    "TIME_TARGET_MODELS",
    "evaluate",
    "train_targets",
    "inference_targets",
    "loss_targets",
]

# The fastest RetinaNet to train and run: 30% less time and memory than Detectron2's RetinaNet and
# torchvision's, side by side in one run, with our best settings (channels-last by default).
# Train step, ours / Detectron2 time.
TRAIN_TIME_MAX_RATIO = 0.7
# Train step, ours / Detectron2 peak memory.
TRAIN_MEMORY_MAX_RATIO = 0.7
# Inference, ours / Detectron2 time.
INFERENCE_TIME_MAX_RATIO = 0.7
# Inference, ours / torchvision time.
INFERENCE_TIME_VS_TORCHVISION_MAX_RATIO = 0.7
# Inference, ONNX Runtime (CPU execution provider, the same threads) / our eager model, time per
# image: exporting the whole detector must pay off where deployments run it, on the CPU.
INFERENCE_ONNXRUNTIME_MAX_RATIO = 0.8
# The batch sizes that target holds for: one image per call, as a deployment serves requests (the
# exported model takes one image, so larger batches are as many calls).
INFERENCE_EXPORTED_TARGET_BATCH_SIZES = (1,)
# Loss alone: the compiled kernel at least 20x faster than Detectron2's path (fvcore's jit loss).
LOSS_MIN_SPEEDUP_VS_FVCORE_JIT = 20.0
# Loss alone: the compiled kernel within 3x of one logits copy, the memory-bandwidth floor.
LOSS_MAX_RATIO_TO_LOGITS_COPY = 3.0
# Loss alone: extra memory of the compiled kernel is its gradient plus a few MiB of other buffers.
LOSS_MEMORY_SLACK_BYTES = 4 * 2**20

# Name of a model time target -> (model, the model it is compared with): its ratio is the first's
# time / the second's.
TIME_TARGET_MODELS = {
    "time": (OURS, DETECTRON2),
    "time_vs_detectron2": (OURS, DETECTRON2),
    "time_vs_torchvision": (OURS, TORCHVISION),
    "time_onnxruntime_vs_ours": (ONNXRUNTIME, OURS),
}


def evaluate(ratio: float, limit: float, relation: str) -> Target:
    """
    A ratio against its limit.

    Args:
        ratio: ours / other.
        limit: the target's limit.
        relation: ``"<="`` or ``"<"``.

    Returns:
        The target, met or missed.
    """
    met = ratio <= limit if relation == "<=" else ratio < limit
    return Target(
        ratio=ratio, target=f"{relation} {limit}", met=met, missed_by=max(ratio - limit, 0.0)
    )


def train_targets(entry: TrainEntry) -> Dict[str, Target]:
    """
    The train targets of one setting.

    Args:
        entry: a measured setting; memory targets only where its memory ratios are set.

    Returns:
        Target name -> target: ``time``, and ``memory`` / ``allocated memory`` where measured.
    """
    targets = {"time": evaluate(entry.time_ratio_ours_vs_detectron2, TRAIN_TIME_MAX_RATIO, "<=")}
    ratios = (
        ("memory", entry.memory_ratio_ours_vs_detectron2),
        ("allocated memory", entry.allocated_ratio_ours_vs_detectron2),
    )
    for name, ratio in ratios:
        if ratio is not None:
            targets[name] = evaluate(ratio, TRAIN_MEMORY_MAX_RATIO, "<=")
    return targets


def inference_targets(entry: InferenceEntry) -> Dict[str, Target]:
    """
    The inference targets of one setting.

    Args:
        entry: a measured setting.

    Returns:
        Target name -> target: ``time_vs_detectron2``, ``time_vs_torchvision`` where torchvision
        ran, and ``time_onnxruntime_vs_ours`` where ONNX Runtime ran at a batch size of
        :data:`INFERENCE_EXPORTED_TARGET_BATCH_SIZES`.
    """
    targets = {
        "time_vs_detectron2": evaluate(
            entry.time_ratio_ours_vs_detectron2, INFERENCE_TIME_MAX_RATIO, "<="
        )
    }
    if entry.time_ratio_ours_vs_torchvision is not None:
        targets["time_vs_torchvision"] = evaluate(
            entry.time_ratio_ours_vs_torchvision, INFERENCE_TIME_VS_TORCHVISION_MAX_RATIO, "<="
        )
    exported = entry.time_ratio_exported_vs_ours or {}
    if ONNXRUNTIME in exported and entry.batch_size in INFERENCE_EXPORTED_TARGET_BATCH_SIZES:
        targets["time_onnxruntime_vs_ours"] = evaluate(
            exported[ONNXRUNTIME], INFERENCE_ONNXRUNTIME_MAX_RATIO, "<="
        )
    return targets


def loss_targets(entry: LossEntry) -> Dict[str, bool]:
    """
    The loss targets at one size.

    Args:
        entry: a measured size, with its memory.

    Returns:
        Target description -> met; a target is absent where one of its methods did not run.
    """
    median, extra = entry.median_s, entry.peak_extra_in_rk_fp32
    targets = {}
    if "ours_compiled" in median and "fvcore_jit" in median:
        targets[f"compiled {LOSS_MIN_SPEEDUP_VS_FVCORE_JIT:g}x faster than fvcore_jit"] = (
            median["fvcore_jit"] / median["ours_compiled"] >= LOSS_MIN_SPEEDUP_VS_FVCORE_JIT
        )
    if "ours_compiled" in median and "logits_copy" in median:
        targets[f"compiled within {LOSS_MAX_RATIO_TO_LOGITS_COPY:g}x of a logits copy"] = (
            median["ours_compiled"] / median["logits_copy"] <= LOSS_MAX_RATIO_TO_LOGITS_COPY
        )
    if extra.get("ours_compiled") is not None:
        # The gradient itself is one (R, K) fp32 tensor.
        limit = 1 + LOSS_MEMORY_SLACK_BYTES / entry.rk_fp32_bytes
        targets["compiled extra memory at most one (R, K) fp32"] = extra["ours_compiled"] <= limit
    if "ours_eager" in median and "fvcore" in median:
        targets["eager no slower than fvcore's eager"] = median["ours_eager"] <= median["fvcore"]
    return targets

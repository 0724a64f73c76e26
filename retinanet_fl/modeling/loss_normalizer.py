"""The divisor of RetinaNet's summed losses: the positive-anchor count, or its moving average."""

import torch
import torch.distributed as dist
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

__all__ = [
    "LOSS_NORMALIZERS",
    "EMA_NORMALIZER_START",
    "num_pos_normalizer",
    "ema_normalizer",
    "put_scalar",
]

LOSS_NORMALIZERS = ("ema", "num_pos")
# Detectron2 starts its moving average of the positive-anchor count at 100.
EMA_NORMALIZER_START = 100.0


def num_pos_normalizer(num_pos_anchors: int, device: torch.device) -> float:
    """
    The paper's normalizer: the batch's positive-anchor count averaged over workers, at least 1.
    With DDP's gradient averaging, this divides the loss summed over the whole batch by the whole
    batch's positive count.
    """
    return max(_mean_over_workers(float(num_pos_anchors), device), 1.0)


def ema_normalizer(previous: float, num_pos_anchors: int, momentum: float) -> float:
    """
    Detectron2's normalizer: a moving average of this worker's positive-anchor count (at least 1
    per step), updated with ``momentum`` from ``previous``.
    """
    return previous * momentum + max(num_pos_anchors, 1) * (1 - momentum)


def _mean_over_workers(value: float, device: torch.device) -> float:
    world_size = comm.get_world_size()
    if world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float32, device=device)
    dist.all_reduce(total)
    return total.item() / world_size


def put_scalar(name: str, value: float) -> None:
    """Log to Detectron2's event storage when there is one (i.e. inside a trainer)."""
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    storage.put_scalar(name, value)

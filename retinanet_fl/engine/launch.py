"""Multi-process launch on GPUs (NCCL) and CPUs (gloo), by Detectron2's ``launch`` or torchrun."""

import logging
import os
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    """
    Returns:
        whether torchrun (or torch.distributed.run) started this process and set its rank.
    """
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
) -> None:
    """
    Run ``main_func(*args)`` in one process per GPU (or per requested CPU worker) on every machine.

    Under torchrun, this process is already one of the workers: join the process group torchrun
    describes through its environment variables (NCCL with GPUs, gloo without) and run
    ``main_func`` here; the ``--num-gpus`` style arguments are then ignored. Otherwise Detectron2's
    ``launch`` spawns the workers, and it too picks gloo on machines without CUDA.

    Args:
        main_func: the function each worker runs.
        num_gpus_per_machine: worker processes per machine.
        num_machines: machines taking part.
        machine_rank: rank of this machine.
        dist_url: where workers rendezvous, e.g. "tcp://127.0.0.1:12345", or "auto".
        args: positional arguments of ``main_func``.
    """
    if not launched_by_torchrun():
        detectron2_launch(
            main_func,
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=tuple(args),
        )
        return
    local_rank = int(os.environ["LOCAL_RANK"])
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if has_gpu else "gloo")
    comm.create_local_process_group(int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    comm.synchronize()
    main_func(*args)


def create_ddp_model(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
    """
    Wrap a model in DistributedDataParallel when there is more than one worker.

    Unlike Detectron2's ``create_ddp_model``, a model on the CPU gets no ``device_ids``
    (DistributedDataParallel rejects them for CPU modules), so gloo training on CPUs works.

    Args:
        model: the model, already on its device.
        kwargs: further arguments of DistributedDataParallel.

    Returns:
        the model itself with one worker, else the wrapped model.
    """
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda":
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    return DistributedDataParallel(model, **kwargs)

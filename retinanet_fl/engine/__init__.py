"""Training, evaluation and multi-process launch, built on Detectron2's engine."""

from .checkpoint import AtomicCheckpointer
from .launch import create_ddp_model, launch
from .trainer import Trainer

__all__ = ["AtomicCheckpointer", "Trainer", "create_ddp_model", "launch"]

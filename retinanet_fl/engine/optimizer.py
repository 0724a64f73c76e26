"""Detectron2's SGD optimizer, or AdamW with the same parameter groups, by ``SOLVER.OPTIMIZER``."""

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as build_sgd_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

OPTIMIZERS = ("SGD", "AdamW")


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """
    Args:
        cfg: a config with ``SOLVER.OPTIMIZER`` in :data:`OPTIMIZERS`.
        model: the model whose parameters to optimize.

    Returns:
        Detectron2's SGD (``build_optimizer``) or AdamW with the same per-parameter learning rates
        and weight decays (``SOLVER.BIAS_LR_FACTOR``, ``WEIGHT_DECAY_NORM``, ...) and the same
        optional gradient clipping (``SOLVER.CLIP_GRADIENTS``).
    """
    name = cfg.SOLVER.OPTIMIZER
    if name == "SGD":
        return build_sgd_optimizer(cfg, model)
    if name != "AdamW":
        raise ValueError(f"SOLVER.OPTIMIZER must be one of {OPTIMIZERS}, got {name!r}.")
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.SOLVER.BASE_LR,
        betas=tuple(cfg.SOLVER.ADAM_BETAS),
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
    return maybe_add_gradient_clipping(cfg, optimizer)

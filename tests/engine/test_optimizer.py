import pytest
import torch
from torch import nn

from retinanet_fl.config import get_cfg
from retinanet_fl.engine.optimizer import build_optimizer


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def _cfg(optimizer: str):
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = optimizer
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    return cfg


def test_sgd_is_detectron2s():
    optimizer = build_optimizer(_cfg("SGD"), _model())
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == 0.9


def test_adamw_keeps_detectron2s_parameter_groups():
    model = _model()
    adamw = build_optimizer(_cfg("AdamW"), model)
    sgd = build_optimizer(_cfg("SGD"), model)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["betas"] == (0.9, 0.999)

    def decays(optimizer):
        return sorted(
            (len(group["params"]), group["weight_decay"]) for group in optimizer.param_groups
        )

    assert decays(adamw) == decays(sgd)
    assert {0.0, 0.05} == {group["weight_decay"] for group in adamw.param_groups}


def test_adamw_clips_gradients_when_asked():
    cfg = _cfg("AdamW")
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1e-3
    model = _model()
    optimizer = build_optimizer(cfg, model)
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 100.0)
    optimizer.step()
    for parameter in model.parameters():
        assert parameter.grad.norm() == pytest.approx(1e-3, rel=1e-3)


def test_unknown_optimizer_names_the_choices():
    with pytest.raises(
        ValueError, match=r"SOLVER.OPTIMIZER must be one of \('SGD', 'AdamW'\), got 'Adam'"
    ):
        build_optimizer(_cfg("Adam"), _model())

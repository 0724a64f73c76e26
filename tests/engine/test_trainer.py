"""The Trainer stops at the first NaN or infinite loss, naming the iteration and the term."""

import math

import pytest
import torch

import retinanet_fl  # noqa: F401  registers the model and the datasets
from retinanet_fl.engine.trainer import Trainer
from retinanet_fl.modeling.cls_losses import FocalClsLoss


def test_nan_loss_stops_training_naming_iteration_and_term(
    tiny_images, tmp_path, monkeypatch, train_cfg, register_tiny
):
    calls = []
    original_forward = FocalClsLoss.forward

    def nan_at_second_call(self, *args):
        calls.append(None)
        loss = original_forward(self, *args)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(FocalClsLoss, "forward", nan_at_second_call)
    trainer = Trainer(train_cfg(register_tiny(tiny_images[1]), tmp_path))
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError) as error:
        trainer.train()
    message = str(error.value)
    assert message.startswith(
        "Non-finite loss at iteration 1: loss_cls = nan (finite: loss_box_reg = "
    )
    assert "SOLVER.BASE_LR" in message
    assert trainer.iter == 1
    # It stopped before the optimizer step: the NaN gradients never reached the weights.
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert [it for _, it in trainer.storage.history("loss_cls").values()] == [0]


def test_absurd_learning_rate_stops_training_with_a_named_term(
    tiny_images, tmp_path, train_cfg, register_tiny
):
    cfg = train_cfg(
        register_tiny(tiny_images[1]), tmp_path, "SOLVER.BASE_LR", "1e12", "SOLVER.MAX_ITER", "10"
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    message = r"^Non-finite loss at iteration \d+: loss_(cls|box_reg) = (nan|inf)"
    with pytest.raises(FloatingPointError, match=message):
        trainer.train()
    assert trainer.iter < cfg.SOLVER.MAX_ITER - 1


def test_amp_on_the_cpu_trains_in_bf16(tiny_images, tmp_path, train_cfg, register_tiny):
    # Detectron2's AMPTrainer requires CUDA; on the CPU, SOLVER.AMP.ENABLED trains under bf16
    # autocast, with fp32 losses.
    cfg = train_cfg(register_tiny(tiny_images[1]), tmp_path, "SOLVER.AMP.ENABLED", "True")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    head_dtypes = []
    head = trainer.model.head
    handle = head.cls_score.register_forward_hook(
        lambda module, args, output: head_dtypes.append(output.dtype)
    )
    try:
        trainer.train()
    finally:
        handle.remove()
    assert set(head_dtypes) == {torch.bfloat16}
    assert trainer.iter == cfg.SOLVER.MAX_ITER
    losses = trainer.storage.history("loss_cls").values()
    assert len(losses) == cfg.SOLVER.MAX_ITER and all(math.isfinite(v) for v, _ in losses)

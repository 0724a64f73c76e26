"""
The CUDA checks (run by ``make gpu-check`` on a machine with a GPU; skipped elsewhere): AMP
training with finite losses, and a one-GPU NCCL ``train_net.py`` run that trains, resumes and
evaluates. The compiled (Triton) loss against eager and torchvision on CUDA is covered by
``tests/layers/test_focal_loss.py`` (its device-parametrized history test).
"""

import math

import pytest
import torch

from retinanet_fl.engine.trainer import Trainer
from tests.test_train_net import parse_box_ap, run_train_net

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_amp_training_on_cuda_has_finite_fp32_losses(
    tiny_images, tmp_path, train_cfg, register_tiny
):
    cfg = train_cfg(
        register_tiny(tiny_images[1]), tmp_path,
        "MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True",
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    for name in ("loss_cls", "loss_box_reg"):
        values = [value for value, _ in trainer.storage.history(name).values()]
        assert len(values) == cfg.SOLVER.MAX_ITER and all(math.isfinite(v) for v in values), name


def test_one_gpu_nccl_train_net_trains_and_evaluates(datasets_root, tmp_path):
    opts = ["MODEL.DEVICE", "cuda"]
    output = run_train_net(datasets_root, tmp_path, "--num-gpus", "1", opts=opts)
    assert "nccl" in output.lower() or "NCCL" in output
    assert (tmp_path / "model_final.pth").is_file()
    weights = str(tmp_path / "model_final.pth")
    evaluation = run_train_net(
        datasets_root, tmp_path / "eval", "--eval-only", opts=opts + ["MODEL.WEIGHTS", weights]
    )
    # --eval-only on the final weights reproduces the evaluation at the end of training.
    assert parse_box_ap(evaluation) == pytest.approx(parse_box_ap(output), abs=0.05)

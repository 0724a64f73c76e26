"""Folding FrozenBatchNorm2d into the convolution before it computes what Detectron2 computes."""

import copy

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_backbone, build_model

from retinanet_fl.modeling.frozen_bn import FrozenBNFoldedConv2d, fold_frozen_batchnorm
from tests.modeling.test_meta_arch import detectron2_cfg, our_cfg


def _randomize_frozen_bn(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for norm in module.modules():
        if isinstance(norm, FrozenBatchNorm2d):
            channels = norm.weight.numel()
            norm.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
            norm.bias.copy_(torch.randn(channels, generator=generator))
            norm.running_mean.copy_(torch.randn(channels, generator=generator))
            norm.running_var.copy_(torch.rand(channels, generator=generator) + 0.1)


def _conv_with_frozen_bn(bias: bool, stride: int) -> Conv2d:
    torch.manual_seed(stride)
    conv = Conv2d(6, 8, 3, stride=stride, padding=1, bias=bias, norm=FrozenBatchNorm2d(8))
    _randomize_frozen_bn(conv, seed=stride)
    return conv.double()


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_folded_conv_gives_detectron2s_outputs_and_gradients(bias, stride, channels_last):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    reference = _conv_with_frozen_bn(bias, stride).to(memory_format=memory_format)
    folded = copy.deepcopy(reference)
    assert fold_frozen_batchnorm(folded) == 1 and type(folded) is FrozenBNFoldedConv2d
    weight, _ = folded.folded_weight_and_bias()
    assert weight.is_contiguous(memory_format=memory_format)

    x = torch.randn(2, 6, 10, 14, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():  # Detectron2's FrozenBN takes another path (F.batch_norm) here
        torch.testing.assert_close(folded(x), reference(x), rtol=1e-12, atol=1e-12)
    expected, actual = reference(x), folded(x)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(expected)
    params = [reference.weight] + ([reference.bias] if bias else [])
    expected_grads = torch.autograd.grad(expected, [x, *params], grad_out)
    params = [folded.weight] + ([folded.bias] if bias else [])
    actual_grads = torch.autograd.grad(actual, [x, *params], grad_out)
    for got, want in zip(actual_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_folding_keeps_the_backbones_names_and_outputs():
    cfg = detectron2_cfg()
    assert cfg.MODEL.RESNETS.NORM == "FrozenBN"
    torch.manual_seed(0)
    reference = build_backbone(cfg)
    _randomize_frozen_bn(reference, seed=0)
    folded = copy.deepcopy(reference)
    # the stem, 2 convolutions in each of 8 blocks, 3 projection shortcuts.
    assert fold_frozen_batchnorm(folded) == 1 + 8 * 2 + 3
    assert list(folded.state_dict()) == list(reference.state_dict())
    # In float64: through 20 rescaled layers, fp32 rounding differs by more than any tight bound.
    images = torch.randn(2, 3, 96, 128, dtype=torch.float64)
    with torch.no_grad():
        expected, actual = reference.double()(images), folded.double()(images)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-10, atol=1e-10)


def test_our_model_folds_by_default_and_folds_the_weights_it_loads():
    model = build_model(our_cfg())
    stem = model.backbone.bottom_up.stem.conv1
    assert type(stem) is FrozenBNFoldedConv2d
    cfg = our_cfg()
    cfg.MODEL.RETINANET_FL.FOLD_FROZEN_BN = False
    unfolded = build_model(cfg)
    assert type(unfolded.backbone.bottom_up.stem.conv1) is Conv2d

    # Weights loaded after building (a checkpoint) are folded on the next call.
    _randomize_frozen_bn(unfolded, seed=1)
    model.load_state_dict(unfolded.state_dict())
    images = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        expected = unfolded.backbone.double()(images)
        actual = model.backbone.double()(images)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-10, atol=1e-10)

"""
Frozen batch norm folded into the convolution before it: the same function, fewer passes.

Detectron2's ResNets follow each convolution with ``FrozenBatchNorm2d`` (``RESNETS.NORM
"FrozenBN"``, the paper's setting, and every stage that ``FREEZE_AT`` freezes), a per-channel map
y = s·x + t that costs a pass over the activations in inference and two in training. Since
conv(x, W)·s + t = conv(x, s·W) + t, :class:`FrozenBNFoldedConv2d` scales the weights (MBs) instead
of the activations (hundreds of MBs) and gives t to the convolution as its bias. It folds on every
call, so gradients reach W as they did, a checkpoint loaded later is folded too, and the parameter
and buffer names (hence checkpoints) stay Detectron2's.
"""

from typing import Tuple

import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import Tensor, nn

__all__ = ["FrozenBNFoldedConv2d", "fold_frozen_batchnorm"]


class FrozenBNFoldedConv2d(Conv2d):
    """Detectron2's ``Conv2d`` whose ``norm`` is a ``FrozenBatchNorm2d``, run as one convolution."""

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.folded_weight_and_bias()
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def folded_weight_and_bias(self) -> Tuple[Tensor, Tensor]:
        """
        Returns:
            weight ``(C_out, C_in / groups, kh, kw)``, in the memory format of ``self.weight``, and
            bias ``(C_out,)`` of the convolution followed by the frozen batch norm.
        """
        norm = self.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        conv_bias = self.bias  # a local, so that TorchScript (export) can refine Optional
        if conv_bias is not None:
            shift = shift + conv_bias * scale
        return self.weight * scale.reshape(-1, 1, 1, 1), shift


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """
    Make every Detectron2 ``Conv2d`` in ``module`` whose ``norm`` is a ``FrozenBatchNorm2d`` fold
    it into its weights. Modules keep their parameters, buffers and names.

    Args:
        module: e.g. the detector's backbone; changed in place.

    Returns:
        the number of convolutions changed.
    """
    folded = 0
    for conv in module.modules():
        if type(conv) is Conv2d and type(conv.norm) is FrozenBatchNorm2d:
            conv.__class__ = FrozenBNFoldedConv2d
            folded += 1
    return folded

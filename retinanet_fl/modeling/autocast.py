"""
Mixed precision on the CPU: a workaround for a PyTorch bf16 convolution bug on tiny feature maps.

Under CPU bf16 autocast, PyTorch 2.14 computes the weight gradient of a 3×3 stride-2 convolution
of a 1×1 input as NaN in a few percent of calls (none in fp32, none for larger inputs). In
RetinaNet that convolution is P6's (C5 of 1×1) or P7's (P6 of 1×1), which images of 64 px or less
meet. :func:`keep_tiny_top_block_in_fp32` runs Detectron2's P6/P7 block in fp32 for such maps.
"""

from typing import List

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from torch import Tensor, nn

__all__ = ["keep_tiny_top_block_in_fp32"]

# C5 maps at most this large make P6 1×1, whose P7 convolution meets the bug.
_TINY_C5 = 2


def _tiny_under_autocast(c5: Tensor) -> bool:
    return torch.is_autocast_enabled(c5.device.type) and min(c5.shape[-2:]) <= _TINY_C5


class _TinyMapsInFp32P6P7(LastLevelP6P7):
    """Detectron2's ``LastLevelP6P7``, computed in fp32 when C5 is at most 2×2 under autocast."""

    def forward(self, c5: Tensor) -> List[Tensor]:
        # TorchScript (model export) compiles neither autocast nor super(): it skips this branch.
        if not torch.jit.is_scripting():
            if _tiny_under_autocast(c5):
                with torch.autocast(c5.device.type, enabled=False):
                    return self._p6_p7(c5.float())
        return self._p6_p7(c5)

    def _p6_p7(self, c5: Tensor) -> List[Tensor]:
        p6 = self.p6(c5)
        return [p6, self.p7(F.relu(p6))]


def keep_tiny_top_block_in_fp32(backbone: nn.Module) -> None:
    """
    If ``backbone`` (Detectron2's FPN) ends in ``LastLevelP6P7``, make that block compute in fp32
    for tiny maps under autocast. The block keeps its parameters and their names, so checkpoints
    are unaffected.

    Args:
        backbone: the detector's backbone; changed in place.
    """
    top_block = getattr(backbone, "top_block", None)
    if type(top_block) is LastLevelP6P7:
        top_block.__class__ = _TinyMapsInFp32P6P7

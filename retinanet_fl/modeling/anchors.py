"""Octave anchors (paper §4, "Anchors"; Table 1c).

At a pyramid level with stride ``s`` the anchors have sizes ``ANCHOR_SCALE × s × 2^(i / n)``
for ``i = 0 … n − 1`` (``n`` scales per octave), each with every aspect ratio. With the paper's
settings (scale 4, 3 scales per octave, ratios 1:2, 1:1, 2:1) these are exactly the boxes, in the
same order, of Detectron2's ``DefaultAnchorGenerator`` configured by ``Base-RetinaNet.yaml``;
Table 1c's rows (1×1 … 4×3) differ only in ``MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE`` and
``MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS``.
"""

import math
from typing import List, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator

__all__ = ["OctaveAnchorGenerator", "octave_anchor_sizes"]


def octave_anchor_sizes(
    strides: Sequence[int], anchor_scale: float, scales_per_octave: int
) -> List[List[float]]:
    """
    Args:
        strides: stride of each pyramid level, e.g. ``[8, 16, 32, 64, 128]`` for P3–P7.
        anchor_scale: base anchor size in units of the level's stride.
        scales_per_octave: number of sizes per level, spaced by ``2^(1 / scales_per_octave)``.

    Returns:
        for each level, the anchor sizes (square root of the anchor area) in input pixels.
    """
    # 2 ** (i / n) is computed exactly as Base-RetinaNet.yaml's `x * 2**(1.0/3)`, so the
    # default anchors are bit-identical to Detectron2's.
    return [
        [anchor_scale * stride * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
        for stride in strides
    ]


def _flatten_aspect_ratios(aspect_ratios) -> List[float]:
    if len(aspect_ratios) and isinstance(aspect_ratios[0], Sequence):
        return [float(r) for per_level in aspect_ratios for r in per_level]
    return [float(r) for r in aspect_ratios]


@ANCHOR_GENERATOR_REGISTRY.register()
class OctaveAnchorGenerator(DefaultAnchorGenerator):
    """
    Anchors from an anchor scale, a number of scales per octave and aspect ratios.

    Cell anchors are ordered size-major (all aspect ratios of the smallest size first), which is
    the channel layout the head's ``A × K`` and ``A × 4`` outputs follow. Grid placement and the
    output format are those of :class:`DefaultAnchorGenerator`.
    """

    # The MODEL.RETINANET_FL keys it reads (checked for unread settings by engine/checks.py).
    RETINANET_FL_KEYS = ("ANCHOR_SCALE", "ANCHOR_SCALES_PER_OCTAVE")

    @configurable
    def __init__(
        self,
        *,
        strides: List[int],
        anchor_scale: float = 4.0,
        scales_per_octave: int = 3,
        aspect_ratios=(0.5, 1.0, 2.0),
        offset: float = 0.5,
    ):
        """
        Args:
            strides: stride of each input feature map.
            anchor_scale: base anchor size = ``anchor_scale × stride`` (4 in the paper).
            scales_per_octave: sizes per level, ``base × 2^(i / scales_per_octave)`` (3 in the
                paper).
            aspect_ratios (list[float] or list[list[float]]): anchor height / width; a list of lists
                gives one list per level (see :class:`DefaultAnchorGenerator`).
            offset: offset of the first anchor centre from the image corner, in units of stride.
        """
        _validate_octave_params(strides, anchor_scale, scales_per_octave, aspect_ratios, offset)
        self.anchor_scale = float(anchor_scale)
        self.scales_per_octave = int(scales_per_octave)
        super().__init__(
            sizes=octave_anchor_sizes(strides, self.anchor_scale, self.scales_per_octave),
            aspect_ratios=aspect_ratios,
            strides=list(strides),
            offset=offset,
        )

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {
            "strides": [shape.stride for shape in input_shape],
            "anchor_scale": cfg.MODEL.RETINANET_FL.ANCHOR_SCALE,
            "scales_per_octave": cfg.MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE,
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
        }

    def _grid_anchors(self, grid_sizes: List[List[int]]) -> List[torch.Tensor]:
        """
        Detectron2's anchors per level, ``(H_l * W_l * A, 4)``, from a grid built with explicit
        "ij" indexing: Detectron2's omits it, which makes torch warn on every training step.
        """
        anchors = []
        # A list of the buffers rather than the BufferList itself, which TorchScript cannot zip.
        cell_anchors_per_level: List[torch.Tensor] = [
            b for _, b in self.cell_anchors.named_buffers()
        ]
        for size, stride, cell_anchors in zip(grid_sizes, self.strides, cell_anchors_per_level):
            height, width = size[0], size[1]
            start = self.offset * stride
            device = cell_anchors.device
            shift_y, shift_x = torch.meshgrid(
                torch.arange(start, height * stride, stride, dtype=torch.float32, device=device),
                torch.arange(start, width * stride, stride, dtype=torch.float32, device=device),
                indexing="ij",
            )
            shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
            anchors.append((shifts + cell_anchors.view(1, -1, 4)).reshape(-1, 4))
        return anchors


def _validate_octave_params(strides, anchor_scale, scales_per_octave, aspect_ratios, offset):
    if len(strides) == 0 or any(s <= 0 for s in strides):
        raise ValueError(
            f"Anchor strides must be a non-empty list of positive ints, got {strides}."
        )
    if not (anchor_scale > 0 and math.isfinite(anchor_scale)):
        raise ValueError(
            f"MODEL.RETINANET_FL.ANCHOR_SCALE must be a positive number (4 in the paper), "
            f"got {anchor_scale}."
        )
    if int(scales_per_octave) != scales_per_octave or scales_per_octave < 1:
        raise ValueError(
            f"MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE must be an integer >= 1 (3 in the "
            f"paper), got {scales_per_octave}."
        )
    ratios = _flatten_aspect_ratios(aspect_ratios)
    if len(ratios) == 0 or any(not (r > 0 and math.isfinite(r)) for r in ratios):
        raise ValueError(
            f"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS must be a non-empty list of positive numbers "
            f"(e.g. [[0.5, 1.0, 2.0]]), got {aspect_ratios}."
        )
    if not 0.0 <= offset < 1.0:
        raise ValueError(
            f"MODEL.ANCHOR_GENERATOR.OFFSET must be in [0, 1) (0.5 = anchor centres at the middle "
            f"of each cell), got {offset}."
        )

"""
Detectron (Caffe2) RetinaNet checkpoints: the parameter names Detectron2's conversion
(``convert_c2_detectron_names``) leaves unmatched, mapped to ours. Detectron2 knows the backbone
and the FPN laterals/outputs, not P6/P7 nor the RetinaNet head. Applied by the model when it loads a
state dict, so every checkpointer (``DetectionCheckpointer``, ``DefaultPredictor``) loads them.
"""

import re
from typing import Dict, List, Optional

from torch import Tensor, nn

__all__ = ["rename_caffe2_retinanet_keys"]

# Caffe2 shares the head's blobs across levels under the finest level's name (fpn3).
_CAFFE2_RETINANET_KEYS = [
    (re.compile(r"^fpn\.(6|7)\.(weight|bias)$"), r"backbone.top_block.p\1.\2"),
    (re.compile(r"^retnet\.cls\.pred\.fpn\d+\.(weight|bias)$"), r"head.cls_score.\1"),
    (re.compile(r"^retnet\.bbox\.pred\.fpn\d+\.(weight|bias)$"), r"head.bbox_pred.\1"),
]
_CAFFE2_RETINANET_TOWER_KEY = re.compile(
    r"^retnet\.(cls|bbox)\.conv\.n(\d+)\.fpn\d+\.(weight|bias)$"
)


def rename_caffe2_retinanet_keys(
    state_dict: Dict[str, Tensor], prefix: str, head: nn.Module
) -> None:
    """
    Rename, in place, the Detectron (Caffe2) RetinaNet keys of ``state_dict`` under ``prefix`` to
    our parameter names; other keys, and keys whose new name is already present, are left alone.

    Args:
        state_dict: a state dict being loaded into the model.
        prefix: the model's prefix in it.
        head: the model's head, whose towers give the conv names (they may interleave norms).
    """
    tower_conv_names = {
        tower: _conv_child_names(getattr(head, f"{tower}_subnet", None))
        for tower in ("cls", "bbox")
    }
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new_name = _caffe2_retinanet_name(key[len(prefix) :], tower_conv_names)
        if new_name is not None and prefix + new_name not in state_dict:
            state_dict[prefix + new_name] = state_dict.pop(key)


def _conv_child_names(tower: Optional[nn.Module]) -> List[str]:
    """Names of the convs of a head tower, in order (the tower may interleave norm layers)."""
    if tower is None:
        return []
    return [name for name, child in tower.named_children() if isinstance(child, nn.Conv2d)]


def _caffe2_retinanet_name(name: str, tower_conv_names: Dict[str, List[str]]) -> Optional[str]:
    """
    Returns:
        our parameter name for a Detectron (Caffe2) RetinaNet key left unmatched by Detectron2's
        conversion, or None when ``name`` is not one.
    """
    for pattern, replacement in _CAFFE2_RETINANET_KEYS:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    tower_match = _CAFFE2_RETINANET_TOWER_KEY.match(name)
    if tower_match is None:
        return None
    tower, conv_idx, param = tower_match.groups()
    conv_names = tower_conv_names[tower]
    if int(conv_idx) >= len(conv_names):
        return None
    return f"head.{tower}_subnet.{conv_names[int(conv_idx)]}.{param}"

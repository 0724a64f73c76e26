"""
Our meta-architecture, anchor generator, head and classification losses, registered into
Detectron2.
"""

from . import (
    anchors,  # noqa: F401  registers OctaveAnchorGenerator
    cls_losses,  # noqa: F401  registers the classification losses
    head,  # noqa: F401  registers RetinaNetFocalHead
    meta_arch,  # noqa: F401  registers FocalLossRetinaNet
    ohem,  # noqa: F401  registers the OHEM loss
)

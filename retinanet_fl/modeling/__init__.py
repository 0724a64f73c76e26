"""Our meta-architecture, anchor generator, head and classification losses, registered into Detectron2."""
from . import cls_losses  # noqa: F401  registers the classification losses
from . import anchors  # noqa: F401  registers OctaveAnchorGenerator
from . import head  # noqa: F401  registers RetinaNetFocalHead
from . import meta_arch  # noqa: F401  registers FocalLossRetinaNet

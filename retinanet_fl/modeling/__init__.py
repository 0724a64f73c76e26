"""Our meta-architecture, anchor generator, head and classification losses, registered into Detectron2."""
from . import cls_losses  # noqa: F401  registers the classification losses

"""RetinaNet and the Focal Loss as a Detectron2 extension.

``import retinanet_fl`` registers everything this project adds to Detectron2's registries.
"""

import warnings

with warnings.catch_warnings():
    # fvcore and Detectron2 script a few functions with torch.jit.script when imported, which
    # torch reports as deprecated in every run; nothing a user can act on.
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    from . import (
        data,  # noqa: F401  registers the datasets
        modeling,  # noqa: F401  registers the models and losses
    )
from .config import add_retinanet_fl_config, get_cfg

__version__ = "0.1.0"

__all__ = ["add_retinanet_fl_config", "get_cfg"]

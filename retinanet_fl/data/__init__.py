"""Datasets this project ships."""
from . import synthetic  # noqa: F401  registers synthetic_train / synthetic_val

"""Datasets: COCO and Pascal VOC by path, the synthetic dataset, load-time checks, the mapper."""

from . import synthetic  # noqa: F401  registers synthetic_train / synthetic_val
from .mapper import RobustDatasetMapper, read_image  # noqa: F401
from .sanitize import DatasetReport, load_dataset_dicts, prepare_dataset_dicts  # noqa: F401

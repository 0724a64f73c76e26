"""
The configs this project ships, found inside the installed package (``retinanet_fl/configs``, the
repository's ``configs/``), so that tools work from any directory and from a wheel.
"""

from pathlib import Path
from typing import List

__all__ = ["CONFIGS_DIR", "get_config_file", "list_config_files"]

# Resolved: in a checkout, retinanet_fl/configs links to the repository's configs/.
CONFIGS_DIR = (Path(__file__).resolve().parent / "configs").resolve()


def list_config_files() -> List[str]:
    """Returns: the shipped configs, as paths relative to ``CONFIGS_DIR``, sorted."""
    return sorted(str(path.relative_to(CONFIGS_DIR)) for path in CONFIGS_DIR.rglob("*.yaml"))


def get_config_file(name: str) -> str:
    """
    Args:
        name: a config path relative to the repository's ``configs/``, e.g.
            ``"synthetic/retinanet_R18_FPN_synthetic.yaml"``.

    Returns:
        the absolute path of that config inside the installed package.
    """
    path = CONFIGS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{name!r} is not a config shipped with retinanet_fl; choose one of "
            f"{list_config_files()}."
        )
    return str(path)

"""Writing an exported file so that no half-written file is ever left at its path."""

import os
import tempfile
from typing import Callable

__all__ = ["write_atomically"]


def write_atomically(path: str, write: Callable[[str], object]) -> str:
    """
    Call ``write(tmp)`` on a temporary file beside ``path`` (same extension, which some writers
    check), then rename it to ``path``; on any error the temporary file is removed and ``path``
    keeps what it held before.

    Returns:
        path.
    """
    folder, name = os.path.split(os.path.abspath(path))
    extension = os.path.splitext(name)[1]
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=extension)
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path

"""The image files a folder holds: every format Pillow reads, the others named in one warning."""

import logging
import os
from typing import FrozenSet, List, Sequence

from PIL import Image

__all__ = ["image_extensions", "list_images"]

logger = logging.getLogger(__name__)

# How many files a message names.
MAX_FILES_LISTED = 5


def image_extensions() -> FrozenSet[str]:
    """Returns: the file extensions (lower case, with the dot) of the formats Pillow reads."""
    registered = Image.registered_extensions()  # loads every plugin, filling Image.OPEN
    # Pillow also registers the extensions of formats it only writes (PDF, Palm); MPO photos are
    # read by its JPEG reader.
    readable = set(Image.OPEN) | {"MPO"}
    return frozenset(
        extension for extension, image_format in registered.items() if image_format in readable
    )


def _folder_images(folder: str, extensions: FrozenSet[str]) -> List[str]:
    """The images directly inside a folder, sorted; one warning names the files left out."""
    taken, left_out = [], []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue  # sub-folders are not searched
        if os.path.splitext(name)[1].lower() in extensions:
            taken.append(path)
        else:
            left_out.append(name)
    if left_out:
        more = len(left_out) - MAX_FILES_LISTED
        logger.warning(
            f"{folder}: {len(left_out)} files not taken, their extension is not a format Pillow "
            f"reads: {', '.join(left_out[:MAX_FILES_LISTED])}"
            + (f" and {more} more" if more > 0 else "")
            + "."
        )
    return taken


def list_images(inputs: Sequence[str]) -> List[str]:
    """
    Args:
        inputs: image files and folders (a folder stands for the files directly inside it whose
            extension is a format Pillow reads; a warning names the others).

    Returns:
        image paths, folders expanded in sorted order.
    """
    extensions = image_extensions()
    paths = []
    for path in inputs:
        if os.path.isdir(path):
            paths += _folder_images(path, extensions)
        elif os.path.isfile(path):
            paths.append(path)
        else:
            raise FileNotFoundError(f"Input '{path}' is neither an image file nor a folder.")
    if not paths:
        raise FileNotFoundError(
            f"No images found in {list(inputs)}: a folder's files are taken when their extension "
            "is a format Pillow reads (.jpg, .png, .tif, .webp, ...: "
            "PIL.Image.registered_extensions())."
        )
    return paths

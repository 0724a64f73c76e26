"""
Up-front checks of a dataset's image files, from their headers alone (no pixels decoded), so that
an unreadable image or a wrong ``width`` / ``height`` in the annotations stops training before its
first iteration rather than when the image is first sampled.

* :func:`read_image_headers` reads every image's size and EXIF orientation once, in threads;
* :meth:`ImageCheck.problems` words what it found and what training does about it;
* :func:`check_dataset_images` applies it: a size mismatch is an error; unreadable training images
  are removed with a warning up to ``DATALOADER.MAX_UNREADABLE_FRACTION`` of the dataset, and are an
  error beyond it, or in a test set.
"""

import concurrent.futures
import dataclasses
import logging
from typing import Dict, List, Optional, Sequence, Tuple, Union

from detectron2.config import CfgNode
from detectron2.utils.file_io import PathManager
from PIL import ExifTags, Image, UnidentifiedImageError

__all__ = [
    "ImageCheck",
    "ImageHeader",
    "SizeMismatch",
    "check_dataset_images",
    "read_image_header",
    "read_image_headers",
    "unreadable_training_fraction",
]

logger = logging.getLogger(__name__)

# How many files a message lists by name.
MAX_FILES_LISTED = 5

# EXIF orientations that rotate the image by 90 degrees (transposed, transverse, 90, 270): the
# image as read has the file's width and height swapped.
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)

UNKNOWN_FORMAT = "not an image Pillow can read: unknown format, or a header cut short"


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """An image file's size as read (after its EXIF orientation), and that orientation (1: none)."""

    width: int
    height: int
    orientation: int = 1


@dataclasses.dataclass(frozen=True)
class SizeMismatch:
    """An image whose annotations give another size than the file has."""

    file_name: str
    annotated: Tuple[Optional[int], Optional[int]]  # (width, height) in the annotations
    header: ImageHeader

    def describe(self) -> str:
        """Returns: e.g. ``'a.jpg' 640x480 in the annotations, 480x640 in the file``."""
        width, height = self.annotated
        rotated = (
            f" after its EXIF orientation {self.header.orientation}"
            if self.header.orientation in SWAPPING_ORIENTATIONS
            else ""
        )
        return (
            f"'{self.file_name}' {width}x{height} in the annotations, "
            f"{self.header.width}x{self.header.height} in the file{rotated}"
        )


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF (or XMP) orientation tag of an opened image, without decoding its pixels."""
    # PngImageFile.getexif decodes the whole image to look for an eXIf chunk after the pixels; the
    # base method reads the chunks before them, where PNG writers put it.
    return Image.Image.getexif(image).get(ExifTags.Base.Orientation, 1)


def read_image_header(file_name: str) -> ImageHeader:
    """
    Args:
        file_name: an image's path (any path PathManager opens).

    Returns:
        its size as Detectron2 reads it (EXIF orientation applied) and its orientation.

    Raises:
        FileNotFoundError: the file does not exist.
        OSError: the file is empty or not an image Pillow can identify.
    """
    with PathManager.open(file_name, "rb") as f:
        if not f.read(1):
            raise OSError("empty file")
        f.seek(0)
        try:
            image = Image.open(f)
        except UnidentifiedImageError as error:
            raise OSError(UNKNOWN_FORMAT) from error
        width, height = image.size
        orientation = _exif_orientation(image)
    if orientation in SWAPPING_ORIENTATIONS:
        width, height = height, width
    return ImageHeader(width, height, orientation)


def _header_or_reason(file_name: str) -> Union[ImageHeader, str, None]:
    """The image's header, the reason it cannot be read (a str), or None: it does not exist."""
    try:
        return read_image_header(file_name)
    except FileNotFoundError:
        return None
    except Exception as error:  # noqa: BLE001  whatever Pillow raises here, training would too
        reason = str(error) if isinstance(error, OSError) else f"{type(error).__name__}: {error}"
        return reason or type(error).__name__


def _listed(items: Sequence[str]) -> str:
    """Returns: the first few items, joined, and how many more there are."""
    listed = "; ".join(items[:MAX_FILES_LISTED])
    more = len(items) - MAX_FILES_LISTED
    return listed + (f" and {more} more" if more > 0 else "")


@dataclasses.dataclass
class ImageCheck:
    """
    What the image headers of one dataset showed.

    Attributes:
        dataset_name: the registered name.
        num_images: the dataset's images (records).
        missing: the files that do not exist (:func:`~retinanet_fl.data.sanitize.check_image_files`
            words the error).
        unreadable: file name -> why it cannot be read, for each unreadable file.
        size_mismatches: the images whose annotated width or height differs from the file's.
    """

    dataset_name: str
    num_images: int
    missing: List[str]
    unreadable: Dict[str, str]
    size_mismatches: List[SizeMismatch]

    def num_unreadable_images(self, dataset_dicts: Sequence[Dict]) -> int:
        """Returns: the records whose file cannot be read (a file may serve several records)."""
        return sum(record["file_name"] in self.unreadable for record in dataset_dicts)

    def size_mismatch_message(self) -> str:
        """Returns: the error about the images of the wrong size, with the fix."""
        return (
            f"Dataset '{self.dataset_name}': {len(self.size_mismatches)} of {self.num_images} "
            "images are not the size their annotations give (Detectron2 would stop with a "
            "SizeMismatchError when it reads them): "
            f"{_listed([mismatch.describe() for mismatch in self.size_mismatches])}. Set each "
            'image\'s "width" and "height" in the annotations to the size of the file as '
            "displayed (after its EXIF orientation); for a rotated photo whose boxes were drawn on "
            "the unrotated pixels, remove the EXIF orientation tag from the file instead."
        )

    def unreadable_message(self, num_unreadable: int) -> str:
        """Returns: which images cannot be read, and why (the first few)."""
        files = [f"'{name}' ({reason})" for name, reason in self.unreadable.items()]
        return (
            f"Dataset '{self.dataset_name}': {num_unreadable} of {self.num_images} images cannot "
            f"be read: {_listed(files)}."
        )

    def problems(
        self, dataset_dicts: Sequence[Dict], max_unreadable_fraction: Optional[float]
    ) -> Tuple[List[str], Optional[str]]:
        """
        Args:
            dataset_dicts: the dataset the check was made on.
            max_unreadable_fraction: the share of the images that may be unreadable and left out
                (training's ``DATALOADER.MAX_UNREADABLE_FRACTION``); None: none may (test sets,
                and training sets with ``DATALOADER.SKIP_UNREADABLE_IMAGES`` False).

        Returns:
            the errors (empty when the dataset may be used), and the warning about the unreadable
            images left out, if any.
        """
        errors = [self.size_mismatch_message()] if self.size_mismatches else []
        if not self.unreadable:
            return errors, None
        num_unreadable = self.num_unreadable_images(dataset_dicts)
        message = self.unreadable_message(num_unreadable)
        if max_unreadable_fraction is None:
            errors.append(
                f"{message} Every image of a test set, and of a training set when "
                "DATALOADER.SKIP_UNREADABLE_IMAGES is False, must be readable: replace these "
                "files, or remove them and their entries from the annotations."
            )
            return errors, None
        if num_unreadable > max_unreadable_fraction * self.num_images:
            errors.append(
                f"{message} That is more than DATALOADER.MAX_UNREADABLE_FRACTION = "
                f"{max_unreadable_fraction} of the images, which training may leave out: replace "
                "these files, or remove them and their entries from the annotations, or raise "
                "DATALOADER.MAX_UNREADABLE_FRACTION."
            )
            return errors, None
        return errors, (
            f"{message} Training leaves them out (up to DATALOADER.MAX_UNREADABLE_FRACTION = "
            f"{max_unreadable_fraction} of the images may be left out); replace the files to train "
            "on them."
        )

    def usable(self, dataset_dicts: Sequence[Dict]) -> List[Dict]:
        """Returns: the records whose file is readable and of the annotated size."""
        excluded = {*self.missing, *self.unreadable, *(m.file_name for m in self.size_mismatches)}
        return [record for record in dataset_dicts if record["file_name"] not in excluded]


def _size_mismatch(record: Dict, header: ImageHeader) -> Optional[SizeMismatch]:
    """The mismatch of a record's width and height (when it gives them) with its file's header."""
    if "width" not in record and "height" not in record:
        return None  # Detectron2 takes the size from the image
    annotated = (record.get("width"), record.get("height"))
    if annotated == (header.width, header.height):
        return None
    return SizeMismatch(record["file_name"], annotated, header)


def read_image_headers(
    dataset_dicts: Sequence[Dict], dataset_name: str, max_workers: Optional[int] = None
) -> ImageCheck:
    """
    Read the header of every image file of a dataset once, in threads (the reads wait on the
    disk), and compare each size with the record's ``width`` and ``height``.

    Args:
        dataset_dicts: the dataset, in Detectron2's format.
        dataset_name: its registered name, for the messages.
        max_workers: threads; None: Python's default for I/O.

    Returns:
        the missing and unreadable files and the size mismatches.
    """
    file_names = list(dict.fromkeys(record["file_name"] for record in dataset_dicts))
    with concurrent.futures.ThreadPoolExecutor(max_workers) as pool:
        headers = dict(zip(file_names, pool.map(_header_or_reason, file_names)))
    missing = [name for name, result in headers.items() if result is None]
    unreadable = {name: result for name, result in headers.items() if isinstance(result, str)}
    mismatches = [
        _size_mismatch(record, headers[record["file_name"]])
        for record in dataset_dicts
        if isinstance(headers[record["file_name"]], ImageHeader)
    ]
    return ImageCheck(
        dataset_name,
        len(dataset_dicts),
        missing,
        unreadable,
        [mismatch for mismatch in mismatches if mismatch is not None],
    )


def unreadable_training_fraction(cfg: CfgNode) -> Optional[float]:
    """
    Returns:
        the share of a training set's images that may be unreadable and left out:
        ``DATALOADER.MAX_UNREADABLE_FRACTION``, or None when ``SKIP_UNREADABLE_IMAGES`` is False.
    """
    if not cfg.DATALOADER.SKIP_UNREADABLE_IMAGES:
        return None
    return cfg.DATALOADER.MAX_UNREADABLE_FRACTION


def check_dataset_images(
    dataset_dicts: Sequence[Dict], dataset_name: str, max_unreadable_fraction: Optional[float]
) -> List[Dict]:
    """
    Check a dataset's image headers before training or evaluation: raise on images of another
    size than annotated and on unreadable images beyond ``max_unreadable_fraction``; remove the
    unreadable images below it with a warning naming them.

    Args:
        dataset_dicts: the dataset, in Detectron2's format, its files known to exist.
        dataset_name: its registered name, for the messages.
        max_unreadable_fraction: see :meth:`ImageCheck.problems`.

    Returns:
        the records whose image can be read.

    Raises:
        ValueError: naming the images of the wrong size and the unreadable ones, and the fix.
    """
    check = read_image_headers(dataset_dicts, dataset_name)
    errors, warning = check.problems(dataset_dicts, max_unreadable_fraction)
    if errors:
        raise ValueError("\n".join(errors))
    if warning:
        logger.warning(warning)
    return check.usable(dataset_dicts)

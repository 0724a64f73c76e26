"""
Fonts for class names in any script in the pictures of ``retinanet_fl.predict`` and the
evaluation report.

Detectron2's ``Visualizer`` draws labels with matplotlib's default sans-serif font (DejaVu Sans),
which has Latin, Greek, Cyrillic and Arabic letters but no Chinese, Japanese, Korean or Indic ones:
such names come out as empty boxes. :func:`find_label_fonts` finds installed fonts with the missing
letters, which matplotlib falls back on letter by letter; a name no installed font can write is
labelled ``class <id>`` instead, with one warning.
"""

import dataclasses
import functools
import logging
from typing import FrozenSet, List, Optional, Sequence

import numpy as np
from detectron2.data.catalog import Metadata
from detectron2.structures import Instances
from detectron2.utils.visualizer import VisImage, Visualizer
from matplotlib import font_manager
from matplotlib.ft2font import FT2Font

__all__ = ["LabelFonts", "draw_detections", "find_label_fonts", "set_label_families"]

logger = logging.getLogger(__name__)

# The family Detectron2's Visualizer.draw_text asks for.
VISUALIZER_FAMILY = "sans-serif"


@dataclasses.dataclass
class LabelFonts:
    """
    Attributes:
        families: font families matplotlib falls back on, after the default one, for letters it
            lacks.
        labels: per class index, what its boxes are labelled: its name, or ``class <id>`` when no
            font found has its letters.
    """

    families: List[str]
    labels: List[str]


@functools.lru_cache(maxsize=None)
def _characters(font_file: str) -> FrozenSet[int]:
    """The code points a font file has glyphs for; empty if it cannot be read."""
    try:
        return frozenset(FT2Font(font_file).get_charmap())
    except (OSError, RuntimeError, ValueError):  # a broken or unsupported font file
        return frozenset()


def _installed_font_files() -> List[str]:
    """matplotlib's fonts, regular sans-serif upright ones first; not the Last Resort font, whose
    glyphs are placeholder boxes."""
    entries = [
        entry
        for entry in font_manager.fontManager.ttflist
        if not entry.name.startswith("Last Resort")
    ]
    entries.sort(
        key=lambda entry: (
            entry.style != "normal",
            entry.weight not in (400, "normal", "regular"),
            "sans" not in entry.name.lower(),
            entry.name,
        )
    )
    return list(dict.fromkeys(entry.fname for entry in entries))


def find_label_fonts(
    class_names: Sequence[str], font_files: Optional[Sequence[str]] = None
) -> LabelFonts:
    """
    Args:
        class_names: the names to draw, per class index.
        font_files: the fonts to search for the letters the default font lacks; None: every font
            matplotlib knows. They must be known to matplotlib's font manager (fonts installed on
            the system are).

    Returns:
        the fonts to add and each class's label. Logs one warning naming the classes labelled by
        their id.
    """
    default_font = font_manager.findfont(font_manager.FontProperties(family=[VISUALIZER_FAMILY]))
    has_glyph = _characters(default_font)
    lacking = {ord(char) for name in class_names for char in name} - has_glyph
    families = []
    if lacking:
        for font_file in _installed_font_files() if font_files is None else font_files:
            found = lacking & _characters(font_file)
            if found:
                families.append(FT2Font(font_file).family_name)
                lacking -= found
                if not lacking:
                    break
    labels = [
        f"class {index}" if any(ord(char) in lacking for char in name) else name
        for index, name in enumerate(class_names)
    ]
    unwritten = [name for name, label in zip(class_names, labels) if name != label]
    if unwritten:
        logger.warning(
            f"No installed font has the letters of the class names {unwritten}: the pictures "
            "label them 'class <id>' (predictions.json keeps the names). Install a font that has "
            "them (e.g. Debian's fonts-noto-cjk for Chinese, Japanese and Korean) to see the names."
        )
    return LabelFonts(families, labels)


def draw_detections(
    image_rgb: np.ndarray,
    instances: Instances,
    metadata: Metadata,
    fonts: LabelFonts,
    scale: float = 1.0,
) -> np.ndarray:
    """
    Draw detections with Detectron2's Visualizer, labelled as ``fonts`` says.

    Args:
        image_rgb: (H, W, 3) uint8.
        instances: the detections, in the image's pixels.
        metadata: the model's classes (``thing_classes``), if known.
        fonts: from :func:`find_label_fonts` of the metadata's class names.
        scale: size of the picture relative to the image.

    Returns:
        the picture, RGB.
    """
    if metadata.get("thing_classes"):
        metadata = Metadata(**{**metadata.as_dict(), "thing_classes": fonts.labels})
    drawn = Visualizer(image_rgb, metadata, scale).draw_instance_predictions(instances)
    set_label_families(drawn, fonts)
    return drawn.get_image()


def set_label_families(picture: VisImage, fonts: LabelFonts) -> None:
    """Let the labels of a Visualizer's picture take the letters the default font lacks from
    ``fonts``' families."""
    if fonts.families:
        for text in picture.ax.texts:
            text.set_fontfamily([VISUALIZER_FAMILY, *fonts.families])

"""Class names in any script in predict's pictures: a font that has their letters, or class ids."""

import logging
import warnings

import numpy as np
import pytest
import torch
from detectron2.data.catalog import Metadata
from detectron2.structures import Boxes, Instances
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen
from matplotlib import font_manager

from retinanet_fl.label_fonts import LabelFonts, draw_detections, find_label_fonts

CAT, DOG = "猫", "犬"  # CJK letters, which matplotlib's own fonts lack
TEST_FAMILY = "Retinanet FL Test Glyphs"


def _square_glyph():
    pen = TTGlyphPen(None)
    pen.moveTo((100, 0))
    pen.lineTo((100, 700))
    pen.lineTo((900, 700))
    pen.lineTo((900, 0))
    pen.closePath()
    return pen.glyph()


@pytest.fixture(scope="module")
def cjk_font(tmp_path_factory):
    """A TrueType font with a square glyph for CAT and DOG, known to matplotlib."""
    path = str(tmp_path_factory.mktemp("fonts") / "test_glyphs.ttf")
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder([".notdef", "cat", "dog"])
    builder.setupCharacterMap({ord(CAT): "cat", ord(DOG): "dog"})
    builder.setupGlyf({name: _square_glyph() for name in (".notdef", "cat", "dog")})
    builder.setupHorizontalMetrics({name: (1000, 100) for name in (".notdef", "cat", "dog")})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": TEST_FAMILY, "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=800, sTypoDescender=-200, usWinAscent=800, usWinDescent=200)
    builder.setupPost()
    builder.save(path)
    font_manager.fontManager.addfont(path)
    return path


def _label_font_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "retinanet_fl.label_fonts"]


def test_names_no_font_can_write_are_labelled_by_class_id_with_one_warning(caplog):
    names = ["cat", CAT, "кошка", "गाय", CAT + DOG]
    with caplog.at_level(logging.WARNING, logger="retinanet_fl.label_fonts"):
        fonts = find_label_fonts(names, font_files=[])  # no font to fall back on
    assert fonts.labels == ["cat", "class 1", "кошка", "class 3", "class 4"]
    assert fonts.families == []
    (warning,) = _label_font_warnings(caplog)
    print(warning)
    assert f"class names ['{CAT}', 'गाय', '{CAT + DOG}']" in warning and "'class <id>'" in warning


def test_names_in_an_installed_font_are_drawn_with_it(cjk_font, caplog):
    names = ["cat", CAT, DOG]
    with caplog.at_level(logging.WARNING, logger="retinanet_fl.label_fonts"):
        fonts = find_label_fonts(names, font_files=[cjk_font])
    assert fonts == LabelFonts([TEST_FAMILY], names)
    assert _label_font_warnings(caplog) == []
    # Latin names alone need no other font.
    assert find_label_fonts(["cat", "кошка"], font_files=[cjk_font]).families == []

    instances = Instances(
        (64, 64),
        pred_boxes=Boxes(torch.tensor([[4.0, 4.0, 40.0, 40.0], [20.0, 20.0, 60.0, 60.0]])),
        scores=torch.tensor([0.9, 0.8]),
        pred_classes=torch.tensor([1, 0]),
    )
    metadata = Metadata(name="test_label_fonts", thing_classes=names)
    image = np.zeros((64, 64, 3), dtype=np.uint8)

    def missing_glyph_warnings(fonts):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            draw_detections(image, instances, metadata, fonts, scale=4.0)
        return [str(w.message) for w in caught if "missing from font" in str(w.message)]

    # matplotlib's default font has no glyph for CAT: drawn as a placeholder, with a warning.
    assert missing_glyph_warnings(LabelFonts([], names))
    assert missing_glyph_warnings(fonts) == []
    # Labelled by class id, nothing is left for a placeholder either.
    assert missing_glyph_warnings(find_label_fonts(names, font_files=[])) == []

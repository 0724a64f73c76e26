"""
Detectron2's own RetinaNet scripting and tracing cases (``tests/test_export_torchscript.py``:
``TestScripting.testRetinaNet``, ``TestTracing.testRetinaNet``), run on our model built from the
model-zoo R-50-FPN config.
"""

import torch
from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes
from detectron2.utils.testing import assert_instances_allclose, convert_scripted_instances
from torch import Tensor, nn

from .conftest import random_image


def test_scripting(r50_model):
    fields = {"pred_boxes": Boxes, "scores": Tensor, "pred_classes": Tensor}
    scripted = scripting_with_instances(r50_model, fields)
    image = random_image(128, 160, seed=1)
    inputs = [{"image": image}] * 2
    with torch.no_grad():
        expected = r50_model(inputs)[0]["instances"]
        actual = convert_scripted_instances(scripted(inputs)[0])
        actual = detector_postprocess(actual, image.shape[1], image.shape[2])
    assert len(expected) > 0
    assert_instances_allclose(expected, actual)


def _inference(model: nn.Module, image: Tensor):
    return model.forward([{"image": image}])[0]["instances"]


def _check_trace_generalizes(model: nn.Module, trace_image: Tensor, run_image: Tensor) -> None:
    adapter = TracingAdapter(model, trace_image, _inference)
    adapter.eval()
    with torch.no_grad():
        traced = torch.jit.trace(adapter, (trace_image,), check_trace=False)
        expected = _inference(model, run_image)
        actual = adapter.outputs_schema(traced(run_image))
    assert len(expected) > 0
    assert_instances_allclose(expected, actual, size_as_tensor=True)


def test_tracing_on_small_image_runs_on_large_one(r50_model):
    """Detectron2's case: traced on an image half the size of the one it then runs on."""
    image = random_image(128, 160, seed=2)
    small = nn.functional.interpolate(image[None], scale_factor=0.5)[0]
    _check_trace_generalizes(r50_model, small, image)


def test_tracing_on_large_image_runs_on_small_one(r50_model):
    """The reverse, which failed with "selected index k out of range" in our former decoding: the
    small image has fewer anchors than the per-level top-k the large one traced."""
    image = random_image(128, 160, seed=3)
    small = nn.functional.interpolate(image[None], scale_factor=0.5)[0]
    _check_trace_generalizes(r50_model, image, small)

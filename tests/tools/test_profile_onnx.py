"""tools/profile_onnx.py on a hand-built ONNX graph of the exported files' input."""

import numpy as np
import onnx
import profile_onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime")


def _conv_model(path):
    """uint8 image (3, H, W) -> Cast -> Unsqueeze -> Conv 3x3 -> "features"."""
    weights = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["floats"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["floats", "axes"], ["batch"]),
            helper.make_node("Conv", ["batch", "weights"], ["features"], pads=[1, 1, 1, 1]),
        ],
        "conv",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [3, "height", "width"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, None)],
        initializer=[
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)


def test_profile_shares_the_operators_time_of_the_counted_calls(tmp_path):
    path = str(tmp_path / "conv.onnx")
    _conv_model(path)
    (result,) = profile_onnx.main([path, "--size", "64", "--threads", "1", "--calls", "3"])
    by_op = result["by_op_type"]
    # ONNX Runtime may add layout operators of its own (ReorderInput/Output) around the Conv.
    assert {"Cast", "Conv"} <= set(by_op)
    assert sum(cost["share"] for cost in by_op.values()) == pytest.approx(1.0)
    assert list(by_op) == sorted(by_op, key=lambda op: -by_op[op]["ms_per_call"])
    # The operators ran within the calls: their time per call is at most the calls'.
    assert 0 < sum(cost["ms_per_call"] for cost in by_op.values()) <= result["ms_per_call"]
    assert result["calls"] == 3


def test_without_files_it_says_what_to_give():
    with pytest.raises(SystemExit):
        profile_onnx.main([])

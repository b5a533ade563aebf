"""export-tflite's graph surgery (explicit Splits, the float-tail cut, the whole-graph control's
output split) and the INT8 model's host side (the float tail fed the body's outputs, the
per-output checks), on the default package's real graph with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from detserve.models import tflite_runner
from detserve.models.tflite_checks import body_diffs, matching_output, round_like_body
from detserve.models.tflite_graph import cut_float_tail, explicit_splits, whole_graph_split

PKG = Path(__file__).resolve().parents[2] / "models" / "packages" / "shapes_320"
HEAD = {"conv2d_47": (64, 40), "conv2d_50": (6, 40), "conv2d_53": (64, 20),
        "conv2d_56": (6, 20), "conv2d_59": (64, 10), "conv2d_62": (6, 10)}  # fmt: skip


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def graph() -> onnx.ModelProto:
    return explicit_splits(onnx.load(str(PKG / "model.onnx")))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)


def test_explicit_splits_name_their_sizes(graph: onnx.ModelProto, image: np.ndarray) -> None:
    splits = [n for n in graph.graph.node if n.op_type == "Split"]
    assert len(splits) == 8
    assert all(len(n.input) == 2 and not any(a.name == "num_outputs" for a in n.attribute)
               for n in splits)  # fmt: skip
    sizes = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in graph.graph.initializer}
    assert sizes[splits[0].input[1]] == [16, 16]  # the first C2f's 32 channels, halved
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    want = _session(onnx.load(str(PKG / "model.onnx"))).run(None, {"images": image})[0]
    np.testing.assert_array_equal(_session(graph).run(None, {"images": image})[0], want)


def test_cut_float_tail_gives_the_graphs_output(graph: onnx.ModelProto,
                                                image: np.ndarray) -> None:
    body, tail = cut_float_tail(graph)
    assert [o.name for o in body.graph.output] == list(HEAD)
    assert [i.name for i in tail.graph.input] == list(HEAD)
    ops = [n.op_type for n in tail.graph.node]
    assert "Conv" in ops and ops.count("Conv") == 1  # the DFL expectation, fixed bins
    assert {"Softmax", "Sigmoid"} <= set(ops) and len(ops) == 25
    assert "Softmax" not in {n.op_type for n in body.graph.node}  # (SiLU has Sigmoids)
    outs = _session(body).run(None, {"images": image})
    assert [o.shape for o in outs] == [(1, c, s, s) for c, s in HEAD.values()]
    got = _session(tail).run(None, dict(zip(HEAD, outs, strict=True)))[0]
    want = _session(graph).run(None, {"images": image})[0]
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="cannot cut"):
        cut_float_tail(body)


def test_whole_graph_split_keeps_the_values(graph: onnx.ModelProto) -> None:
    split = whole_graph_split(graph)
    assert [o.name for o in split.graph.output] == ["boxes", "scores"]
    x = np.random.default_rng(1).random((1, 3, 320, 320), dtype=np.float32)
    (want,) = _session(graph).run(None, {"images": x})
    boxes, scores = _session(split).run(None, {"images": x})
    assert boxes.shape == (1, 4, 2100) and scores.shape == (1, 6, 2100)
    np.testing.assert_array_equal(np.concatenate([boxes, scores], axis=1), want)
    assert scores.min() >= 0.0 and scores.max() <= 1.0 and boxes.max() > 100.0
    with pytest.raises(ValueError, match="cannot split"):
        whole_graph_split(split)


def test_runner_tail_takes_dequantized_nhwc_outputs(graph: onnx.ModelProto, image: np.ndarray,
                                                    tmp_path: Path) -> None:
    """What the interpreter hands over (NHWC, int8 with a scale, in its own order) is put back
    in the tail's NCHW inputs by shape; float outputs pass through unchanged."""
    body, tail = cut_float_tail(graph)
    onnx.save(tail, str(tmp_path / "tail.onnx"))
    outs = dict(zip(HEAD, _session(body).run(None, {"images": image}), strict=True))
    float_tail = tflite_runner.FloatTail(tmp_path / "tail.onnx")
    raw = [np.ascontiguousarray(v.transpose(0, 2, 3, 1)) for v in reversed(outs.values())]
    details = [{"quantization": (0.0, 0)}] * len(raw)
    feeds = float_tail.feeds(raw, details)
    for name, v in outs.items():
        np.testing.assert_array_equal(feeds[name], v)
    want = _session(graph).run(None, {"images": image})[0]
    np.testing.assert_array_equal(float_tail.run(feeds), want)
    q = np.array([[[[-128, 0, 127]]]], np.int8)  # [1, 1, 1, 3]: NHWC of a [1, 3, 1, 1] tensor
    assert q.shape == tflite_runner._nhwc((1, 3, 1, 1))
    np.testing.assert_allclose(tflite_runner.dequantize(q, {"quantization": (0.5, -28)}),
                               [[[[-50.0, 14.0, 77.5]]]])  # fmt: skip
    with pytest.raises(ValueError, match="no output of shape"):
        float_tail.feeds(raw[1:], details[1:])


def test_runner_tail_refuses_shapes_it_cannot_tell_apart(tmp_path: Path) -> None:
    x = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 3, 3]) for n in "ab"]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])],
                                                "two", x, [y]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(tmp_path / "two.onnx"))
    with pytest.raises(ValueError, match="cannot be told apart"):
        tflite_runner.FloatTail(tmp_path / "two.onnx")


def test_body_checks_measure_each_output() -> None:
    ref = {"box": np.array([[[[0.0, 1.0], [2.0, -3.0]]]], np.float32),  # [1, 1, 2, 2]
           "cls": np.zeros((1, 3, 2, 2), np.float32)}  # fmt: skip
    outputs: list[dict[str, Any]] = [
        {"shape": [1, 2, 2, 3], "quantization": None},  # cls, NHWC, float
        {"shape": [1, 1, 2, 2], "quantization": {"scale": 0.8, "zero_point": 0}}]
    assert matching_output((5, 1, 2, 2), outputs) is outputs[1]
    with pytest.raises(ValueError, match="expected one"):
        matching_output((1, 4, 2, 2), outputs)
    rounded = round_like_body(ref, outputs)
    np.testing.assert_allclose(rounded["box"], [[[[0.0, 0.8], [1.6, -3.2]]]], rtol=1e-6)
    np.testing.assert_array_equal(rounded["cls"], ref["cls"])
    d = body_diffs(ref, rounded, outputs)
    assert d["box"]["max_abs_diff"] == pytest.approx(0.4, abs=1e-6)
    assert d["box"]["mean_abs_diff"] == pytest.approx(0.8 / 4, abs=1e-6)
    assert d["box"]["onnxruntime_min"] == -3.0 and d["box"]["onnxruntime_max"] == 2.0
    assert d["box"]["int8_scale"] == 0.8 and d["box"]["shape"] == [1, 2, 2]
    assert d["cls"]["int8_scale"] is None and d["cls"]["max_abs_diff"] == 0.0
    with pytest.raises(ValueError, match="'cls'"):
        body_diffs(ref, {"box": rounded["box"]}, outputs)

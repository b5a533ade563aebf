"""In-graph NMS: the ONNX Runtime graph against the numpy EfficientNMS reference on random and
adversarial inputs, the TensorRT graph's structure against the plugin spec, and packages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from detserve.engines.base import DecodeParams, Letterbox
from detserve.engines.decode import decode_batch
from detserve.engines.detections import Detections
from detserve.engines.factory import create_engine
from detserve.engines.manifest import Manifest, Postprocess, load_package
from detserve.engines.pipeline import detect_images
from detserve.models.efficient_nms_ref import NmsConfig, NmsOutputs, efficient_nms_yolov8
from detserve.models.nms_graph import (
    OUTPUT_NAMES,
    add_nms_ort,
    add_nms_package,
    add_nms_tensorrt,
)

Raw = np.ndarray
Case = Callable[[np.random.Generator], tuple[Raw, NmsConfig]]


def passthrough_yolov8(num_classes: int, anchors: int | str = "anchors") -> onnx.ModelProto:
    """A yolov8-layout graph whose output is its input, so tests choose the raw tensor."""
    rows = 4 + num_classes
    graph = helper.make_graph(
        [helper.make_node("Identity", ["raw"], ["output0"])],
        "passthrough",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["batch", rows, anchors])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", rows, anchors])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run_ort_nms(raw: Raw, cfg: NmsConfig) -> NmsOutputs:
    model = add_nms_ort(passthrough_yolov8(raw.shape[1] - 4), cfg)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    num, boxes, scores, classes = sess.run(list(OUTPUT_NAMES), {"raw": raw})
    return NmsOutputs(num, boxes, scores, classes)


def assert_same(got: NmsOutputs, want: NmsOutputs) -> None:
    assert got.num_detections.dtype == np.int32 and got.classes.dtype == np.int32
    assert got.boxes.dtype == np.float32 and got.scores.dtype == np.float32
    np.testing.assert_array_equal(got.num_detections, want.num_detections)
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.boxes, want.boxes)


def _raw(
    rng: np.random.Generator,
    batch: int,
    nc: int,
    n: int,
    size: float = 320.0,
    wh: tuple[float, float] = (4.0, 120.0),
) -> Raw:
    raw = np.empty((batch, 4 + nc, n), np.float32)
    raw[:, 0:2] = rng.uniform(0, size, (batch, 2, n))
    raw[:, 2:4] = rng.uniform(*wh, (batch, 2, n))
    raw[:, 4:] = rng.random((batch, nc, n))
    return raw


def case_random(rng: np.random.Generator) -> tuple[Raw, NmsConfig]:
    return _raw(rng, 2, 3, 300), NmsConfig(0.3, 0.5, 100)


def case_ties(rng: np.random.Generator) -> tuple[Raw, NmsConfig]:
    raw = _raw(rng, 2, 2, 400, size=100.0)
    raw[:, 4:] = rng.choice(np.array([0.0, 0.4, 0.6, 0.8], np.float32), raw[:, 4:].shape)
    raw[:, 0:4] = np.round(raw[:, 0:4] / 8) * 8  # many identical boxes as well
    return raw, NmsConfig(0.4, 0.45, 50)


def case_clusters(rng: np.random.Generator) -> tuple[Raw, NmsConfig]:
    centres = rng.uniform(40, 280, (5, 2))
    raw = _raw(rng, 1, 4, 1000)
    pick = rng.integers(0, 5, 1000)
    raw[0, 0:2] = (centres[pick] + rng.normal(0, 3, (1000, 2))).T
    raw[0, 2:4] = rng.uniform(30, 40, (2, 1000))
    return raw, NmsConfig(0.05, 0.6, 300)


def case_empty_and_full(rng: np.random.Generator) -> tuple[Raw, NmsConfig]:
    raw = _raw(rng, 3, 2, 200)
    raw[1, 4:] = 0.1  # image 1 has nothing above the threshold
    return raw, NmsConfig(0.2, 0.5, 20)


def case_more_than_max(rng: np.random.Generator) -> tuple[Raw, NmsConfig]:
    return _raw(rng, 2, 3, 500, size=2000.0, wh=(2.0, 10.0)), NmsConfig(0.1, 0.5, 7)


def case_over_4096(rng: np.random.Generator) -> tuple[Raw, NmsConfig]:
    # 8400 anchors x 3 classes at threshold 0.01: ~25,000 candidates, the top-4096 cut matters.
    return _raw(rng, 2, 3, 8400, size=640.0), NmsConfig(0.01, 0.5, 300)


def case_cut_matters(rng: np.random.Generator) -> tuple[Raw, NmsConfig]:
    # The 5000 best candidates share one box, so the top-4096 cut leaves one detection per
    # image; without the cut the low-scoring, scattered anchors would add many more.
    raw = _raw(rng, 2, 2, 8400, size=4000.0, wh=(2.0, 8.0))
    raw[:, 4:] *= 0.4
    raw[:, 0:4, :5000] = np.array([[100.0], [100.0], [50.0], [50.0]], np.float32)
    raw[:, 4, :5000] = rng.uniform(0.5, 1.0, (2, 5000))
    raw[:, 5, :5000] = 0.0
    return raw, NmsConfig(0.01, 0.5, 300)


def case_agnostic(rng: np.random.Generator) -> tuple[Raw, NmsConfig]:
    return _raw(rng, 1, 3, 300), NmsConfig(0.3, 0.5, 100, class_agnostic=True)


CASES: dict[str, Case] = {
    "random": case_random,
    "ties": case_ties,
    "clusters": case_clusters,
    "empty_and_full": case_empty_and_full,
    "more_than_max": case_more_than_max,
    "over_4096": case_over_4096,
    "cut_matters": case_cut_matters,
    "agnostic": case_agnostic,
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ort_graph_matches_reference(name: str, seed: int) -> None:
    raw, cfg = CASES[name](np.random.default_rng(seed))
    want = efficient_nms_yolov8(raw, cfg)
    assert_same(run_ort_nms(raw, cfg), want)
    if name == "over_4096":
        assert int(want.num_detections.min()) > 0
    if name == "cut_matters":
        assert want.num_detections.tolist() == [[1], [1]]
    if name == "more_than_max":
        assert want.num_detections.tolist() == [[7], [7]]


def test_ort_graph_tie_order_matters_and_matches() -> None:
    # Same case as the reference's tie test: the visiting order decides 2 versus 1 detections.
    raw = np.zeros((1, 5, 3), np.float32)
    raw[0, :4] = np.array([[10, 5, 10, 10], [5, 5, 10, 10], [5, 6, 10, 10]], np.float32).T
    raw[0, 4] = 0.5
    got = run_ort_nms(raw, NmsConfig(0.25, 0.3, 10))
    assert got.num_detections.tolist() == [[2]]
    np.testing.assert_array_equal(got.boxes[0, :2], [[5, 0, 15, 10], [0, 1, 10, 11]])


def test_ort_graph_suppresses_at_iou_equal_to_threshold() -> None:
    raw = np.zeros((1, 5, 2), np.float32)
    raw[0, :4] = np.array([[5, 5, 10, 10], [5, 2.5, 10, 5]], np.float32).T  # IoU exactly 0.5
    raw[0, 4] = [0.9, 0.8]
    assert run_ort_nms(raw, NmsConfig(0.25, 0.5, 10)).num_detections.tolist() == [[1]]
    assert run_ort_nms(raw, NmsConfig(0.25, 0.5001, 10)).num_detections.tolist() == [[2]]


def test_ort_graph_keeps_dynamic_batch_and_fixed_anchor_dims() -> None:
    model = add_nms_ort(passthrough_yolov8(2, anchors=50), NmsConfig(0.3, 0.5, 5))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        raw = _raw(np.random.default_rng(batch), batch, 2, 50)
        num, boxes, scores, classes = sess.run(None, {"raw": raw})
        assert num.shape == (batch, 1) and boxes.shape == (batch, 5, 4)
        assert scores.shape == (batch, 5) and classes.shape == (batch, 5)
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)


def test_ort_graph_upgrades_old_opsets() -> None:
    model = passthrough_yolov8(1)
    model.opset_import[0].version = 11
    out = add_nms_ort(model, NmsConfig(0.3, 0.5, 5))
    assert out.opset_import[0].version >= 13
    raw = _raw(np.random.default_rng(0), 1, 1, 30)
    sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    num = sess.run(["num_dets"], {"raw": raw})[0]
    assert num.tolist() == efficient_nms_yolov8(raw, NmsConfig(0.3, 0.5, 5)).num_detections.tolist()


def test_non_yolov8_graph_is_refused() -> None:
    model = passthrough_yolov8(2)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 4
    with pytest.raises(
        ValueError, match=r"output 'output0' must have shape \[B, 4 \+ nc >= 5, N\]"
    ):
        add_nms_ort(model, NmsConfig(0.3, 0.5, 5))
    with pytest.raises(
        ValueError, match=r"\[B, 4 \+ 3 classes, N\], got \['batch', 4, 'anchors'\]"
    ):
        add_nms_ort(model, NmsConfig(0.3, 0.5, 5), num_classes=3)


def test_symbolic_row_count_is_resolved_from_the_manifest() -> None:
    model = passthrough_yolov8(2)
    model.graph.output[0].type.tensor_type.shape.dim[
        1
    ].dim_param = "rows"  # as torch.onnx leaves it
    with pytest.raises(ValueError, match="must have shape"):
        add_nms_ort(model, NmsConfig(0.3, 0.5, 5))
    out = add_nms_ort(model, NmsConfig(0.3, 0.5, 5), num_classes=2)
    raw = _raw(np.random.default_rng(0), 1, 2, 40)
    sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    num = sess.run(["num_dets"], {"raw": raw})[0]
    assert num.tolist() == efficient_nms_yolov8(raw, NmsConfig(0.3, 0.5, 5)).num_detections.tolist()
    trt = add_nms_tensorrt(model, NmsConfig(0.3, 0.5, 5), num_classes=2)
    assert any(n.op_type == "EfficientNMS_TRT" for n in trt.graph.node)


# --- host NMS (the server's yolov8 decoder) ---------------------------------------------------
# The host decoder keeps one class per anchor (its best, as Ultralytics does) and suppresses at
# IoU > threshold; EfficientNMS takes every (anchor, class) pair and suppresses at IoU >=. On
# inputs where each anchor has at most one class above the threshold and no IoU equals the
# threshold exactly, all three must agree exactly; the two differences are tested on their own.


def _one_class_per_anchor(raw: Raw, rng: np.random.Generator, low: float) -> Raw:
    nc = raw.shape[1] - 4
    best = rng.integers(0, nc, (raw.shape[0], raw.shape[2]))
    scores = raw[:, 4:]
    keep = np.arange(nc)[None, :, None] == best[:, None, :]
    raw[:, 4:] = np.where(keep, scores, np.minimum(scores, np.float32(low) * 0.99))
    return raw


def _inside(raw: Raw, size: float) -> Raw:
    # Boxes fully inside the image, so clipping in the host decoder changes nothing.
    half = raw[:, 2:4] / 2
    raw[:, 0:2] = np.clip(raw[:, 0:2], half, size - half)
    return raw


def run_host_nms(raw: Raw, cfg: NmsConfig, size: int) -> list[Detections]:
    manifest = Manifest(
        name="host",
        version="1",
        classes=tuple(f"c{i}" for i in range(raw.shape[1] - 4)),
        input_width=size,
        input_height=size,
        postprocess=Postprocess(
            cfg.score_threshold,
            cfg.iou_threshold,
            cfg.max_output_boxes,
            pre_nms_top_k=cfg.pre_nms_top_k,
        ),
    )
    box = Letterbox(1.0, 1.0, 0.0, 0.0, size, size)
    params = DecodeParams(cfg.score_threshold, cfg.iou_threshold, cfg.max_output_boxes)
    n = raw.shape[0]
    dets: list[Detections] = decode_batch([raw], manifest, [box] * n, [params] * n)
    return dets


HOST_CASES = ["random", "ties", "clusters", "empty_and_full", "more_than_max", "over_4096"]


@pytest.mark.parametrize("name", HOST_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_host_ort_and_reference_agree(name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw, cfg = CASES[name](rng)
    # Thresholds that no IoU of these boxes hits exactly (host uses >, the plugin >=).
    cfg = replace(cfg, iou_threshold=cfg.iou_threshold + 0.00731)
    size = 4000
    raw = _inside(_one_class_per_anchor(raw, rng, cfg.score_threshold), size)
    want = efficient_nms_yolov8(raw, cfg)
    host = run_host_nms(raw, cfg, size)
    for i, det in enumerate(host):
        ref = want.image(i)
        np.testing.assert_array_equal(det.scores, ref.scores)
        np.testing.assert_array_equal(det.class_ids, ref.class_ids)
        np.testing.assert_array_equal(det.boxes, ref.boxes)
    assert_same(run_ort_nms(raw, cfg), want)


def test_host_keeps_iou_equal_to_threshold_where_plugin_suppresses() -> None:
    raw = np.zeros((1, 5, 2), np.float32)
    raw[0, :4] = np.array([[5, 5, 10, 10], [5, 2.5, 10, 5]], np.float32).T  # IoU exactly 0.5
    raw[0, 4] = [0.9, 0.8]
    cfg = NmsConfig(0.25, 0.5, 10)
    assert len(run_host_nms(raw, cfg, 32)[0]) == 2
    assert efficient_nms_yolov8(raw, cfg).num_detections.tolist() == [[1]]


def test_host_takes_one_class_per_anchor_where_plugin_takes_all() -> None:
    raw = np.zeros((1, 6, 1), np.float32)
    raw[0, :, 0] = [10, 10, 8, 8, 0.9, 0.6]
    cfg = NmsConfig(0.25, 0.5, 10)
    assert run_host_nms(raw, cfg, 32)[0].class_ids.tolist() == [0]
    assert efficient_nms_yolov8(raw, cfg).classes[0, :2].tolist() == [0, 1]


# --- TensorRT graph: structure against the EfficientNMS_TRT README --------------------------


def _dims(info: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else d.dim_param
        for d in info.type.tensor_type.shape.dim
    ]


def test_tensorrt_graph_structure() -> None:
    cfg = NmsConfig(0.25, 0.45, 100)
    model = add_nms_tensorrt(passthrough_yolov8(6, anchors=2100), cfg)
    nms = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert len(nms) == 1
    attrs = {a.name: helper.get_attribute_value(a) for a in nms[0].attribute}
    assert attrs == {
        "plugin_version": b"1",
        "background_class": -1,
        "max_output_boxes": 100,
        "score_threshold": pytest.approx(0.25),
        "iou_threshold": pytest.approx(0.45),
        "score_activation": 0,
        "class_agnostic": 0,
        "box_coding": 1,
    }
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    boxes, scores = (infos[name] for name in nms[0].input)
    assert _dims(boxes) == ["batch", 2100, 4] and _dims(scores) == ["batch", 2100, 6]
    assert boxes.type.tensor_type.elem_type == TensorProto.FLOAT
    outs = {o.name: o for o in model.graph.output}
    assert list(outs) == list(OUTPUT_NAMES) == list(nms[0].output)
    want = {
        "num_dets": (TensorProto.INT32, ["batch", 1]),
        "det_boxes": (TensorProto.FLOAT, ["batch", 100, 4]),
        "det_scores": (TensorProto.FLOAT, ["batch", 100]),
        "det_classes": (TensorProto.INT32, ["batch", 100]),
    }
    assert {k: (v.type.tensor_type.elem_type, _dims(v)) for k, v in outs.items()} == want


def test_tensorrt_graph_feeds_the_plugin_transposed_slices() -> None:
    # Everything up to the plugin runs in ONNX Runtime: check the values it would receive.
    model = add_nms_tensorrt(passthrough_yolov8(3), NmsConfig(0.25, 0.45, 10))
    nms = next(n for n in model.graph.node if n.op_type == "EfficientNMS_TRT")
    sub = onnx.utils.Extractor(model).extract_model(["raw"], list(nms.input))
    sess = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    raw = _raw(np.random.default_rng(3), 2, 3, 40)
    boxes, scores = sess.run(list(nms.input), {"raw": raw})
    np.testing.assert_array_equal(boxes, raw[:, :4].transpose(0, 2, 1))
    np.testing.assert_array_equal(scores, raw[:, 4:].transpose(0, 2, 1))


# --- packages ---------------------------------------------------------------------------------


def test_ort_package_detects_the_red_block(tiny_package: Path, tmp_path: Path) -> None:
    out = add_nms_package(tiny_package, tmp_path / "e2e", "ort", NmsConfig(0.6, 0.5, 10))
    package = load_package(out)
    m = package.manifest
    assert (m.output_format, m.nms, m.postprocess.max_detections) == ("end2end", "in-graph", 10)
    assert m.metadata["nms_graph"]["target"] == "ort"
    image = np.zeros((2, 3, 64, 64), np.float32)
    image[0, 0, 32:64, 0:32] = 1.0  # red block in the bottom-left cell of image 0
    sess = ort.InferenceSession(str(package.model_path), providers=["CPUExecutionProvider"])
    num, boxes, scores, classes = sess.run(None, {"images": image})
    assert num.tolist() == [[1], [0]]
    np.testing.assert_array_equal(boxes[0, 0], [0, 32, 32, 64])
    assert scores[0, 0] == pytest.approx(1.0) and classes[0, 0] == 0


def test_ort_package_serves_through_the_engine_path(tiny_package: Path, tmp_path: Path) -> None:
    e2e = add_nms_package(tiny_package, tmp_path / "e2e", "ort", NmsConfig(0.6, 0.5, 10))
    image = np.zeros((96, 128, 3), np.uint8)  # letterboxed to 64x48 + padding
    image[0:48, 64:112, 2] = 255  # a blue block the letterbox maps onto one 32-px cell
    params = DecodeParams(0.6, 0.5, 10)
    results = {}
    for name, root in (("host", tiny_package), ("in-graph", e2e)):
        engine = create_engine(load_package(root), "onnxruntime")
        try:
            results[name] = detect_images(engine, [image, np.zeros_like(image)], params)
        finally:
            engine.close()
    for host, graph in zip(results["host"], results["in-graph"], strict=True):
        np.testing.assert_array_equal(graph.class_ids, host.class_ids)
        np.testing.assert_allclose(graph.boxes, host.boxes, atol=1e-4)
        np.testing.assert_allclose(graph.scores, host.scores, atol=1e-6)
    assert results["in-graph"][0].class_ids.tolist() == [2]
    assert len(results["in-graph"][1]) == 0


def test_tensorrt_package_manifest(tiny_package: Path, tmp_path: Path) -> None:
    out = add_nms_package(tiny_package, tmp_path / "trt", "tensorrt", NmsConfig(0.5, 0.6, 20))
    m = load_package(out).manifest
    assert m.output_format == "end2end" and m.metadata["nms_graph"]["runs_on"] == "tensorrt"
    assert (m.postprocess.score_threshold, m.postprocess.iou_threshold) == (0.5, 0.6)


def test_package_errors_name_the_problem(tiny_package: Path, tmp_path: Path) -> None:
    cfg = NmsConfig(0.5, 0.5, 10)
    with pytest.raises(ValueError, match="target must be one of"):
        add_nms_package(tiny_package, tmp_path / "x", "cuda", cfg)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--out must differ"):
        add_nms_package(tiny_package, tiny_package, "ort", cfg)
    e2e = add_nms_package(tiny_package, tmp_path / "e2e", "ort", cfg)
    with pytest.raises(ValueError, match="has output format 'end2end'"):
        add_nms_package(e2e, tmp_path / "again", "ort", cfg)

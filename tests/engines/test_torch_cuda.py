"""TorchEngine on the CPU (no CUDA here) against ONNX Runtime on the same package, and the
pure-torch NMS against the numpy reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import pytest
import torch
import yaml

from detserve.engines.base import DecodeParams, Letterbox
from detserve.engines.decode import decode_batch
from detserve.engines.manifest import Manifest, ManifestError, Postprocess, write_manifest
from detserve.engines.nms import batched_nms_keep, nms_keep
from detserve.engines.torch_cuda import TorchEngine
from detserve.engines.torch_nms import NmsSettings, nms, torch_batched_nms, yolov8_end2end
from detserve.models.detector import DetectorConfig, build_detector, save_checkpoint

SIZE = 96  # anchors: 144 + 36 + 9 = 189
CLASSES = ("a", "b", "c")


def _write_detector_package(root: Path, score_threshold: float) -> Path:
    """A real (untrained, seeded) detector: checkpoint + ONNX export + manifest."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = DetectorConfig(num_classes=len(CLASSES), width_mult=0.25, depth_mult=0.33)
    torch.manual_seed(0)
    model = build_detector(cfg)
    # Untrained weights give near-constant scores; BatchNorm statistics from one train-mode
    # pass restore unit-variance activations, so scores spread and many anchors pass.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for seq in model.head.cls:
            last = cast(torch.nn.Conv2d, list(seq.children())[-1])
            torch.nn.init.constant_(cast(torch.Tensor, last.bias), -2.0)
        model(torch.rand(4, 3, SIZE, SIZE))
    model.eval()
    save_checkpoint(model, cfg, root / "model.pt")
    torch.onnx.export(model, (torch.rand(1, 3, SIZE, SIZE),), str(root / "model.onnx"),
                      input_names=["images"], output_names=["output0"],
                      dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
                      opset_version=17, dynamo=False)
    manifest = Manifest(
        name="tinydet", version="1", classes=CLASSES, input_width=SIZE, input_height=SIZE,
        postprocess=Postprocess(score_threshold=score_threshold, iou_threshold=0.5,
                                max_detections=20, pre_nms_top_k=100),
        metadata={"torch_checkpoint": "model.pt"},
    )
    write_manifest(manifest, root)
    return root


@pytest.fixture(scope="module")
def det_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_detector_package(tmp_path_factory.mktemp("tinydet"), score_threshold=0.3)


@pytest.fixture(scope="module")
def batch() -> npt.NDArray[np.float32]:
    return np.random.default_rng(1).random((3, 3, SIZE, SIZE), dtype=np.float32)


def _onnx_outputs(package: Path, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"images": batch})[0], np.float32)


def _f32(x: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    return np.asarray(x, np.float32)


def _identity_boxes(n: int) -> list[Letterbox]:
    return [Letterbox(1.0, 1.0, 0.0, 0.0, SIZE, SIZE) for _ in range(n)]


def _random_boxes(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    xy = rng.uniform(0, 80, (n, 2))
    wh = rng.uniform(4, 40, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


# ---- pure-torch NMS against numpy -------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_torch_batched_nms_matches_numpy_on_random_boxes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 300)
    scores = rng.random(300).astype(np.float32)
    classes = rng.integers(0, 4, 300)
    want = batched_nms_keep(boxes, scores, classes, 0.45)
    got = torch_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                            torch.from_numpy(classes), 0.45)
    assert 0 < len(want) < 300
    np.testing.assert_array_equal(got.numpy(), want)


def test_torch_nms_ties_and_threshold_edge_match_numpy() -> None:
    # Equal scores are visited in index order; IoU exactly at the threshold is not suppressed.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 10, 10],
                      [20, 20, 30, 30], [0, 0, 10, 20]], np.float32)
    scores = np.array([0.5, 0.5, 0.5, 0.9, 0.5, 0.5], np.float32)
    want = nms_keep(boxes, scores, 0.5)
    got = nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5)
    np.testing.assert_array_equal(got.numpy(), want)
    # box 5 overlaps box 3 with IoU exactly 0.5: kept at threshold 0.5, dropped below it.
    assert got.tolist() == [3, 2, 4, 5]
    assert nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.49).tolist() == [3, 2, 4]


def test_torch_nms_rejects_bad_shapes_and_threshold() -> None:
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\], got \(3, 5\)"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"iou_threshold must be in .*got 0.0"):
        nms(torch.zeros(3, 4), torch.zeros(3), 0.0)


@pytest.mark.parametrize("multi_label", [False, True])
def test_end2end_nms_matches_host_decode_of_raw_output(multi_label: bool) -> None:
    rng = np.random.default_rng(5)
    b, n = 4, 400
    raw = np.zeros((b, 7, n), np.float32)
    raw[:, :2] = rng.uniform(10, 86, (b, 2, n))
    raw[:, 2:4] = rng.uniform(4, 30, (b, 2, n))
    raw[:, 4:] = rng.random((b, 3, n))
    raw[2, 4:] = 0.0  # an image with no candidate at all
    manifest = Manifest(name="m", version="1", classes=CLASSES, input_width=SIZE,
                        input_height=SIZE,
                        postprocess=Postprocess(0.4, 0.5, 15, 120, multi_label=multi_label))
    params = [DecodeParams.from_manifest(manifest)] * b
    want = decode_batch([raw], manifest, _identity_boxes(b), params)
    settings = NmsSettings(0.4, 0.5, 15, 120, prefer_torchvision=False, multi_label=multi_label)
    out = yolov8_end2end(torch.from_numpy(raw), settings)
    e2e = dataclasses.replace(manifest, output_format="end2end")
    got = decode_batch([t.numpy() for t in out.as_tuple()], e2e, _identity_boxes(b), params)
    assert out.num_dets[:, 0].tolist() == [len(d.scores) for d in want]
    assert out.num_dets[2, 0] == 0 and out.num_dets[0, 0] == 15
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.class_ids, w.class_ids)
        np.testing.assert_allclose(g.scores, w.scores, rtol=0, atol=0)
        np.testing.assert_allclose(g.boxes, w.boxes, atol=1e-4)


# ---- the engine on the CPU --------------------------------------------------------------------
def test_host_nms_output_matches_onnxruntime(det_package: Path,
                                             batch: npt.NDArray[np.float32]) -> None:
    engine = TorchEngine(det_package, device="cpu", nms="host", batch_sizes=(1, 2, 4))
    raw = _f32(engine.infer(batch)[0])
    want = _onnx_outputs(det_package, batch)
    assert raw.shape == want.shape == (3, 7, 189)
    np.testing.assert_allclose(raw, want, atol=2e-3, rtol=1e-4)
    assert engine.manifest.output_format == "yolov8" and engine.manifest.nms == "host"
    assert engine.kind == "torch-cuda"


def test_gpu_nms_detections_match_onnxruntime_plus_host_decode(
        det_package: Path, batch: npt.NDArray[np.float32]) -> None:
    engine = TorchEngine(det_package, device="cpu", nms="gpu", batch_sizes=(1, 2, 4))
    outs = engine.infer(batch)
    m = engine.manifest
    assert (m.output_format, m.nms) == ("end2end", "gpu")
    assert m.metadata["torch_checkpoint"] == "model.pt" and "load_checkpoint" in str(
        m.metadata["torch_rebuild"])
    assert [o.shape for o in outs] == [(3, 1), (3, 20, 4), (3, 20), (3, 20)]
    assert outs[0].dtype == np.int32 and outs[3].dtype == np.int32
    params = [DecodeParams.from_manifest(m)] * 3
    got = decode_batch(outs, m, _identity_boxes(3), params)
    raw_manifest = yaml.safe_load((det_package / "manifest.yaml").read_text())
    assert raw_manifest["output"]["format"] == "yolov8"
    want = decode_batch([_onnx_outputs(det_package, batch)], engine._package.manifest,
                        _identity_boxes(3), params)
    assert min(len(w.scores) for w in want) >= 2, "fixture must yield several detections"
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.class_ids, w.class_ids)
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-4)
        np.testing.assert_allclose(g.boxes, w.boxes, atol=1e-2)


def test_batch_of_three_runs_padded_to_four_and_answers_three_rows(
        det_package: Path, batch: npt.NDArray[np.float32]) -> None:
    engine = TorchEngine(det_package, device="cpu", nms="host", batch_sizes=(1, 2, 4))
    assert [engine.padded_size(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]
    assert [engine.batch_plan(n) for n in (3, 4, 7)] == [(4,), (4,), (4, 4)]
    raw = _f32(engine.infer(batch)[0])
    assert engine.last_padded_size == 4 and raw.shape[0] == 3
    alone = _f32(engine.infer(batch[1:2])[0])
    assert engine.last_padded_size == 1
    np.testing.assert_allclose(raw[1:2], alone, rtol=1e-5, atol=1e-3)


def test_batch_above_largest_size_is_split(det_package: Path,
                                           batch: npt.NDArray[np.float32]) -> None:
    engine = TorchEngine(det_package, device="cpu", nms="gpu", batch_sizes=(2,))
    big = np.concatenate([batch, batch[:2]])  # 5 rows -> chunks of 2, 2, 1 (padded to 2)
    outs = engine.infer(big)
    assert outs[0].shape == (5, 1)
    np.testing.assert_array_equal(outs[0][3:], outs[0][:2])
    scores = _f32(outs[2])
    np.testing.assert_allclose(scores[3:], scores[:2], atol=1e-5)


def test_bf16_autocast_close_to_fp32(det_package: Path, batch: npt.NDArray[np.float32]) -> None:
    fp32 = TorchEngine(det_package, device="cpu", nms="host", batch_sizes=(4,))
    bf16 = TorchEngine(det_package, device="cpu", nms="host", precision="bf16",
                       batch_sizes=(4,))
    a, b = _f32(fp32.infer(batch)[0]), _f32(bf16.infer(batch)[0])
    assert b.dtype == np.float32 and bf16.manifest.precision == "bf16"
    assert not np.array_equal(a, b)  # really ran in another precision
    score_err = np.abs(b[:, 4:] - a[:, 4:])
    assert score_err.mean() < 0.02 and score_err.max() < 0.25
    box_err = np.abs(b[:, :4] - a[:, :4])
    assert box_err.mean() < 0.02 * SIZE


def test_bad_options_and_inputs_name_the_value(det_package: Path) -> None:
    with pytest.raises(ValueError, match=r"'precision' must be one of .*got 'int8'"):
        TorchEngine(det_package, device="cpu", precision="int8")
    with pytest.raises(ValueError, match=r"'nms' must be one of .*got 'in-graph'"):
        TorchEngine(det_package, device="cpu", nms="in-graph")
    with pytest.raises(ValueError, match=r"'batch_sizes' .*got \[0, 2\]"):
        TorchEngine(det_package, device="cpu", batch_sizes=(0, 2))
    with pytest.raises(ValueError, match=r"'device' must be cuda.* or cpu, got 'meta'"):
        TorchEngine(det_package, device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
            TorchEngine(det_package, device="cuda")
    engine = TorchEngine(det_package, device="cpu", batch_sizes=(1,))
    with pytest.raises(ValueError, match=r"expects a batch \[B, 3, 96, 96\].*got \(2, 3, 64, 64\)"):
        engine.infer(np.zeros((2, 3, 64, 64), np.float32))


def test_missing_checkpoint_metadata_is_a_manifest_error(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    write_manifest(Manifest(name="x", version="1", classes=CLASSES, input_width=64,
                            input_height=64), tmp_path)
    with pytest.raises(ManifestError, match=r"'metadata.torch_checkpoint' .*got None"):
        TorchEngine(tmp_path, device="cpu")


def test_factory_builds_torch_cuda_engine_from_options(det_package: Path) -> None:
    from detserve.engines.factory import create_engine
    from detserve.engines.manifest import load_package

    package = load_package(det_package)
    engine = create_engine(package, "torch-cuda",
                           {"device": "cpu", "nms": "host", "batch_sizes": [1, 2]})
    assert isinstance(engine, TorchEngine) and engine.batch_sizes == (1, 2)
    with pytest.raises(ValueError, match=r"bad options .*'graphs'.*'torch-cuda'"):
        create_engine(package, "torch-cuda", {"device": "cpu", "graphs": False})


async def test_server_with_torch_cuda_gpu_nms_answers_like_onnxruntime(det_package: Path) -> None:
    import grpc

    from detserve.protos import detection_pb2 as pb
    from detserve.protos import detection_pb2_grpc as pb_grpc
    from detserve.server.app import start_server
    from detserve.server.config import parse_config, validate

    raw = {"host": "127.0.0.1", "port": 0, "metrics_port": None, "log_requests": False,
           "models": [
               {"name": "torch", "package": str(det_package), "engine": "torch-cuda",
                "engine_options": {"device": "cpu", "nms": "gpu", "batch_sizes": [1, 2]},
                "batching": {"max_batch_size": 2, "max_queue_delay_ms": 1}, "default": True},
               {"name": "ort", "package": str(det_package), "engine": "onnxruntime"}]}
    config = validate(parse_config(raw, det_package))
    frame = np.random.default_rng(3).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    image = pb.Image(raw=pb.RawFrame(data=frame.tobytes(), height=90, width=120,
                                     pixel_format=pb.PIXEL_FORMAT_RGB8))
    server = await start_server(config)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            info = await stub.GetModelInfo(pb.GetModelInfoRequest(model="torch"))
            got = await stub.Detect(pb.DetectRequest(model="torch", image=image))
            want = await stub.Detect(pb.DetectRequest(model="ort", image=image))
    finally:
        await server.stop(1.0)
    assert (info.engine, info.output_format, info.nms) == ("torch-cuda", "end2end", "gpu")
    assert got.nms == "gpu" and want.nms == "host"
    assert len(want.detections) >= 1
    assert [d.class_id for d in got.detections] == [d.class_id for d in want.detections]
    for g, w in zip(got.detections, want.detections, strict=True):
        assert abs(g.score - w.score) < 1e-4
        gb, wb = g.box, w.box
        assert max(abs(gb.x1 - wb.x1), abs(gb.y1 - wb.y1), abs(gb.x2 - wb.x2),
                   abs(gb.y2 - wb.y2)) < 0.05


def test_run_resident_uses_the_static_buffer_of_that_size(
        det_package: Path, batch: npt.NDArray[np.float32]) -> None:
    engine = TorchEngine(det_package, device="cpu", nms="gpu", batch_sizes=(1, 2))
    via_infer = engine.infer(batch[:2])
    outs = engine.run_resident(2)  # the buffer still holds the two rows just sent
    assert [tuple(t.shape) for t in outs] == [(2, 1), (2, 20, 4), (2, 20), (2, 20)]
    np.testing.assert_array_equal(outs[0].numpy(), via_infer[0])
    with pytest.raises(ValueError, match=r"batch size 3 is not one of this engine's \[1, 2\]"):
        engine.run_resident(3)

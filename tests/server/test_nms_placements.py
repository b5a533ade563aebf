"""One detector served three ways side by side: host NMS, NMS inside the ONNX graph, INT8.

The three packages are made here from one small detector with random (but lively) weights,
exported like the real one, with the model toolchain's own commands (`add-nms --target ort`,
`quantize --int8`). A real server on a loopback port serves all three; every reply must say
where NMS ran, and the host-NMS and in-graph answers for the same image must agree.

Why the agreement is exact here, up to float rounding: host NMS keeps one class per anchor (its
best) and suppresses at IoU > threshold; the in-graph NMS (EfficientNMS semantics, see
models/efficient_nms_ref.py) considers every (anchor, class) pair and suppresses at IoU >=
threshold. The score threshold below is chosen so that no anchor of the test images has two
classes above it (checked, not assumed), and random float boxes make an IoU exactly equal to
the threshold, or two equal scores, practically impossible.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import grpc
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import structlog
import torch

from detserve.engines.manifest import Manifest, Postprocess, load_package, write_manifest
from detserve.engines.preprocess import prepare
from detserve.models import cli_precision
from detserve.models.detector import DetectorConfig, build_detector
from detserve.models.scenes import render_scene, split_seeds
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.app import Server, start_server
from detserve.server.batcher import BatchingConfig
from detserve.server.config import ModelConfig
from detserve.server.logs import configure_logging

from .conftest import request_for, server_config

SIZE = 64
SCORE_THRESHOLD = 0.6  # the random detector's class scores spread over ~0.3..0.7
IMAGE_SIDE = 96  # scenes are letterboxed down to SIZE


def _lively_detector(seed: int = 0) -> torch.nn.Module:
    """A 3-class detector with He-initialised weights, so its scores vary from anchor to anchor."""
    torch.manual_seed(seed)
    model = build_detector(DetectorConfig(3, width_mult=0.25, depth_mult=0.34)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("dfl"):
                continue
            if p.ndim == 4:
                p.normal_(0.0, (2.0 / (p.shape[1] * p.shape[2] * p.shape[3])) ** 0.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.5)
        # DFL logits that fall off with the bin index put box sides about two strides from the
        # anchor: neighbouring boxes then overlap around the IoU threshold, so NMS has work.
        bins = torch.arange(model.cfg.reg_max, dtype=torch.float32)
        for branch in model.head.box:
            last = cast(torch.nn.Conv2d, cast(torch.nn.Sequential, branch)[-1])
            last.weight.mul_(0.5)
            cast(torch.Tensor, last.bias).copy_((-0.5 * bins).repeat(4))
    model.fuse()
    return model


def _write_yolov8_package(root: Path) -> Path:
    root.mkdir(parents=True)
    torch.onnx.export(
        _lively_detector(), (torch.rand(1, 3, SIZE, SIZE),), str(root / "model.onnx"),
        input_names=["images"], output_names=["output0"],
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    manifest = Manifest(
        name="tiny", version="1", classes=("a", "b", "c"), input_width=SIZE, input_height=SIZE,
        postprocess=Postprocess(score_threshold=SCORE_THRESHOLD, iou_threshold=0.5),
    )  # fmt: skip
    write_manifest(manifest, root)
    return root


def _model_command(*argv: str) -> dict[str, object]:
    """Run a `detserve-model` precision subcommand as the CLI does; its JSON line as a dict."""
    parser = argparse.ArgumentParser()
    cli_precision.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return {"rc": args.func(args)}


@dataclass(frozen=True)
class Packages:
    host: Path
    in_graph: Path
    int8: Path


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    root = tmp_path_factory.mktemp("placements")
    host = _write_yolov8_package(root / "yolov8")
    assert _model_command("add-nms", str(host), "--target", "ort",
                          "--out", str(root / "nms_ort")) == {"rc": 0}  # fmt: skip
    assert _model_command("quantize", str(host), "--int8", "--calib", "synthetic", "--n", "8",
                          "--out", str(root / "int8")) == {"rc": 0}  # fmt: skip
    return Packages(host, root / "nms_ort", root / "int8")


def _images() -> list[npt.NDArray[np.uint8]]:
    return [render_scene(seed, IMAGE_SIDE, IMAGE_SIDE).image for seed in split_seeds("test", 3)]


def _model(package: Path, variant: str) -> ModelConfig:
    return ModelConfig(
        package=package, variant=variant, engine_options={"intra_op_threads": 1},
        batching=BatchingConfig(max_batch_size=4, max_queue_delay_s=0.0),
    )  # fmt: skip


@dataclass
class Served:
    server: Server
    stub: pb_grpc.DetectorStub


@pytest.fixture
async def served(packages: Packages) -> AsyncIterator[Served]:
    config = server_config(
        _model(packages.host, "host"), _model(packages.in_graph, "nms"),
        _model(packages.int8, "int8"),
    )  # fmt: skip
    server = await start_server(config)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    yield Served(server, pb_grpc.DetectorStub(channel))  # type: ignore[no-untyped-call]
    await channel.close()
    await server.stop(grace_s=1.0)


def test_test_images_have_one_class_per_anchor_above_threshold(packages: Packages) -> None:
    """The precondition that makes host and in-graph NMS comparable (see the docstring)."""
    manifest = load_package(packages.host).manifest
    session = ort.InferenceSession(str(packages.host / "model.onnx"),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    batch = np.stack([prepare(image, manifest).tensor for image in _images()])
    scores = session.run(None, {"images": batch})[0][:, 4:]
    above = (scores >= SCORE_THRESHOLD).sum(axis=1)  # [B, anchors]
    assert int(above.max()) == 1
    assert (above.sum(axis=1) >= 20).all()  # enough candidates for NMS to have work to do


async def test_nms_suppresses_a_good_share_of_candidates(served: Served) -> None:
    image = _images()[0]
    unsuppressed = await served.stub.Detect(
        request_for(image, model="tiny@host", iou_threshold=1.0)
    )
    suppressed = await served.stub.Detect(request_for(image, model="tiny@host"))
    assert len(suppressed.detections) < 0.75 * len(unsuppressed.detections)


async def test_model_info_reports_precision_and_nms_per_model(served: Served) -> None:
    listed = await served.stub.ListModels(pb.ListModelsRequest())
    facts = {m.name: (m.output_format, m.nms, m.precision, m.engine) for m in listed.models}
    assert facts == {
        "tiny@host": ("yolov8", "host", "fp32", "onnxruntime"),
        "tiny@nms": ("end2end", "in-graph", "fp32", "onnxruntime"),
        "tiny@int8": ("yolov8", "host", "int8", "onnxruntime"),
    }
    info = await served.stub.GetModelInfo(pb.GetModelInfoRequest(model="tiny@nms"))
    assert json.loads(info.metadata["nms_graph"])["runs_on"] == "onnxruntime"
    assert info.iou_threshold == pytest.approx(0.5) and info.score_threshold == pytest.approx(0.6)
    info = await served.stub.GetModelInfo(pb.GetModelInfoRequest(model="tiny@int8"))
    assert (info.precision, info.nms) == ("int8", "host")
    assert json.loads(info.metadata["calibration"])["images"] == 8


def _detections(reply: pb.DetectResponse) -> list[tuple[int, float, list[float]]]:
    return [(d.class_id, d.score, [d.box.x1, d.box.y1, d.box.x2, d.box.y2])
            for d in reply.detections]  # fmt: skip


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


async def test_each_reply_says_where_nms_ran_and_answers_agree(served: Served) -> None:
    for image in _images():
        replies = {
            variant: await served.stub.Detect(request_for(image, model=f"tiny@{variant}"))
            for variant in ("host", "nms", "int8")
        }
        assert {v: (r.model, r.nms) for v, r in replies.items()} == {
            "host": ("tiny@host", "host"),
            "nms": ("tiny@nms", "in-graph"),
            "int8": ("tiny@int8", "host"),
        }
        host, graph = _detections(replies["host"]), _detections(replies["nms"])
        assert len(host) >= 10  # NMS kept many boxes, so order and classes are tested too
        assert [c for c, _, _ in graph] == [c for c, _, _ in host]
        np.testing.assert_allclose([s for _, s, _ in graph], [s for _, s, _ in host], atol=1e-5)
        np.testing.assert_allclose([b for _, _, b in graph], [b for _, _, b in host], atol=1e-2)
        # INT8 moves scores by a few hundredths, which can change what passes the threshold
        # and which box of a cluster survives NMS; most FP32 boxes must still be found.
        int8 = _detections(replies["int8"])
        found = [
            any(c8 == c and abs(s8 - s) < 0.05 and _iou(b8, b) > 0.8 for c8, s8, b8 in int8)
            for c, s, b in host
        ]  # fmt: skip
        assert sum(found) >= 0.8 * len(host)


async def test_request_log_lines_say_where_nms_ran(
    packages: Packages, log_lines: io.StringIO
) -> None:
    """Host NMS is postprocessing work; in-graph NMS is part of the engine run. Each request's
    log line carries its stage times and the placement that says which stage held NMS."""
    config = server_config(_model(packages.host, "host"), _model(packages.in_graph, "nms"))
    server = await start_server(config)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            for variant in ("host", "nms"):
                request = request_for(_images()[0], model=f"tiny@{variant}", request_id=variant)
                await stub.Detect(request)
    finally:
        await server.stop(grace_s=1.0)
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    requests = {line["request_id"]: line for line in lines if line["event"] == "request"}
    assert {k: (v["model"], v["nms"]) for k, v in requests.items()} == {
        "host": ("tiny@host", "host"), "nms": ("tiny@nms", "in-graph"),
    }  # fmt: skip
    for line in requests.values():
        assert line["inference_ms"] > 0 and line["postprocess_ms"] > 0
        assert line["detections"] >= 2


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    configure_logging("INFO", stream=buf)
    yield buf
    structlog.reset_defaults()


async def test_in_graph_model_refuses_another_iou_threshold(served: Served) -> None:
    image = _images()[0]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.Detect(request_for(image, model="tiny@nms", iou_threshold=0.7))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        "iou_threshold 0.7 cannot apply to model tiny@nms: its NMS runs in-graph with the IoU "
        "threshold 0.5 fixed when it was built; omit iou_threshold or pick a model whose NMS "
        "runs on the host"
    )
    # The threshold it was built with is accepted, and host NMS takes any threshold.
    same = await served.stub.Detect(request_for(image, model="tiny@nms", iou_threshold=0.5))
    loose = await served.stub.Detect(request_for(image, model="tiny@host", iou_threshold=0.7))
    assert len(same.detections) >= 2
    assert len(loose.detections) > len(same.detections)  # fewer boxes suppressed at 0.7


def test_packages_keep_their_sources_facts(packages: Packages) -> None:
    host = load_package(packages.host).manifest
    graph = load_package(packages.in_graph).manifest
    int8 = load_package(packages.int8).manifest
    assert replace(graph, output_format="yolov8", nms="host", postprocess=host.postprocess,
                   metadata={}) == host  # fmt: skip
    assert (int8.precision, int8.nms, int8.output_format) == ("int8", "host", "yolov8")

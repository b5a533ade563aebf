"""Device JPEG decode with the real `torchvision.io.decode_jpeg`, on torch's CPU device (what
runs here; on a GPU the same code passes device="cuda" and nvJPEG decodes). Needs torchvision:
the suite's .venv has none, so this file skips there, and test_gpu_decode.py runs it in
.venv-tv (bash models/torchvision_env.sh) when that exists.

Against the host path on the default model (shapes_320, trained): the same letterbox, canvases
within resampling differences, the same detections; one corrupt JPEG in a batch fails only its
own item; and a real server on loopback answers JPEGs, PNGs and progressive JPEGs like a
host-decoding one, and a corrupt JPEG with INVALID_ARGUMENT while its batch neighbour is
answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import pytest
import torch

pytest.importorskip("torchvision", reason="torchvision is not installed here (the suite's "
                    ".venv); test_gpu_decode.py runs this file in .venv-tv")

from detserve.engines.base import DecodeParams
from detserve.engines.detections import Detections
from detserve.engines.device_jpeg import plan_device_jpeg
from detserve.engines.gpu_decode import DeviceDecoder
from detserve.engines.manifest import load_package
from detserve.engines.preprocess import (
    ImageError,
    decode_encoded_native,
    pixels_to_tensor,
    prepare_decoded,
)
from detserve.engines.torch_cuda import TorchEngine
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.app import Server, start_server
from detserve.server.batcher import BatchingConfig
from detserve.server.config import ModelConfig, ServerConfig
from detserve.server.engine_pool import BatchItem, ItemResult, run_on_engine

from .gpu_decode_helpers import (
    DEFAULT_PACKAGE,
    LIMIT,
    corrupt,
    jpeg,
    matched,
    png,
    scene,
)

SIZES = ((640, 480), (480, 360), (1280, 720), (200, 150))
# torchvision 0.29 deprecates its decoders on every call; the engine filters that, pytest resets.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torchvision.io.image")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def engine() -> TorchEngine:
    torch.set_num_threads(1)
    return TorchEngine(DEFAULT_PACKAGE, device="cpu", nms="gpu", decode="device",
                       batch_sizes=(1, 2, 4), warmup_iters=1)


def _items(datas: list[bytes], engine: TorchEngine, decode: str) -> list[BatchItem]:
    """Batch items decoded on the `device`, or on the host at `reduced` size in the DCT where
    the picture is twice the input (the server's default) or in `full`."""
    m = engine.manifest
    params = DecodeParams.from_manifest(m)
    items = []
    for data in datas:
        plan = plan_device_jpeg(data, LIMIT, m) if decode == "device" else None
        if plan is not None:
            items.append(BatchItem(np.zeros((0, 0, 3), np.uint8), plan.letterbox, params, plan))
        else:
            decoded = decode_encoded_native(data, LIMIT, m if decode == "reduced" else None)
            host = prepare_decoded(decoded, m)
            items.append(BatchItem(host.pixels, host.letterbox, params))
    return items


def _detections(result: ItemResult | Exception) -> Detections:
    assert isinstance(result, ItemResult), result
    return result.detections


def test_real_decode_jpeg_gives_the_host_canvas() -> None:
    m = load_package(DEFAULT_PACKAGE).manifest
    decoder = DeviceDecoder(CPU, m)
    for i, size in enumerate(SIZES):
        data = jpeg(scene(i, *size), quality=90)
        plan = plan_device_jpeg(data, LIMIT, m)
        host = prepare_decoded(decode_encoded_native(data, LIMIT, m), m)
        assert plan is not None and plan.letterbox == host.letterbox
        batch, failed = decoder.batch([plan])
        assert not failed
        levels = np.abs(batch[0].numpy() - pixels_to_tensor(host.pixels[None], m)[0]) * 255
        assert levels.mean() < 1.5 and np.percentile(levels, 99) < 24, (size, levels.mean())


def test_detections_match_the_host_path(engine: TorchEngine) -> None:
    """Each image's device detections match one of the host's two decodes. They can differ
    from each other: on ambiguous small objects the host's reduced and full decodes of the
    same 640x480 JPEG disagree (class 3 against 4), and the device sides with the full one."""
    datas = [jpeg(scene(i, *size), quality=90) for i, size in enumerate(SIZES)]
    runs = {d: run_on_engine(engine, _items(datas, engine, d))
            for d in ("reduced", "full", "device")}
    floor = engine.manifest.postprocess.score_threshold + 0.1  # clear of the threshold
    found = 0
    for i, size in enumerate(SIZES):
        device = _detections(runs["device"][i])
        misses = [matched(_detections(runs[d][i]), device, floor) for d in ("reduced", "full")]
        assert [] in misses, (size, misses)
        found += int((device.scores >= floor).sum())
    assert found >= 30  # the comparison is about real detections, not two empty lists


def test_one_corrupt_jpeg_fails_only_its_own_item(engine: TorchEngine) -> None:
    good = [jpeg(scene(i, 640, 480), quality=90) for i in range(2)]
    bad = corrupt(good[0])
    mixed = run_on_engine(engine, _items([good[0], bad, good[1]], engine, "device"))
    assert isinstance(mixed[1], ImageError)
    assert "is corrupt: its header is valid but the JPEG decoder on cpu refused" in str(mixed[1])
    alone = run_on_engine(engine, _items(good, engine, "device"))
    for got, want in ((mixed[0], alone[0]), (mixed[2], alone[1])):
        a, b = _detections(got), _detections(want)
        assert np.array_equal(a.class_ids, b.class_ids)
        assert np.allclose(a.boxes, b.boxes, atol=1e-3) and len(a.scores) > 0


def _config(decode: str) -> ServerConfig:
    # Two requests make a batch, whatever their arrival gap (no adaptive early start).
    batching = BatchingConfig(max_batch_size=2, max_queue_delay_s=10.0, adaptive_window=False)
    model = ModelConfig(package=DEFAULT_PACKAGE, engine="torch-cuda", batching=batching,
                        engine_options={"device": "cpu", "nms": "gpu", "decode": decode,
                                        "batch_sizes": [1, 2], "warmup_iters": 1})
    return ServerConfig(host="127.0.0.1", port=0, metrics_port=None, models=(model,))


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[str], Any]]:
    running: list[tuple[Server, grpc.aio.Channel]] = []

    async def _serve(decode: str) -> pb_grpc.DetectorStub:
        server = await start_server(_config(decode))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        running.append((server, channel))
        return pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]

    yield _serve
    for server, channel in running:
        await channel.close()
        await server.stop(grace_s=1.0)


def _rows(response: pb.DetectResponse) -> list[tuple[int, float, float, float, float, float]]:
    return [(d.class_id, d.score, d.box.x1, d.box.y1, d.box.x2, d.box.y2)
            for d in response.detections]


async def test_a_server_decoding_on_the_device_answers_like_one_decoding_on_the_host(
        serve: Callable[[str], Any]) -> None:
    picture = scene(1, 480, 360)  # under twice the input: the host decodes it in full
    images = [jpeg(picture, quality=90), png(picture), jpeg(picture, progressive=True)]
    answers = {}
    for decode in ("host", "device"):
        stub = await serve(decode)
        answers[decode] = [await asyncio.gather(*(stub.Detect(pb.DetectRequest(
            image=pb.Image(encoded=data))) for data in (image, image))) for image in images]
    for kind, host, device in zip(("jpeg", "png", "progressive"), answers["host"],
                                  answers["device"], strict=True):
        assert host[0].batch_size == device[0].batch_size == 2, kind
        assert (device[0].image_width, device[0].image_height) == (480, 360)
        a, b = _rows(host[0]), _rows(device[0])
        assert len(a) >= 8, kind
        if kind != "jpeg":  # decoded on the host both times: the same answer exactly
            assert a == b, kind
            continue
        for row in a:  # resampled on the device: the same objects, within a pixel or two
            assert any(r[0] == row[0] and abs(r[1] - row[1]) < 0.05
                       and max(abs(x - y) for x, y in zip(r[2:], row[2:], strict=True)) < 3
                       for r in b), (row, b)


async def test_a_corrupt_jpeg_is_invalid_argument_and_its_batch_neighbour_is_answered(
        serve: Callable[[str], Any]) -> None:
    stub = await serve("device")
    good = jpeg(scene(3, 640, 480), quality=90)
    calls = [stub.Detect(pb.DetectRequest(image=pb.Image(encoded=data)))
             for data in (good, corrupt(good))]
    ok, failed = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(ok, pb.DetectResponse) and ok.batch_size == 2 and len(ok.detections) > 0
    assert isinstance(failed, grpc.aio.AioRpcError)
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "JPEG image (640x480" in str(failed.details())
    assert "re-encode the image or send it as PNG" in str(failed.details())

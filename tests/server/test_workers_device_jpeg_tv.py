"""`workers: 2` with a torch-cuda model that decodes JPEGs on its device (`decode: device`, on
torch's CPU device here; on a GPU the same path decodes with nvJPEG), as real processes on
loopback (a supervisor, its engine process and two front ends), against one process.

The front ends leave baseline JPEGs encoded: the engine process counts each one it got that way
(detserve_worker_encoded_jpegs, `via` slot or message for one larger than a slot), so a JPEG a
front end decoded itself would be missing from the count; PNGs and progressive JPEGs are decoded
on the front end's host, as in one process, and are not counted. The answers are those of one
process exactly. A corrupt JPEG fails only its own request, with INVALID_ARGUMENT.

Needs torchvision: the suite's .venv has none, so this file skips there, and
test_workers_device_jpeg.py runs it in .venv-tv (bash models/torchvision_env.sh).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

pytest.importorskip("torchvision", reason="torchvision is not installed here (the suite's "
                    ".venv); test_workers_device_jpeg.py runs this file in .venv-tv")

from prometheus_client.parser import text_string_to_metric_families

from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.app import start_server
from detserve.server.batcher import BatchingConfig
from detserve.server.config import ModelConfig, ServerConfig

from ..engines.gpu_decode_helpers import DEFAULT_PACKAGE, corrupt, jpeg, png, scene

sys.path.insert(0, str(Path(__file__).parent))  # workers_harness, for this process's children
import workers_harness

SPAWN = multiprocessing.get_context("spawn")
START_S = 240.0  # four interpreters, two of them loading torch, on two busy cores
CALL_S = 60.0
SLOT_IMAGE_BYTES = 320 * 320 * 3  # the default model's canvas: a slot's image region
# torchvision 0.29 deprecates its decoders on every call; the engine filters that, pytest resets.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:torchvision.io.image"),
              pytest.mark.timeout(600)]


def _config(workers: int) -> ServerConfig:
    # Two requests make a batch, whatever their arrival gap (no adaptive early start).
    batching = BatchingConfig(max_batch_size=2, max_queue_delay_s=10.0, adaptive_window=False)
    model = ModelConfig(package=DEFAULT_PACKAGE, engine="torch-cuda", batching=batching,
                        engine_options={"device": "cpu", "nms": "gpu", "decode": "device",
                                        "batch_sizes": [1, 2], "warmup_iters": 1})
    return ServerConfig(host="127.0.0.1", port=0, metrics_port=0 if workers > 1 else None,
                        models=(model,), workers=workers, log_requests=False)


@dataclass
class Supervised:
    process: Any  # multiprocessing's SpawnProcess
    info: workers_harness.WorkersInfo
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def stub(self) -> pb_grpc.DetectorStub:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.info.port}")
        self.channels.append(channel)
        return pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]

    def encoded_jpegs(self, via: str) -> int:
        """detserve_worker_encoded_jpegs_total over every front end, for `via`."""
        url = f"http://127.0.0.1:{self.info.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=CALL_S) as response:
            text = response.read().decode()
        return int(sum(s.value for f in text_string_to_metric_families(text)
                       for s in f.samples
                       if s.name == "detserve_worker_encoded_jpegs_total"
                       and s.labels.get("via") == via))


@pytest.fixture
async def supervised() -> AsyncIterator[Callable[[], Any]]:
    """`await supervised()` -> a `workers: 2` server of _config, stopped at teardown."""
    started: list[Supervised] = []

    async def _start() -> Supervised:
        info_queue = SPAWN.Queue()
        process = SPAWN.Process(target=workers_harness.run_supervisor,
                                args=(_config(2), None, info_queue))
        process.start()
        info = await asyncio.to_thread(info_queue.get, True, START_S)
        run = Supervised(process, info)
        started.append(run)
        return run

    yield _start
    for run in started:
        await workers_harness.stop_supervisor(run.process, run.channels, START_S)
    assert all(run.process.exitcode == 0 for run in started)


Rows = list[tuple[int, float, float, float, float, float]]


async def _pairs(stub: pb_grpc.DetectorStub, images: list[bytes]) -> list[tuple[Rows, int]]:
    """Each image sent twice at once (one batch of two): its rows and the batch size."""
    answers = []
    for data in images:
        request = pb.DetectRequest(image=pb.Image(encoded=data))
        a, b = await asyncio.gather(stub.Detect(request, timeout=CALL_S),
                                    stub.Detect(request, timeout=CALL_S))
        rows = [(d.class_id, d.score, d.box.x1, d.box.y1, d.box.x2, d.box.y2)
                for d in a.detections]
        assert [d.class_id for d in b.detections] == [r[0] for r in rows]
        answers.append((rows, a.batch_size))
    return answers


async def test_front_ends_hand_jpegs_over_encoded_and_answer_as_one_process(
        supervised: Callable[[], Any]) -> None:
    big = jpeg(scene(3, 2560, 1440), quality=100)  # larger than a slot: inside SUBMIT
    assert len(big) > SLOT_IMAGE_BYTES
    images = [jpeg(scene(1, 640, 480), quality=90), jpeg(scene(2, 1280, 720), quality=90), big,
              png(scene(4, 480, 360)), jpeg(scene(5, 640, 480), progressive=True)]
    one = await start_server(_config(1))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{one.port}") as channel:
            expected = await _pairs(pb_grpc.DetectorStub(channel),  # type: ignore[no-untyped-call]
                                    images)
    finally:
        await one.stop(grace_s=1.0)
    run: Supervised = await supervised()
    got = await _pairs(run.stub(), images)
    assert all(len(rows) >= 5 for rows, _ in expected)  # real detections on every image
    assert [size for _, size in expected] == [size for _, size in got] == [2] * len(images)
    for i, ((want, _), (have, _)) in enumerate(zip(expected, got, strict=True)):
        assert have == want, i
    # Two baseline JPEGs that fit a slot and one that did not, each sent twice; the PNG and the
    # progressive JPEG were decoded on a front end's host.
    assert (run.encoded_jpegs("slot"), run.encoded_jpegs("message")) == (4, 2)


async def test_a_corrupt_jpeg_fails_only_its_own_request(supervised: Callable[[], Any]) -> None:
    run: Supervised = await supervised()
    stub = run.stub()
    good = jpeg(scene(3, 640, 480), quality=90)
    calls = [stub.Detect(pb.DetectRequest(image=pb.Image(encoded=data)), timeout=CALL_S)
             for data in (good, corrupt(good))]
    ok, failed = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(ok, pb.DetectResponse) and ok.batch_size == 2 and len(ok.detections) > 0
    assert isinstance(failed, grpc.aio.AioRpcError)
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(failed.details())
    assert "JPEG image (640x480" in details and "the JPEG decoder on cpu refused" in details
    assert "re-encode the image or send it as PNG" in details
    # Refused by the engine's decoder, not by the front end: it was handed over encoded; and
    # the front end's connection to the engine serves on.
    assert run.encoded_jpegs("slot") == 2
    again = await _pairs(stub, [good])
    assert again[0][0] == [(d.class_id, d.score, d.box.x1, d.box.y1, d.box.x2, d.box.y2)
                           for d in ok.detections]

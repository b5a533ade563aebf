"""`workers: 2` as real processes on loopback: a supervisor process (as `detserve-server
--workers 2` runs it), its engine process and two front ends sharing the port.

Front ends are chosen by the kernel (SO_REUSEPORT hashes each connection), so the tests open
many channels and read from the server's own metrics which front end holds what; batches wait
behind a gate shared across processes (workers_harness.GatedFactory), never behind sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc

from .conftest import WAIT_S, blocks_image, blocks_model, boxes_of, request_for, server_config

sys.path.insert(0, str(Path(__file__).parent))  # workers_harness, for this process's children
import workers_harness

SPAWN = multiprocessing.get_context("spawn")
START_S = 120.0  # four interpreters starting on two busy cores
GOOD = blocks_image(64, 64, [(32, 32, 1)])
GOOD_BOXES = [("green", 1.0, [32.0, 32.0, 64.0, 64.0])]


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the /metrics text (0.0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@dataclass
class Supervised:
    process: Any  # multiprocessing's SpawnProcess
    info: workers_harness.WorkersInfo
    gate: Any  # multiprocessing Event
    entered: Any  # multiprocessing Queue of batch sizes
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.info.port}"

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.info.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=WAIT_S) as response:
            return str(response.read().decode())

    def stub(self) -> pb_grpc.DetectorStub:
        """A stub on a channel of its own (its own connection, so its own front end)."""
        channel = grpc.aio.insecure_channel(self.target,
                                            options=[("grpc.use_local_subchannel_pool", 1)])
        self.channels.append(channel)
        return pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]

    async def until_metric(self, predicate: Callable[[str], bool]) -> str:
        """Poll /metrics until `predicate` holds (server state the test has no event for)."""
        deadline = asyncio.get_running_loop().time() + WAIT_S * 3
        while True:
            text = await asyncio.to_thread(self.metrics)
            if predicate(text):
                return text
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"metrics never matched; last:\n{text}")
            await asyncio.sleep(0.05)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(
        f"/proc/{pid}/status").read_text().lower()


@pytest.fixture
async def supervised(tiny_package: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await supervised(config=None, gated=True)` -> Supervised, stopped at teardown."""
    started: list[Supervised] = []

    async def _start(config: Any = None, gated: bool = True) -> Supervised:
        config = config or server_config(blocks_model(tiny_package, max_batch_size=1),
                                         workers=2, metrics_port=0, log_requests=False,
                                         drain_grace_s=WAIT_S * 3)
        gate, entered = SPAWN.Event(), SPAWN.Queue()
        factory = workers_harness.GatedFactory(gate, entered) if gated else None
        if not gated:
            gate.set()
        info_queue = SPAWN.Queue()
        process = SPAWN.Process(target=workers_harness.run_supervisor,
                                args=(config, factory, info_queue))
        process.start()
        info = await asyncio.to_thread(info_queue.get, True, START_S)
        run = Supervised(process, info, gate, entered)
        started.append(run)
        return run

    yield _start
    for run in started:
        run.gate.set()
        await workers_harness.stop_supervisor(run.process, run.channels, START_S)


def _held(text: str) -> tuple[int, int]:
    return (int(metric(text, "detserve_worker_slots_in_use", worker="0")),
            int(metric(text, "detserve_worker_slots_in_use", worker="1")))


async def _hold_on_both(run: Supervised) -> list[asyncio.Task[pb.DetectResponse]]:
    """Calls held in the engine (gate closed) by both front ends: one per new channel until each
    front end holds at least one."""
    calls: list[asyncio.Task[pb.DetectResponse]] = []
    while True:
        for _ in range(4):
            calls.append(asyncio.ensure_future(run.stub().Detect(request_for(GOOD))))
        text = await run.until_metric(lambda t: sum(_held(t)) == len(calls))
        if min(_held(text)) >= 1:
            return calls
        assert len(calls) < 64, "the kernel never spread connections over both front ends"


async def test_killed_worker_loses_nothing_the_other_holds_and_its_slots_are_freed(
    supervised: Callable[..., Any],
) -> None:
    run: Supervised = await supervised()
    calls = await _hold_on_both(run)
    held0, held1 = _held(run.metrics())
    os.kill(run.info.frontend_pids[0], signal.SIGKILL)
    await run.until_metric(lambda t: metric(t, "detserve_worker_slots_freed_total",
                                            worker="0") == held0 and _held(t) == (0, held1))
    run.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    answered = [r for r in results if isinstance(r, pb.DetectResponse)]
    failed = [r for r in results if not isinstance(r, pb.DetectResponse)]
    assert len(answered) == held1 and all(boxes_of(r) == GOOD_BOXES for r in answered)
    assert len(failed) == held0
    assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.UNAVAILABLE
               for e in failed)
    # The supervisor started a new front end in its place; both serve again.
    await run.until_metric(lambda t: metric(t, "detserve_worker_restarts_total") == 1
                           and metric(t, "detserve_workers_connected") == 2)
    again = await asyncio.gather(*(run.stub().Detect(request_for(GOOD), timeout=WAIT_S)
                                   for _ in range(8)))
    assert all(boxes_of(r) == GOOD_BOXES for r in again)
    assert run.process.is_alive()


async def test_sigterm_drains_every_process_and_the_server_exits_0(
    supervised: Callable[..., Any],
) -> None:
    run: Supervised = await supervised()
    calls = await _hold_on_both(run)
    pids = [run.info.engine_pid, *run.info.frontend_pids.values()]
    os.kill(run.process.pid, signal.SIGTERM)
    # Draining: a new call is refused, while the held ones wait for their batches.
    while True:
        try:
            await run.stub().Detect(request_for(GOOD), timeout=WAIT_S)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            break
    assert run.process.is_alive() and all(_alive(p) for p in pids)
    run.gate.set()
    results = await asyncio.gather(*calls)
    assert all(boxes_of(r) == GOOD_BOXES for r in results)
    await asyncio.to_thread(run.process.join, START_S)
    assert run.process.exitcode == 0
    assert not any(_alive(p) for p in pids)


async def test_sigterm_while_models_load_stops_at_once_and_exits_0(tiny_package: Path) -> None:
    config = server_config(blocks_model(tiny_package), workers=2, metrics_port=0)
    gate, entered, info = SPAWN.Event(), SPAWN.Queue(), SPAWN.Queue()
    factory = workers_harness.GatedFactory(gate, entered, hold_start=True)
    process = SPAWN.Process(target=workers_harness.run_supervisor, args=(config, factory, info))
    process.start()
    try:
        engine_pid = -await asyncio.to_thread(entered.get, True, START_S)  # stuck loading
        os.kill(process.pid, signal.SIGTERM)
        await asyncio.to_thread(process.join, WAIT_S * 3)
        assert process.exitcode == 0
        assert not _alive(engine_pid) and info.empty()
    finally:
        if process.is_alive():
            process.kill()


async def test_one_metrics_endpoint_counts_every_worker(supervised: Callable[..., Any]) -> None:
    run: Supervised = await supervised(gated=False)
    replies = await asyncio.gather(*(run.stub().Detect(request_for(GOOD), timeout=WAIT_S)
                                     for _ in range(12)))
    assert all(boxes_of(r) == GOOD_BOXES for r in replies)
    text = await run.until_metric(
        lambda t: metric(t, "detserve_requests_total", code="OK", model="blocks@64") == 12)
    # Histograms add up across front ends; gauges come from the engine process, one series.
    assert metric(text, "detserve_batch_size_count", model="blocks@64") == 12
    assert metric(text, "detserve_decodes_total", model="blocks@64") == 12
    # Counters nothing has bumped read 0, not absent (they start at 0 in every front end).
    for name in ("detserve_decoded_after_deadline_total", "detserve_expired_before_decode_total"):
        assert f'{name}{{model="blocks@64"}} 0.0' in text, name
    assert metric(text, "detserve_requests_in_server", model="blocks@64") == 0
    assert metric(text, "detserve_workers_connected") == 2
    assert "pid=" not in text


async def test_health_per_worker_and_engine_loss(supervised: Callable[..., Any]) -> None:
    run: Supervised = await supervised(gated=False)
    for _ in range(4):  # several connections: both front ends answer
        channel = grpc.aio.insecure_channel(run.target,
                                            options=[("grpc.use_local_subchannel_pool", 1)])
        run.channels.append(channel)
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="detserve.v1.Detector"), timeout=WAIT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    os.kill(run.info.engine_pid, signal.SIGKILL)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        while True:  # until the front ends have seen the engine go
            await run.stub().Detect(request_for(GOOD), timeout=WAIT_S)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await asyncio.to_thread(run.process.join, START_S)
    assert run.process.exitcode == 1  # the supervisor stopped the front ends and failed
    assert not any(_alive(p) for p in run.info.frontend_pids.values())


def _scene_requests() -> Iterator[pb.DetectRequest]:
    from detserve.client.images import encode_rgb, synthetic_images

    for i, image in enumerate(synthetic_images(6, 640, 480)):
        data = encode_rgb(image, "jpeg")
        yield pb.DetectRequest(image=pb.Image(encoded=data), request_id=f"s{i}")
        yield pb.DetectRequest(image=pb.Image(encoded=data), score_threshold=0.2,
                               max_detections=3, class_ids=[0, 1, 2], request_id=f"p{i}")


async def test_two_workers_serve_the_detections_of_one_process(
    supervised: Callable[..., Any],
) -> None:
    """The served default (OpenVINO INT8 at 320) on real scenes, one request at a time (a batch
    of one each, so the engine runs the same compiled size), as one process and as two front
    ends."""
    from detserve.server.app import start_server
    from detserve.server.config import load_config

    default = load_config(None, {}, {"host": "127.0.0.1", "port": 0, "metrics_port": None,
                                     "log_requests": False, "stream_max_in_flight": 1})
    served = replace(default, models=default.models[:1])
    one = await start_server(served)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{one.port}") as channel:
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            expected = [await stub.Detect(r, timeout=WAIT_S) for r in _scene_requests()]
    finally:
        await one.stop(grace_s=1.0)
    run: Supervised = await supervised(replace(served, workers=2, metrics_port=0),
                                       gated=False)
    got = [await run.stub().Detect(r, timeout=WAIT_S) for r in _scene_requests()]
    assert sum(len(r.detections) for r in expected) > 20
    for want, have in zip(expected, got, strict=True):
        assert list(have.detections) == list(want.detections)
        assert (have.request_id, have.model, have.model_version, have.image_width,
                have.image_height, have.batch_size) == (
            want.request_id, want.model, want.model_version, want.image_width,
            want.image_height, want.batch_size)
    # Frames of one stream come back in order, with the same detections.
    frames = [f async for f in run.stub().DetectStream(iter([
        pb.DetectRequest(image=r.image, frame_id=i + 1) for i, r in enumerate(_scene_requests())
    ]))]
    assert [f.frame_id for f in frames] == list(range(1, len(expected) + 1))
    defaults = expected[::2]  # the calls without parameters; every frame has none
    assert [list(f.detections) for f in frames[::2]] == [list(w.detections) for w in defaults]
    assert [list(f.detections) for f in frames[1::2]] == [list(w.detections) for w in defaults]


def _cli(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "detserve.server.cli", *argv],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def _event(proc: subprocess.Popen[str], name: str) -> dict[str, Any]:
    assert proc.stderr is not None
    for line in proc.stderr:
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == name:
                return record
    raise AssertionError(f"the server ended without logging {name!r}")


def test_cli_workers_flag_serves_and_exits_0_on_sigterm(tmp_path: Path,
                                                        tiny_package: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(f"host: 127.0.0.1\nport: 0\nmetrics_port: null\nlog_requests: false\n"
                      f"models:\n  - package: {tiny_package}\n")
    proc = _cli("--config", str(config), "--workers", "2")
    try:
        listening = _event(proc, "listening")
        assert listening["workers"] == 2 and len(listening["worker_pids"]) == 2
        with grpc.insecure_channel(listening["address"]) as channel:
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            assert boxes_of(stub.Detect(request_for(GOOD), timeout=WAIT_S)) == GOOD_BOXES
        proc.send_signal(signal.SIGTERM)
        _event(proc, "stopped")
        assert proc.wait(timeout=START_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_workers_errors_are_one_clear_line(tmp_path: Path, tiny_package: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "detserve.server.cli", "--workers", "0",
                           "--model", str(tiny_package)],
                          capture_output=True, text=True, timeout=START_S)
    assert done.returncode == 2
    assert "config field 'workers' must be an integer >= 1, got 0" in done.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "detserve.server.cli", "--workers", "2",
                               "--model", str(tiny_package), "--host", "127.0.0.1",
                               "--port", str(port), "--metrics-port", "off"],
                              capture_output=True, text=True, timeout=START_S)
    assert done.returncode == 1
    assert f"could not bind gRPC address '127.0.0.1:{port}' (port in use?)" in done.stderr
    assert "Traceback" not in done.stderr

"""Load modes: closed loop, open loop (constant or Poisson arrivals) and camera streams.

Each level runs a warm-up, then a measurement window bounded by time (`duration_s`) and by
count (`max_requests`). Requests are built once up front and reused, so the client spends its
CPU on gRPC, not on encoding images.

Senders take the stubs given round robin. A server with front-end workers (`--workers N`) shares
its port with SO_REUSEPORT, and the kernel hands each connection to one worker: one channel
would pin every call to one worker, so the runner opens `channels` channels, each with its own
connection (runner.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asyncio_throttle.throttler import Throttler

from detserve.client.bench.recorder import (
    CLIENT_BACKLOG,
    ClientLoad,
    LevelSpec,
    RequestRecord,
)
from detserve.client.bench.schedule import arrival_offsets
from detserve.client.bench.senders import Reply, Sender, StreamSender, UnarySender
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc

MODES = ("closed", "open", "camera")
TRANSPORTS = ("unary", "stream")
# Connections per level: enough that SO_REUSEPORT's hash reaches every worker of a many-worker
# server; a closed loop uses at most one per caller.
DEFAULT_CHANNELS = 16
Progress = Callable[[int], None]
Stubs = pb_grpc.DetectorStub | Sequence[pb_grpc.DetectorStub]
_EDGE_S = 1e-9


@dataclass(frozen=True)
class LoadSettings:
    transport: str = "unary"
    warmup_s: float = 1.0
    duration_s: float = 10.0
    max_requests: int = 1_000_000  # measured requests per level
    timeout_s: float = 10.0  # per-call deadline (unary)
    max_outstanding: int = 10_000  # open loop: beyond this, requests are counted, not sent
    streams: int = 1  # open loop over streams: frames spread round robin over this many
    seed: int = 0
    stream_policy: str | None = None  # DetectStream policy: block, latest; None = server's
    channels: int = DEFAULT_CHANNELS  # connections to spread senders over (runner.py)
    # gRPC policy over the addresses the target resolves to (round_robin: every replica of
    # `ipv4:a:p,b:p` or a headless Service's dns:/// name); None: pick_first.
    load_balancing: str | None = None

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {list(TRANSPORTS)}, "
                             f"got {self.transport!r}")
        if self.warmup_s < 0 or self.duration_s <= 0:
            raise ValueError(f"need warmup_s >= 0 and duration_s > 0, got {self.warmup_s!r} "
                             f"and {self.duration_s!r}")
        if self.stream_policy not in (None, "block", "latest"):
            raise ValueError(f"stream_policy must be block or latest, got {self.stream_policy!r}")
        for name in ("max_requests", "max_outstanding", "streams", "channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")


@dataclass
class LevelRun:
    spec: LevelSpec
    records: list[RequestRecord]
    client: ClientLoad
    offered_window_s: float


class _Run:
    """Shared bookkeeping of one level: clock origin, windows, records, request rotation."""

    def __init__(self, requests: Sequence[pb.DetectRequest], settings: LoadSettings,
                 progress: Progress | None) -> None:
        if not requests:
            raise ValueError("need at least one request payload, got none")
        self.requests = requests
        self.settings = settings
        self.progress = progress
        self.records: list[RequestRecord] = []
        self.measured = 0
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self._next = 0
        # Offset at which max_requests ended the level early (None: it ran its full time).
        self.count_bound_at: float | None = None

    def next_request(self) -> pb.DetectRequest:
        req = self.requests[self._next % len(self.requests)]
        self._next += 1
        return req

    def admit(self, at: float) -> bool | None:
        """Whether a request planned at `at` is measured; None when the level is over."""
        # Compare offsets with a little slack, so a schedule point that lands exactly on a
        # window edge (k / rate == duration) falls on the same side whatever the rounding.
        offset = at - self.t0
        s = self.settings
        if offset >= s.warmup_s + s.duration_s - _EDGE_S:
            return None
        if self.measured >= s.max_requests:
            if self.count_bound_at is None:
                self.count_bound_at = offset
            return None
        if offset < s.warmup_s - _EDGE_S:
            return False
        self.measured += 1
        return True

    def record(self, reply: Reply, scheduled: float, measured: bool, stream: int = -1) -> None:
        r = reply.response
        rec = RequestRecord(
            scheduled_s=scheduled - self.t0, sent_s=reply.sent_s - self.t0,
            done_s=reply.done_s - self.t0, code=reply.code, measured=measured, stream=stream,
        )
        if r is not None:
            t = r.timing
            rec.frame_id, rec.batch_size = int(r.frame_id), int(r.batch_size)
            rec.executed_batch_size = int(r.executed_batch_size)
            rec.queue_ms, rec.preprocess_ms = t.queue_ms, t.preprocess_ms
            rec.inference_ms, rec.postprocess_ms = t.inference_ms, t.postprocess_ms
            rec.server_total_ms, rec.dropped_before = t.total_ms, int(r.dropped_frames)
        self.records.append(rec)
        if self.progress is not None and measured:
            self.progress(1)

    def finish(self, spec: LevelSpec) -> LevelRun:
        wall = time.perf_counter() - self.t0
        client = ClientLoad(wall_s=wall, cpu_s=time.process_time() - self.cpu0)
        return LevelRun(spec, self.records, client, self.offered_window_s())

    def offered_window_s(self) -> float:
        """The planned measurement window, or the part of it used when the count bound hit."""
        if self.count_bound_at is None:
            return self.settings.duration_s
        return max(self.count_bound_at - self.settings.warmup_s, 1e-9)


def _senders(stubs: Stubs, settings: LoadSettings, n: int) -> list[Sender]:
    """`n` senders, sender i on stub i mod the stubs' count."""
    pool = [stubs] if isinstance(stubs, pb_grpc.DetectorStub) else list(stubs)
    if not pool:
        raise ValueError("need at least one stub, got none")
    if settings.transport == "stream":
        return [StreamSender(pool[i % len(pool)], settings.stream_policy) for i in range(n)]
    return [UnarySender(pool[i % len(pool)], settings.timeout_s) for i in range(n)]


def _count(stubs: Stubs) -> int:
    return 1 if isinstance(stubs, pb_grpc.DetectorStub) else len(stubs)


async def _close_all(senders: Sequence[Sender]) -> None:
    await asyncio.gather(*(s.close() for s in senders))


async def run_closed(
    stub: Stubs, requests: Sequence[pb.DetectRequest], concurrency: int,
    settings: LoadSettings, progress: Progress | None = None,
) -> LevelRun:
    """`concurrency` workers, each sending its next request as soon as the last one returns,
    or, after a refusal carrying the server's retry hint (grpc-retry-pushback-ms), once that
    time has passed, as a gRPC retry policy would: retrying at once only feeds a retry storm."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
    run = _Run(requests, settings, progress)
    senders = _senders(stub, settings, concurrency)

    async def worker(index: int) -> None:
        sender = senders[index]
        while True:
            start = time.perf_counter()
            measured = run.admit(start)
            if measured is None:
                return
            reply = await sender.send(run.next_request())
            run.record(reply, start, measured, index if settings.transport == "stream" else -1)
            if reply.retry_after_s > 0:
                await asyncio.sleep(reply.retry_after_s)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    await _close_all(senders)
    spec = LevelSpec("closed", settings.transport, concurrency, concurrency=concurrency,
                     streams=concurrency if settings.transport == "stream" else 0)
    return run.finish(spec)


async def _fire(run: _Run, sender: Sender, req: pb.DetectRequest, scheduled: float,
                measured: bool, stream: int) -> None:
    reply = await sender.send(req)
    run.record(reply, scheduled, measured, stream)


async def run_open(
    stub: Stubs, requests: Sequence[pb.DetectRequest], rate_rps: float,
    arrivals: str, settings: LoadSettings, progress: Progress | None = None,
) -> LevelRun:
    """Requests due at planned times whatever the replies do; latency counts from the plan."""
    run = _Run(requests, settings, progress)
    # Unary calls go round robin over one sender per stub (per connection).
    n_senders = settings.streams if settings.transport == "stream" else _count(stub)
    senders = _senders(stub, settings, n_senders)
    tasks: set[asyncio.Task[None]] = set()
    for i, offset in enumerate(arrival_offsets(rate_rps, arrivals, settings.seed)):
        due = run.t0 + offset
        measured = run.admit(due)
        if measured is None:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= settings.max_outstanding:
            now = time.perf_counter()
            run.record(Reply(CLIENT_BACKLOG, None, now, now), due, measured)
            continue
        stream = i % n_senders if settings.transport == "stream" else -1
        task = asyncio.create_task(
            _fire(run, senders[i % n_senders], run.next_request(), due, measured, stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    await _close_all(senders)
    spec = LevelSpec("open", settings.transport, rate_rps, rate_rps=rate_rps, arrivals=arrivals,
                     streams=n_senders if settings.transport == "stream" else 0)
    return run.finish(spec)


async def run_camera(
    stub: Stubs, requests: Sequence[pb.DetectRequest], cameras: int, fps: float,
    settings: LoadSettings, progress: Progress | None = None,
) -> LevelRun:
    """`cameras` cameras at `fps` each, paced by asyncio-throttle. A frame's latency counts
    from its capture (the throttle's release), so a stream the server holds back shows it."""
    if cameras < 1 or not fps > 0:
        raise ValueError(f"need cameras >= 1 and fps > 0, got {cameras!r} and {fps!r}")
    run = _Run(requests, settings, progress)
    senders = _senders(stub, settings, cameras)
    period = 1.0 / fps

    async def camera(index: int) -> None:
        throttle = Throttler(rate_limit=1, period=period, retry_interval=min(0.001, period / 10))
        tasks: list[asyncio.Task[None]] = []
        # Stagger the cameras over one frame period, as independent cameras would be.
        await asyncio.sleep(period * index / cameras)
        while True:
            await throttle.acquire()  # type: ignore[no-untyped-call]
            captured = time.perf_counter()
            measured = run.admit(captured)
            if measured is None:
                break
            req = run.requests[(index + len(tasks)) % len(run.requests)]
            tasks.append(asyncio.create_task(
                _fire(run, senders[index], req, captured, measured, index)))
        await asyncio.gather(*tasks)

    await asyncio.gather(*(camera(i) for i in range(cameras)))
    await _close_all(senders)
    spec = LevelSpec("camera", settings.transport, cameras, cameras=cameras, fps=fps,
                     streams=cameras if settings.transport == "stream" else 0)
    return run.finish(spec)

"""The engine process's side of the front-end connections.

Each front-end request is a `LocalTicket` of the engine's own `LocalLane` here, driven by the
messages of ipc.py: ADMIT runs the same admission and pixel budget as one process does, SUBMIT
puts the canvas (a view of the request's slot) in the batcher, DROP and CANCEL end it early.
For a model whose engine decodes JPEGs on its device (WELCOME names them), SUBMIT may bring an
encoded JPEG instead: its bytes (a view of the slot, or the message's own when they did not
fit) and header facts become the batch item's `DeviceJpeg`, decoded with the rest of the batch;
one the decoder refuses fails only its own request (INVALID_ARGUMENT), as in one process.
So the bounds of server/admission.py (queue size, expected wait, deadlines, pixels in flight)
count every front end's requests together, and a refusal carries the same retry pushback.

When a front end's connection closes (it exited or died), every request it held here is dropped:
queued ones leave the batcher, tickets are released, and its slots go back to its partition,
counted in detserve_worker_slots_freed_total. Replies for it are never written.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import grpc

from detserve.engines.base import DecodeParams, Letterbox
from detserve.engines.device_jpeg import DeviceJpeg, deferred
from detserve.engines.preprocess import PreparedPixels
from detserve.server.admission import Rejected
from detserve.server.catalog import ModelEntry
from detserve.server.decode_pool import DecodeOutcome
from detserve.server.errors import RequestError, to_request_error
from detserve.server.lanes import LocalLane, LocalTicket
from detserve.server.logs import get_logger
from detserve.server.observe import RequestObserver
from detserve.server.registry import ModelRegistry, ServedModel
from detserve.server.workers import ipc
from detserve.server.workers.mp_metrics import WorkerMetrics
from detserve.server.workers.slots import Partition, Segment, SlotLayout, write_rows


@dataclass(eq=False)
class _Request:
    model: ServedModel
    ticket: LocalTicket | None = None  # None until admitted
    slot: int | None = None
    task: asyncio.Task[None] | None = None  # a waiting admission, or the batch submission
    submitted: bool = False


@dataclass(eq=False)
class _Conn:
    stream: ipc.MessageStream | None = None
    index: int | None = None  # the front end's, after HELLO
    requests: dict[int, _Request] = field(default_factory=dict)
    lost: bool = False


@dataclass(frozen=True)
class _Held:
    """What a submitted request runs with: its front end's segment, its slot and ticket."""

    segment: Segment
    slot: int
    ticket: LocalTicket


def _decoded(decode_s: float | None) -> DecodeOutcome:
    return DecodeOutcome(decoded=decode_s is not None, decode_s=decode_s or 0.0)


def _prepared(held: _Held, model: ServedModel, letterbox: Letterbox,
              jpeg: ipc.JpegWire | None) -> PreparedPixels:
    """What the batcher gets: views of the request's slot, pixels or an encoded JPEG."""
    if jpeg is None:
        manifest = model.manifest
        canvas = held.segment.image(held.slot, manifest.input_height, manifest.input_width)
        return PreparedPixels(canvas, letterbox)
    size, stored, orientation, resized, offset, inline = jpeg
    data = held.segment.encoded(held.slot, size) if inline is None else inline
    return deferred(DeviceJpeg(data, stored, orientation, resized, offset, letterbox))


class EngineHub:
    def __init__(self, registry: ModelRegistry, lane: LocalLane, segments: list[Segment],
                 layout: SlotLayout, observer: RequestObserver, metrics: WorkerMetrics) -> None:
        self.registry = registry
        self.lane = lane
        self.segments = segments
        self.layout = layout
        self.partitions = [Partition(layout.slots) for _ in segments]
        # Each front end's series, looked up once: label look-ups were a tenth of this
        # process's event-loop time per request.
        self._in_use = [metrics.slots_in_use.labels(str(i)) for i in range(len(segments))]
        self._brought = [metrics.requests.labels(str(i)) for i in range(len(segments))]
        self._jpegs = {via: [metrics.encoded_jpegs.labels(str(i), via)
                             for i in range(len(segments))] for via in ("slot", "message")}
        self.observer = observer
        self.metrics = metrics
        self.stopping = False
        self.connections: dict[int, _Conn] = {}
        self.idle = asyncio.Event()  # no front end connected
        self.idle.set()
        self._entries = [ModelEntry.of(m) for m in registry.models.values()]
        self._jpeg_models = frozenset(k for k, m in registry.models.items()
                                      if m.pool.decodes_jpeg)
        self._log = get_logger("detserve.server.workers")

    def new_stream(self) -> ipc.MessageStream:
        """The protocol of one accepted connection (loop.create_unix_server's factory)."""
        conn = _Conn()
        stream = ipc.MessageStream(lambda m: self._on_message(conn, m),
                                   lambda exc: self._on_lost(conn, exc))
        conn.stream = stream
        return stream

    def close_all(self) -> None:
        for conn in list(self.connections.values()):
            if conn.stream is not None:
                conn.stream.close()

    # -- messages ------------------------------------------------------------------------

    def _on_message(self, conn: _Conn, message: ipc.Message) -> None:
        kind = message[0]
        if kind == ipc.ADMIT:
            self._admit(conn, *message[1:])
        elif kind == ipc.SUBMIT:
            self._submit(conn, *message[1:])
        elif kind == ipc.DROP:
            self._drop(conn, *message[1:])
        elif kind == ipc.CANCEL:
            request = conn.requests.get(message[1])
            if request is not None and request.task is not None:
                request.task.cancel()
        elif kind == ipc.HELLO:
            self._hello(conn, *message[1:])
        else:
            raise ipc.ProtocolError(f"unknown message {kind!r}")

    def _hello(self, conn: _Conn, index: int, pid: int) -> None:
        if not 0 <= index < len(self.segments) or conn.index is not None:
            raise ipc.ProtocolError(f"HELLO from front end {index!r} (pid {pid})")
        old = self.connections.get(index)
        if old is not None and old.stream is not None:  # its EOF is still on the way
            old.stream.close()
            self._on_lost(old, None)
        conn.index = index
        self.connections[index] = conn
        self.idle.clear()
        self.metrics.connected.set(len(self.connections))
        self._log.info("worker_connected", worker=index, pid=pid)
        self._send(conn, (ipc.WELCOME, self._entries, self.segments[index].name, self.layout,
                          self._jpeg_models))

    def _admit(self, conn: _Conn, tid: int, key: str, deadline: float | None, held: bool,
               pixels: int) -> None:
        if conn.index is None:
            raise ipc.ProtocolError("ADMIT before HELLO")
        self._brought[conn.index].inc()
        model = self.registry.models.get(key)
        if model is None:
            self._refuse(conn, tid, RequestError(grpc.StatusCode.NOT_FOUND,
                                                 f"unknown model {key!r}"))
            return
        if self.stopping:
            self._refuse(conn, tid, RequestError(grpc.StatusCode.UNAVAILABLE,
                                                 "server is shutting down (draining)"), model)
            return
        request = _Request(model)
        if not held:
            try:
                request.ticket = self.lane.admit_now(model, deadline, pixels)
            except RequestError as exc:
                self._refuse(conn, tid, exc, model)
                return
            conn.requests[tid] = request
            request.slot = self.partitions[conn.index].try_take()
            if request.slot is not None:
                self._admitted(conn, conn.index, tid, request.slot, request.ticket)
                return
        conn.requests[tid] = request
        request.task = asyncio.create_task(self._admit_waiting(conn, conn.index, tid, request,
                                                               deadline, pixels))

    async def _admit_waiting(self, conn: _Conn, index: int, tid: int, request: _Request,
                             deadline: float | None, pixels: int) -> None:
        """A stream frame waiting for the pixel budget (it has no ticket yet), or any request
        for a free slot (`index`: its front end's, which sent HELLO before it could ADMIT)."""
        try:
            ticket = request.ticket
            if ticket is None:
                ticket = request.ticket = await self.lane.admit_held(request.model, deadline,
                                                                     pixels)
            slot = request.slot = await self.partitions[index].take()
        except asyncio.CancelledError:  # DROP, or the front end is gone
            self._end(conn, tid, request)
            return
        except RequestError as exc:
            self._end(conn, tid, request)
            self._refuse(conn, tid, exc, request.model)
            return
        request.task = None
        self._admitted(conn, index, tid, slot, ticket)

    def _admitted(self, conn: _Conn, index: int, tid: int, slot: int,
                  ticket: LocalTicket) -> None:
        self._slots_changed(index)
        self._send(conn, (ipc.ADMITTED, tid, slot, ticket.expected_decode_s))

    def _submit(self, conn: _Conn, tid: int,
                letterbox: tuple[float, float, float, float, int, int],
                params: tuple[float, float, int, tuple[int, ...] | None],
                deadline: float | None, decode_s: float | None,
                jpeg: ipc.JpegWire | None) -> None:
        request = conn.requests.get(tid)
        if request is None or request.ticket is None or request.slot is None or conn.index is None:
            raise ipc.ProtocolError(f"SUBMIT for request {tid}, which holds no slot")
        if jpeg is not None:
            self._check_jpeg(conn.index, request.model, jpeg)
        held = _Held(self.segments[conn.index], request.slot, request.ticket)
        held.ticket.decoded(_decoded(decode_s))
        held.ticket.decode_finished()
        request.submitted = True
        score, iou, top, classes = params
        decode = DecodeParams(score, iou, top, None if classes is None else frozenset(classes))
        request.task = asyncio.create_task(self._run(conn, tid, request, held,
                                                     Letterbox(*letterbox), jpeg, decode,
                                                     deadline))

    def _check_jpeg(self, index: int, model: ServedModel, jpeg: ipc.JpegWire) -> None:
        """Only a model named in WELCOME takes JPEGs, and bytes not inline are in the slot."""
        size, inline = jpeg[0], jpeg[5]
        if model.key not in self._jpeg_models:
            raise ipc.ProtocolError(f"SUBMIT of an encoded JPEG for model {model.key}, whose "
                                    f"engine decodes on the host")
        if inline is None and size > self.layout.image_bytes:
            raise ipc.ProtocolError(f"SUBMIT of a {size}-byte JPEG in a slot of "
                                    f"{self.layout.image_bytes}")
        self._jpegs["slot" if inline is None else "message"][index].inc()

    async def _run(self, conn: _Conn, tid: int, request: _Request, held: _Held,
                   letterbox: Letterbox, jpeg: ipc.JpegWire | None, params: DecodeParams,
                   deadline: float | None) -> None:
        segment, slot = held.segment, held.slot
        try:
            prepared = _prepared(held, request.model, letterbox, jpeg)
            outcome = await held.ticket.submit(prepared, params, deadline)
        except asyncio.CancelledError:  # CANCEL, or the front end is gone: nobody to answer
            pass
        except Exception as exc:
            error = to_request_error(exc)
            self._send(conn, (ipc.FAILED, tid, error.code.name, error.message))
        else:
            result = outcome.value
            rows, overflow = write_rows(segment.reply(slot), result.detections)
            self._send(conn, (ipc.RESULT, tid, rows, overflow, outcome.batch_size,
                              result.executed_batch_size, outcome.queue_s, outcome.run_s,
                              result.inference_s, result.postprocess_s))
        finally:
            self._end(conn, tid, request)

    def _drop(self, conn: _Conn, tid: int, decode_s: float | None) -> None:
        request = conn.requests.get(tid)
        if request is None:
            return  # refused, or already ended
        if request.task is not None:
            request.task.cancel()  # its own handler ends it
            return
        if request.ticket is not None:
            request.ticket.decoded(_decoded(decode_s))
        self._end(conn, tid, request)

    # -- endings -------------------------------------------------------------------------

    def _end(self, conn: _Conn, tid: int, request: _Request) -> None:
        """Give back everything `request` holds, once."""
        if conn.requests.get(tid) is request:
            del conn.requests[tid]
        ticket, request.ticket = request.ticket, None
        if ticket is not None:
            if not request.submitted:  # still counted in the decode stage
                ticket.decode_finished()
            ticket.release()
        if request.slot is not None and conn.index is not None:
            self.partitions[conn.index].give(request.slot)
            request.slot = None
            self._slots_changed(conn.index)
        self.observer.model_state(request.model)

    def _on_lost(self, conn: _Conn, exc: Exception | None) -> None:
        if conn.lost:
            return
        conn.lost = True
        if conn.index is not None and self.connections.get(conn.index) is conn:
            del self.connections[conn.index]
            self.metrics.connected.set(len(self.connections))
            if not self.connections:
                self.idle.set()
        held = sum(r.slot is not None for r in conn.requests.values())
        dropped = len(conn.requests)
        for tid, request in list(conn.requests.items()):
            if request.task is not None:
                request.task.cancel()
            else:
                self._end(conn, tid, request)
        if conn.index is None:
            return
        if held:
            self.metrics.slots_freed.labels(str(conn.index)).inc(held)
        log = self._log.warning if held or exc is not None else self._log.info
        log("worker_disconnected", worker=conn.index, requests_dropped=dropped,
            slots_freed=held, error=None if exc is None else repr(exc))

    def _refuse(self, conn: _Conn, tid: int, error: RequestError,
                model: ServedModel | None = None) -> None:
        if isinstance(error, Rejected):
            reason, retry = error.reason, error.retry_after_s
        else:
            reason, retry = "", None
        self._send(conn, (ipc.REFUSED, tid, error.code.name, error.message, reason, retry))
        if model is not None:
            self.observer.model_state(model)

    def _slots_changed(self, index: int) -> None:
        self._in_use[index].set(self.partitions[index].in_use)

    @staticmethod
    def _send(conn: _Conn, message: ipc.Message) -> None:
        if conn.stream is not None:
            with contextlib.suppress(ConnectionError):
                conn.stream.send(message)

"""A front end's `Lane`: admission and the batch queue live in the engine process.

`RemoteLane.admit` is one round trip (ADMIT -> ADMITTED with a slot, or REFUSED with the same
status, reason and retry pushback a single process would give). The ticket's `place` writes
the letterboxed canvas into that slot on the decode thread, or, for a model whose engine
decodes JPEGs on its device (WELCOME names them), the JPEG's encoded bytes; `submit` sends
SUBMIT (with the JPEG's header facts, and its bytes when they are larger than the slot) and
builds the result from the slot's reply region. A request that ends before SUBMIT sends DROP,
but only once the decode thread is done with the slot (a caller may leave mid-decode); one
cancelled after SUBMIT sends CANCEL. If the connection to the engine process is lost, every request
waiting on it fails with UNAVAILABLE, and so does every new one.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from detserve.engines.base import DecodeParams
from detserve.engines.device_jpeg import DeviceJpeg, device_jpeg_of
from detserve.engines.preprocess import PreparedPixels
from detserve.server.admission import Rejected
from detserve.server.batcher import BatchOutcome
from detserve.server.catalog import ModelEntry, ModelView
from detserve.server.decode_pool import DecodeOutcome
from detserve.server.errors import RequestError
from detserve.server.registry import ItemResult
from detserve.server.workers import ipc
from detserve.server.workers.slots import Segment, SlotLayout, read_rows

ENGINE_LOST = ("the engine process is unavailable (connection lost); the server is restarting "
               "or shutting down: retry")
# A JPEG beyond its slot goes inside SUBMIT; this leaves the rest of the message room below
# the receiver's bound. Only a max_message_bytes configured above it can bring a larger one.
MAX_INLINE_JPEG_BYTES = ipc.MAX_MESSAGE_BYTES - 1024 * 1024


def _unavailable() -> RequestError:
    return RequestError(grpc.StatusCode.UNAVAILABLE, ENGINE_LOST)


@dataclass(frozen=True)
class Welcome:
    entries: Sequence[ModelEntry]
    segment: str  # shared memory name of this front end's slots
    layout: SlotLayout
    jpeg_models: frozenset[str]  # keys of the models whose engines decode JPEGs on the device


class EngineLink:
    """The connection to the engine process; replies are matched to requests by id."""

    def __init__(self) -> None:
        self.stream = ipc.MessageStream(self._on_message, self._on_lost)
        self._waiting: dict[int, asyncio.Future[ipc.Message]] = {}
        self._welcome: asyncio.Future[ipc.Message] = asyncio.get_running_loop().create_future()
        self._ids = itertools.count(1)
        self._on_lost_callbacks: list[Callable[[], None]] = []
        self.lost = False

    @classmethod
    async def connect(cls, path: str, index: int, pid: int,
                      timeout_s: float = 30.0) -> tuple[EngineLink, Welcome]:
        link = cls()
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.create_unix_connection(lambda: link.stream, path), timeout_s)
        link.stream.send((ipc.HELLO, index, pid))
        message = await asyncio.wait_for(link._welcome, timeout_s)
        _, entries, segment, layout, jpeg_models = message
        return link, Welcome(entries, segment, layout, frozenset(jpeg_models))

    def on_lost(self, callback: Callable[[], None]) -> None:
        self._on_lost_callbacks.append(callback)

    def new_id(self) -> int:
        return next(self._ids)

    def ask(self, tid: int, message: ipc.Message) -> asyncio.Future[ipc.Message]:
        """Send `message`; the future gets the reply for `tid` (or UNAVAILABLE)."""
        if self.lost:
            raise _unavailable()
        future: asyncio.Future[ipc.Message] = asyncio.get_running_loop().create_future()
        self._waiting[tid] = future
        self.stream.send(message)
        return future

    def tell(self, message: ipc.Message) -> None:
        """Send `message`; no reply comes."""
        self.stream.send(message)

    def forget(self, tid: int) -> None:
        self._waiting.pop(tid, None)

    def close(self) -> None:
        self.stream.close()

    def _on_message(self, message: ipc.Message) -> None:
        if message[0] == ipc.WELCOME:
            if not self._welcome.done():
                self._welcome.set_result(message)
            return
        future = self._waiting.pop(message[1], None)
        if future is not None and not future.done():
            future.set_result(message)

    def _on_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self._welcome.done():
            self._welcome.set_exception(ConnectionError(f"engine process closed the "
                                                        f"connection: {exc!r}"))
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(_unavailable())
        for callback in self._on_lost_callbacks:
            callback()


def _refusal(message: ipc.Message) -> RequestError:
    _, _, code, text, reason, retry_s = message
    if reason:
        return Rejected(grpc.StatusCode[code], reason, text, retry_s)
    return RequestError(grpc.StatusCode[code], text)


def _jpeg_wire(jpeg: DeviceJpeg, room: int) -> ipc.JpegWire:
    size = len(jpeg.data)
    inline = bytes(jpeg.data) if size > room else None
    return size, jpeg.stored_size, jpeg.orientation, jpeg.resized, jpeg.offset, inline


def _too_large(jpeg: DeviceJpeg) -> RequestError:
    return RequestError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"JPEG image of {len(jpeg.data)} bytes is above the {MAX_INLINE_JPEG_BYTES} bytes a "
        f"front-end worker can hand to the engine process for decoding on its device; send a "
        f"smaller JPEG (or a PNG, which is decoded on the host)")


class RemoteTicket:
    def __init__(self, link: EngineLink, segment: Segment, model: ModelView, tid: int,
                 slot: int, expected_decode_s: float, decodes_jpeg: bool = False) -> None:
        self._link = link
        self._segment = segment
        self._model = model
        self._tid = tid
        self._slot = slot
        self._expected_decode_s = expected_decode_s
        self._decodes_jpeg = decodes_jpeg
        self._decode_s: float | None = None
        self._finished = False  # the decode thread is done with the slot
        self._submitted = False
        self._released = False

    @property
    def expected_decode_s(self) -> float:
        return self._expected_decode_s

    @property
    def decodes_jpeg(self) -> bool:
        return self._decodes_jpeg

    def place(self, prepared: PreparedPixels) -> PreparedPixels:
        jpeg = device_jpeg_of(prepared)
        if jpeg is not None:
            size = len(jpeg.data)
            if size > MAX_INLINE_JPEG_BYTES:
                raise _too_large(jpeg)
            if size <= self._segment.layout.image_bytes:  # else it goes inside SUBMIT
                self._segment.encoded(self._slot, size)[:] = jpeg.data
            return prepared
        height, width = prepared.pixels.shape[:2]
        canvas = self._segment.image(self._slot, height, width)
        np.copyto(canvas, prepared.pixels)
        return PreparedPixels(canvas, prepared.letterbox)

    def decoded(self, outcome: DecodeOutcome) -> None:
        self._decode_s = outcome.decode_s if outcome.decoded else None

    def decode_finished(self) -> None:
        self._finished = True
        if self._released and not self._submitted:
            self._drop()

    async def submit(self, prepared: PreparedPixels, params: DecodeParams,
                     deadline: float | None) -> BatchOutcome[ItemResult]:
        self._submitted = True
        b = prepared.letterbox
        letterbox = (b.scale_x, b.scale_y, b.pad_x, b.pad_y, b.orig_width, b.orig_height)
        classes = None if params.class_ids is None else tuple(sorted(params.class_ids))
        wire = (params.score_threshold, params.iou_threshold, params.max_detections, classes)
        jpeg = device_jpeg_of(prepared)
        encoded = None if jpeg is None else _jpeg_wire(jpeg, self._segment.layout.image_bytes)
        future = self._link.ask(self._tid, (ipc.SUBMIT, self._tid, letterbox, wire, deadline,
                                            self._decode_s, encoded))
        try:
            reply = await future
        except asyncio.CancelledError:
            self._link.forget(self._tid)
            self._link.tell((ipc.CANCEL, self._tid))
            raise
        if reply[0] == ipc.FAILED:
            raise RequestError(grpc.StatusCode[reply[2]], reply[3])
        _, _, rows, overflow, batch_size, executed, queue_s, run_s, infer_s, post_s = reply
        # Copied out now: the engine hands this slot out again once it has answered.
        detections = read_rows(self._segment.reply(self._slot), rows, overflow)
        return BatchOutcome(ItemResult(detections, infer_s, post_s, executed), queue_s,
                            batch_size, run_s)

    def release(self) -> None:
        self._released = True
        if not self._submitted and self._finished:
            self._drop()

    def _drop(self) -> None:
        if not self._link.lost:
            self._link.tell((ipc.DROP, self._tid, self._decode_s))


class RemoteLane:
    def __init__(self, link: EngineLink, segment: Segment,
                 jpeg_models: frozenset[str] = frozenset()) -> None:
        self.link = link
        self.segment = segment
        self.jpeg_models = jpeg_models  # Welcome.jpeg_models

    async def admit(self, model: ModelView, deadline: float | None, held: bool,
                    pixels: int) -> RemoteTicket:
        tid = self.link.new_id()
        future = self.link.ask(tid, (ipc.ADMIT, tid, model.key, deadline, held, pixels))
        try:
            reply = await future
        except asyncio.CancelledError:
            self.link.forget(tid)
            if not self.link.lost:
                self.link.tell((ipc.DROP, tid, None))
            raise
        if reply[0] == ipc.REFUSED:
            raise _refusal(reply)
        _, _, slot, expected_decode_s = reply
        return RemoteTicket(self.link, self.segment, model, tid, slot, expected_decode_s,
                            model.key in self.jpeg_models)

    async def close(self, drain: bool = True) -> None:
        self.link.close()
        self.segment.close()

"""Shared-memory slots: where a front end puts a letterboxed canvas for the engine process, and
where the engine process puts the detection rows of the answer.

One segment (multiprocessing.shared_memory) per front end: its partition. The engine process
creates them, and it alone hands a partition's slots out (ADMITTED names the slot) and takes
them back (when it sends RESULT or FAILED, on DROP or CANCEL, or, all at once, when that front
end's connection closes), so there is no allocator shared between processes. A slot holds the
image region, sized for the largest model input (uint8 [H, W, 3]; for a model whose engine
decodes JPEGs on its device, the encoded JPEG instead when it fits), then the reply region: up to
`reply_rows` rows of float64 x1, y1, x2, y2, score, class_id (float32 boxes and scores and
int64 class ids read back exactly). An answer with more rows sends the rest inline.
Free slots are handed out last-in first-out, so the pages a partition touches stay few.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import numpy.typing as npt

from detserve.engines.detections import Detections
from detserve.server.catalog import ModelView

ROW_FIELDS = 6  # x1, y1, x2, y2, score, class_id
ROW_BYTES = ROW_FIELDS * 8
MIN_SLOTS = 32
_ALIGN = 64  # each slot starts on a cache line
SHM_DIR = "/dev/shm"

Overflow = tuple[npt.NDArray[np.float64], ...] | None


@dataclass(frozen=True)
class SlotLayout:
    slots: int  # per front end
    image_bytes: int
    reply_rows: int

    @property
    def slot_bytes(self) -> int:
        raw = self.image_bytes + self.reply_rows * ROW_BYTES
        return -(-raw // _ALIGN) * _ALIGN

    @property
    def segment_bytes(self) -> int:
        return self.slots * self.slot_bytes


def layout_for(models: Sequence[ModelView], decode_threads: int) -> SlotLayout:
    """Slots per front end: two full rounds of the largest batching (one batch in each engine,
    one forming) plus the front end's own decodes, at least MIN_SLOTS. Batches form across
    front ends, so one front end rarely needs more; when it does, admission waits for a slot
    (counted as decoding, so the wait bounds see it)."""
    image = max(m.manifest.input_width * m.manifest.input_height * 3 for m in models)
    rows = max(m.manifest.postprocess.max_detections for m in models)
    round_ = max(m.config.batching.max_batch_size * m.config.batching.instances for m in models)
    return SlotLayout(max(MIN_SLOTS, 2 * round_ + decode_threads), image, rows)


def check_room(layout: SlotLayout, workers: int, shm_dir: str = SHM_DIR) -> None:
    """Refuse to start when the segments cannot fit where POSIX shared memory lives: touching
    a page past the filesystem's size kills the process (SIGBUS) instead of failing cleanly."""
    try:
        stat = os.statvfs(shm_dir)
    except OSError:
        return  # no such filesystem to check here (not Linux)
    free = stat.f_bavail * stat.f_frsize
    need = layout.segment_bytes * workers
    if need > free:
        raise OSError(
            f"workers: {workers} front ends need {need / 1e6:.0f} MB of shared memory "
            f"({layout.slots} slots of {layout.slot_bytes / 1e6:.2f} MB each), but {shm_dir} "
            f"has {free / 1e6:.0f} MB free; run fewer workers or give the container more "
            f"shared memory (docker run --shm-size)"
        )


class Segment:
    """One front end's slots, mapped into this process."""

    def __init__(self, shm: shared_memory.SharedMemory, layout: SlotLayout) -> None:
        if shm.size < layout.segment_bytes:
            raise ValueError(f"shared memory {shm.name} holds {shm.size} bytes, the layout "
                             f"needs {layout.segment_bytes}")
        self.shm = shm
        self.layout = layout
        self._slots: npt.NDArray[np.uint8] | None = np.ndarray(
            (layout.slots, layout.slot_bytes), np.uint8, buffer=shm.buf)

    @classmethod
    def create(cls, layout: SlotLayout) -> Segment:
        return cls(shared_memory.SharedMemory(create=True, size=layout.segment_bytes), layout)

    @classmethod
    def attach(cls, name: str, layout: SlotLayout) -> Segment:
        return cls(shared_memory.SharedMemory(name=name), layout)

    @property
    def name(self) -> str:
        return self.shm.name

    def _slot(self, slot: int) -> npt.NDArray[np.uint8]:
        if self._slots is None:
            raise RuntimeError(f"shared memory {self.shm.name} is closed")
        row: npt.NDArray[np.uint8] = self._slots[slot]
        return row

    def image(self, slot: int, height: int, width: int) -> npt.NDArray[np.uint8]:
        """The canvas of `slot` as uint8 [height, width, 3] (a view, not a copy)."""
        return self._slot(slot)[: height * width * 3].reshape(height, width, 3)

    def encoded(self, slot: int, size: int) -> memoryview:
        """The first `size` bytes of `slot`'s image region (a view): an encoded JPEG's place."""
        if not 0 <= size <= self.layout.image_bytes:
            raise ValueError(f"{size} encoded bytes do not fit a slot's image region of "
                             f"{self.layout.image_bytes}")
        return self._slot(slot)[:size].data

    def reply(self, slot: int) -> npt.NDArray[np.float64]:
        region = self._slot(slot)[self.layout.image_bytes:
                                  self.layout.image_bytes + self.layout.reply_rows * ROW_BYTES]
        return region.view(np.float64).reshape(self.layout.reply_rows, ROW_FIELDS)

    def close(self) -> None:
        self._slots = None
        with contextlib.suppress(BufferError):  # a view still held elsewhere: the exit unmaps
            self.shm.close()

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.shm.unlink()


def remove_segment(name: str) -> None:
    """Unlink a segment by name, if it still exists."""
    with contextlib.suppress(FileNotFoundError):
        shared_memory.SharedMemory(name=name).unlink()


def write_rows(reply: npt.NDArray[np.float64], dets: Detections) -> tuple[int, Overflow]:
    """Detections into a reply region; what does not fit comes back to go inline."""
    n = len(dets)
    fit = min(n, reply.shape[0])
    reply[:fit, :4] = dets.boxes[:fit]
    reply[:fit, 4] = dets.scores[:fit]
    reply[:fit, 5] = dets.class_ids[:fit]
    if fit == n:
        return n, None
    return n, (dets.boxes[fit:].astype(np.float64), dets.scores[fit:].astype(np.float64),
               dets.class_ids[fit:].astype(np.float64))


def read_rows(reply: npt.NDArray[np.float64], count: int, overflow: Overflow) -> Detections:
    """The detections `write_rows` stored (copied out: the slot is reused at once)."""
    rows = reply[: min(count, reply.shape[0])]
    boxes, scores, classes = rows[:, :4], rows[:, 4], rows[:, 5]
    if overflow is not None:
        boxes = np.concatenate([boxes, overflow[0]])
        scores = np.concatenate([scores, overflow[1]])
        classes = np.concatenate([classes, overflow[2]])
    return Detections(boxes.astype(np.float32), scores.astype(np.float32),
                      classes.astype(np.int64))


class Partition:
    """The engine process's book of one front end's slots."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._free = list(range(slots - 1, -1, -1))  # pop() takes slot 0 first
        self._waiters: collections.deque[asyncio.Future[int]] = collections.deque()

    @property
    def in_use(self) -> int:
        return self.slots - len(self._free)

    async def take(self) -> int:
        """A free slot, waiting in arrival order for one when none is."""
        if self._free and not self._waiters:
            return self._free.pop()
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give(waiter.result())  # granted just as its caller left
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def try_take(self) -> int | None:
        return self._free.pop() if self._free and not self._waiters else None

    def give(self, slot: int) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._free.append(slot)


def describe(layout: SlotLayout) -> dict[str, Any]:
    return {"slots_per_worker": layout.slots, "slot_mb": round(layout.slot_bytes / 1e6, 3),
            "reply_rows": layout.reply_rows}

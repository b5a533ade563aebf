"""Reading a DetectStream's frames one at a time, until the client half-closes or the drain stops
the stream, and counting what the drain left unread.

A read is a task (it races the drain's `stopping` event). No read outlives the reader: one the
caller's cancellation interrupts is cancelled and awaited there; one the drain interrupts is kept
for `count_unread`, and `close` ends it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from detserve.server.wire import Incoming

# After the drain stops a stream: frames the client already sent sit in gRPC's buffers and read
# at once, so a pause this long means the rest has not been sent yet.
UNREAD_IDLE_S = 0.05
UNREAD_MAX_S = 1.0  # a camera that keeps sending is counted this long, then cut


async def _settle(read: asyncio.Future[Incoming | None], timeout_s: float | None) -> bool:
    """Wait for `read` up to `timeout_s`; cancelled (and awaited) if it is not done by then, or
    if the caller is cancelled meanwhile. True when it finished."""
    try:
        done, _ = await asyncio.wait((read,), timeout=timeout_s)
    except asyncio.CancelledError:
        read.cancel()
        await asyncio.wait((read,))
        raise
    if done:
        return True
    read.cancel()
    await asyncio.wait((read,))
    return False


class FrameReader:
    def __init__(self, requests: AsyncIterator[Incoming], stopping: asyncio.Event) -> None:
        self.requests = requests
        self.stopping = stopping
        self.stopped = False  # the drain ended the reading, not the client
        self.ended = False  # the client half-closed: no frame is left to read
        self._pending: asyncio.Future[Incoming | None] | None = None

    def _read(self) -> asyncio.Future[Incoming | None]:
        read, self._pending = self._pending, None
        return read if read is not None else asyncio.ensure_future(anext(self.requests, None))

    async def next_frame(self) -> Incoming | None:
        """The next frame, or None at the end of the stream or once the server is draining."""
        if self.stopping.is_set():
            self.stopped = True
            return None
        read = self._read()
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait((read, stop), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            read.cancel()
            await asyncio.wait((read,))
            raise
        finally:
            stop.cancel()
        if not read.done():
            self._pending, self.stopped = read, True
            return None
        frame = read.result()
        self.ended = frame is None
        return frame

    async def count_unread(self) -> int:
        """Once stopped: read, without processing, what the client sent until it half-closes,
        pauses UNREAD_IDLE_S or UNREAD_MAX_S passes; how many frames that was."""
        count = 0
        deadline = time.monotonic() + UNREAD_MAX_S
        while not self.ended and (left := deadline - time.monotonic()) > 0:
            read = self._read()
            if not await _settle(read, min(UNREAD_IDLE_S, left)):
                break
            if read.cancelled() or read.exception() is not None:
                break  # the call itself is ending; what was read is the count
            if read.result() is None:
                self.ended = True
            else:
                count += 1
        return count

    async def close(self) -> None:
        """End a read the drain interrupted."""
        read, self._pending = self._pending, None
        if read is not None:
            await _settle(read, 0)

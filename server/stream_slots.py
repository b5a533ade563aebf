"""Frame slots shared by every open stream: the server holds at most `capacity` stream frames.

Each stream may hold up to its own `stream_max_in_flight`, but 200 cameras x 4 frames would pass
any model's queue bound and turn into per-frame RESOURCE_EXHAUSTED (issue 12). Instead a stream
takes a slot before it reads its next frame; when none is free it stops reading, and gRPC flow
control pushes back on that camera. Waiters are served in arrival order and each stream waits
for one slot at a time, so a free slot goes to the stream that has waited longest: streams share
the slots round robin, and none starves.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib


class StreamSlots:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"stream_max_frames_held must be >= 1, got {capacity}")
        self.capacity = capacity
        self.held = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if not self._waiters and self.held < self.capacity:
            self.held += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted as the stream went away: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.held -= 1
        while self._waiters and self.held < self.capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.held += 1
                waiter.set_result(None)

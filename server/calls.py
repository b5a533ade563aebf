"""The detection calls in progress, as the drain sees them (service.py keeps one `Calls`).

The drain's last steps (app.Server.stop), so that no caller sees CANCELLED:
- `wait_quiet`: calls gRPC had accepted but this process had not yet picked up when the drain
  began would be cancelled by gRPC's stop; they are let in (and refused with UNAVAILABLE) until
  no call has arrived for a moment.
- `cut`: calls still running when drain_grace_s is over end with UNAVAILABLE, not with the
  CANCELLED that gRPC's stop would give them.
"""

from __future__ import annotations

import asyncio
import time


class Calls:
    def __init__(self) -> None:
        self.active = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.last_arrival = time.monotonic()
        self.cut_reason: str | None = None  # set by `cut`: why the calls it ends were ended
        self._tasks: set[asyncio.Task[object]] = set()

    def enter(self) -> None:
        self.active += 1
        self.idle.clear()
        self.last_arrival = time.monotonic()
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)

    def leave(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.discard(task)
        self.active -= 1
        if not self.active:
            self.idle.set()

    async def wait_quiet(self, quiet_s: float, timeout_s: float) -> None:
        """Until no call is in progress and none arrived for `quiet_s`, or `timeout_s` passed."""
        end = time.monotonic() + timeout_s
        while (now := time.monotonic()) < end:
            since = now - self.last_arrival
            if self.active == 0 and since >= quiet_s:
                return
            await asyncio.sleep(min(max(quiet_s - since, 0.005), end - now))

    def cut(self, reason: str) -> int:
        """End every call in progress with UNAVAILABLE `reason` (their handlers catch the
        cancellation and say so); how many there were."""
        self.cut_reason = reason
        for task in self._tasks:
            task.cancel()
        return len(self._tasks)

    def ended_by_cut(self) -> str | None:
        """In a handler that caught CancelledError: the UNAVAILABLE message when `cut` caused
        it (the cancellation is then taken back), else None (re-raise)."""
        if self.cut_reason is None:
            return None
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return self.cut_reason

"""The decode stage: a thread pool of its own, which never decodes for a caller already gone.

Requests reach it only through admission (admission.py), so its queue is bounded by the models'
`max_queue_size`; the default executor of asyncio.to_thread was unbounded and shared. A request
whose deadline passes while it waits is skipped before any pixel is decoded; one whose decode
finishes after its deadline is counted, because that work was wasted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from detserve.server.batcher import DeadlineExpiredError
from detserve.server.threadnames import DECODE, name_os_thread

T = TypeVar("T")


@dataclass
class DecodeOutcome:
    """What the decode stage did for one request (for its metrics and log line)."""

    decoded: bool = False
    skipped_expired: bool = False
    after_deadline: bool = False
    waited_s: float = 0.0  # in the pool's queue, before a thread took it
    decode_s: float = 0.0  # the work itself


class DecodePool:
    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"decode_threads must be >= 1, got {threads}")
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode",
                                            initializer=name_os_thread, initargs=(DECODE,))

    async def run(self, work: Callable[[], T], deadline: float | None,
                  outcome: DecodeOutcome, on_done: Callable[[], None],
                  expected_s: float = 0.0) -> T:
        """`work()` on a decode thread, unless `deadline` (time.monotonic()) passes before it
        could finish: a thread that would start with less than `expected_s` (the measured
        decode time) left skips the request instead of decoding for nobody.

        `on_done` runs on the event loop once the thread is finished with the request, or once
        it was dropped unstarted: a caller that goes away mid-decode must not hand back the
        pixels its decode still holds.
        """
        loop = asyncio.get_running_loop()
        queued = time.monotonic()

        def guarded() -> T:
            started = time.monotonic()
            outcome.waited_s = started - queued
            if deadline is not None and started + expected_s >= deadline:
                outcome.skipped_expired = True
                raise DeadlineExpiredError(
                    f"deadline left {max(deadline - started, 0) * 1e3:.1f} ms after "
                    f"{outcome.waited_s * 1e3:.1f} ms waiting for a decode thread, and a decode "
                    f"takes {expected_s * 1e3:.1f} ms; the image was not decoded"
                )
            try:
                return work()
            finally:
                done = time.monotonic()
                outcome.decoded = True
                outcome.decode_s = done - started
                outcome.after_deadline = deadline is not None and done > deadline

        future = self._executor.submit(guarded)
        def finished(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop already closed at shutdown
                loop.call_soon_threadsafe(on_done)

        future.add_done_callback(finished)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

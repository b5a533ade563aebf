"""A thread pool whose threads never hold the process at exit.

`concurrent.futures.ThreadPoolExecutor` joins its threads when the interpreter exits, so one
engine run that never returns (a hung GPU driver, a deadlocked runtime) would keep a drained
server from exiting after SIGTERM. The batchers run engines here instead: daemon threads, the
same `Executor` interface, and `shutdown(wait=False)` abandons a run still in progress.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonThreadPool(Executor):
    def __init__(self, workers: int, name: str,
                 initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = ()) -> None:
        if workers < 1:
            raise ValueError(f"a thread pool needs at least one thread, got {workers}")
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._initializer = initializer
        self._initargs = initargs
        self.threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
                        for i in range(workers)]
        for thread in self.threads:
            thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new work after shutdown")
            future: Future[T] = Future()
            self._queue.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        if self._initializer is not None:
            self._initializer(*self._initargs)
        while (item := self._queue.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # the caller's future carries it
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if cancel_futures:
                self._cancel_queued()
            for _ in self.threads:
                self._queue.put(None)
        if wait:
            for thread in self.threads:
                thread.join()

    def _cancel_queued(self) -> None:
        kept: list[_Work | None] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                kept.append(item)
            else:
                item[0].cancel()
        for item in kept:
            self._queue.put(item)

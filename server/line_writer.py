"""Where rendered log lines go: straight into an in-memory stream, or through a writer thread.

A server logs a line per request from its event loop. Written there, a stderr that blocks (a pipe
whose reader stalled, a slow terminal, a full disk) would stall every call. `ThreadedSink` only
appends the line to a bounded buffer under a lock; a daemon thread writes what has gathered, in
one write per batch. When the buffer is full (the stream blocked for a long while) lines are
dropped and counted, and a `log_lines_dropped` line says how many once the stream takes lines
again: memory stays bounded, and the loop never waits on the stream.
"""

from __future__ import annotations

import atexit
import collections
import datetime
import io
import json
import threading
from typing import Protocol, TextIO

MAX_BUFFERED_LINES = 10_000
EXIT_FLUSH_S = 2.0  # at exit, how long lines still buffered may take to be written


class LineSink(Protocol):
    def write_line(self, line: str) -> None: ...

    def flush(self, timeout_s: float) -> bool: ...

    def close(self) -> None: ...


class DirectSink:
    """An in-memory stream (io.StringIO): written at once, it cannot block."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write_line(self, line: str) -> None:
        self.stream.write(line + "\n")

    def flush(self, timeout_s: float) -> bool:
        return True

    def close(self) -> None:
        return None


def _dropped_line(count: int) -> str:
    now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({
        "count": count, "event": "log_lines_dropped", "level": "warning",
        "logger": "detserve.server.logs", "timestamp": now,
        "message": f"{count} log lines were dropped: the log stream took no lines while "
                   f"{MAX_BUFFERED_LINES} waited",
    }) + "\n"  # fmt: skip


class ThreadedSink:
    def __init__(self, stream: TextIO, capacity: int = MAX_BUFFERED_LINES) -> None:
        self.stream = stream
        self.capacity = capacity
        self.dropped = 0  # since the last batch written
        self._lines: collections.deque[str] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False  # the thread is writing a batch
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def write_line(self, line: str) -> None:
        with self._cond:
            if len(self._lines) >= self.capacity:
                self.dropped += 1
                return
            self._lines.append(line)
            self._cond.notify_all()

    def _take(self) -> tuple[list[str], int] | None:
        with self._cond:
            while not self._lines and not self._closing:
                self._cond.wait()
            if not self._lines:
                return None
            batch, dropped = list(self._lines), self.dropped
            self._lines.clear()
            self.dropped = 0
            self._busy = True
            return batch, dropped

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            batch, dropped = taken
            text = "".join(line + "\n" for line in batch)
            if dropped:
                text += _dropped_line(dropped)
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stream: the lines have nowhere to go
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def flush(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._lines and not self._busy, timeout_s)

    def close(self) -> None:
        """Write what is buffered (for at most EXIT_FLUSH_S) and end the thread."""
        self.flush(EXIT_FLUSH_S)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(EXIT_FLUSH_S)


def _has_fd(stream: TextIO) -> bool:
    try:
        stream.fileno()
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return True


_threaded: list[ThreadedSink] = []  # flushed at exit


def sink_for(stream: TextIO) -> LineSink:
    """A writer thread for a stream with a file descriptor (stderr, a pipe, a file)."""
    if not _has_fd(stream):
        return DirectSink(stream)
    sink = ThreadedSink(stream)
    _threaded[:] = [s for s in _threaded if s._thread.is_alive()] + [sink]
    return sink


@atexit.register
def _flush_at_exit() -> None:
    for sink in _threaded:
        sink.flush(EXIT_FLUSH_S)

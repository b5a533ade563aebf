"""A server process's resident memory (VmRSS), sampled in a background thread during a phase.

A thread, not an asyncio task: the load generator's event loop may be too busy to keep a
50 ms beat under overload, which is exactly when the peak matters.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from detserve.client.bench.proccpu import children_of

MB = 1_000_000.0  # reported in MB (10^6 bytes)


def read_rss_bytes(pid: int) -> int | None:
    """VmRSS of `pid` from /proc/<pid>/status; None when unreadable (no /proc, process gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) >= 2 and parts[1].isdigit() else None
    return None


@dataclass(frozen=True)
class RssStats:
    before_mb: float | None
    peak_mb: float | None
    after_mb: float | None
    samples: int

    @property
    def growth_mb(self) -> float | None:
        if self.before_mb is None or self.peak_mb is None:
            return None
        return self.peak_mb - self.before_mb


class RssSampler:
    """`with RssSampler(pid) as s: ...` then `s.stats()`: before (at entry), peak, after (at
    exit); samples every `interval_s` in between. `tree`: the sum over `pid` and its child
    processes (a server with front-end workers; pages they share count once per process)."""

    def __init__(self, pid: int, interval_s: float = 0.05, tree: bool = False) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.tree = tree
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"rss-{pid}")
        self._lock = threading.Lock()
        self._before: int | None = None
        self._after: int | None = None
        self._peak: int | None = None
        self._count = 0

    def _read(self) -> int | None:
        own = read_rss_bytes(self.pid)
        if not self.tree or own is None:
            return own
        return own + sum(read_rss_bytes(k) or 0 for k in children_of(self.pid))

    def _take(self) -> int | None:
        value = self._read()
        if value is not None:
            with self._lock:
                self._peak = value if self._peak is None else max(self._peak, value)
                self._count += 1
        return value

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def __enter__(self) -> RssSampler:
        self._before = self._take()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._after = self._take()

    def stats(self) -> RssStats:
        def mb(v: int | None) -> float | None:
            return None if v is None else v / MB

        with self._lock:
            return RssStats(mb(self._before), mb(self._peak), mb(self._after), self._count)

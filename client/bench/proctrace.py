"""A process's resident memory and CPU time as a time series, sampled in a background thread.

procstat.RssSampler keeps only a phase's peak; a soak needs the curve: does RSS creep up, does
the server's CPU share fall while the machine heats? Each sample holds the server's VmRSS, its
cumulative CPU seconds (utime + stime from /proc/<pid>/stat) and the sampling process's own CPU
seconds (the load generator, which shares the cores on a small machine). A thread, not an
asyncio task, for procstat's reason: a loaded event loop would miss its beat.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from detserve.client.bench.hostload import read_cpu_jiffies
from detserve.client.bench.procstat import MB, read_rss_bytes

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def read_cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` in seconds (all its threads); None when unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    rest = text[text.rfind(")") + 2 :].split()
    if len(rest) < 13:
        return None
    return (int(rest[11]) + int(rest[12])) / _TICKS


@dataclass(frozen=True)
class ProcSample:
    t_s: float  # seconds since the tracer's origin (time.perf_counter based)
    rss_mb: float | None  # the traced process
    cpu_s: float | None  # the traced process, cumulative
    client_cpu_s: float  # the sampling process, cumulative (time.process_time)
    # The whole host's busy CPU seconds (every process; /proc/stat), cumulative: shows when
    # something else on the machine took the cores the server needed.
    host_busy_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def samples_from_json(rows: list[dict[str, Any]]) -> list[ProcSample]:
    return [ProcSample(float(r["t_s"]), r.get("rss_mb"), r.get("cpu_s"),
                       float(r.get("client_cpu_s", 0.0)), r.get("host_busy_s")) for r in rows]


def read_host_busy_seconds() -> float | None:
    """CPU seconds the whole host has been busy (all CPUs, not idle or iowait)."""
    ticks = read_cpu_jiffies()
    if ticks is None:
        return None
    return sum(v for k, v in ticks.items() if k not in ("idle", "iowait")) / _TICKS


class ProcTracer:
    """`with ProcTracer(pid, origin) as t: ...` then `t.samples()`: one sample at entry, one
    every `interval_s`, one at exit. `pid` None traces only the client's own CPU."""

    def __init__(self, pid: int | None, origin: float | None = None,
                 interval_s: float = 1.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.pid = pid
        self.origin = time.perf_counter() if origin is None else origin
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="proctrace")
        self._lock = threading.Lock()
        self._samples: list[ProcSample] = []

    def _take(self) -> None:
        rss = read_rss_bytes(self.pid) if self.pid is not None else None
        cpu = read_cpu_seconds(self.pid) if self.pid is not None else None
        sample = ProcSample(time.perf_counter() - self.origin,
                            None if rss is None else rss / MB, cpu, time.process_time(),
                            read_host_busy_seconds())
        with self._lock:
            self._samples.append(sample)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def latest(self) -> ProcSample | None:
        with self._lock:
            return self._samples[-1] if self._samples else None

    def samples(self) -> list[ProcSample]:
        with self._lock:
            return list(self._samples)

    def __enter__(self) -> ProcTracer:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

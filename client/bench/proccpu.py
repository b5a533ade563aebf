"""CPU time of a server's processes and threads from /proc, split by role: the front end
(gRPC, parsing, decode, replies) and the engine (batch runs and the engine library's threads).

With `--workers N` the roles are processes, told apart by their names (server/threadnames.py,
frontend.py): `ds-engine` is the engine process, `ds-frontend-<i>` a front end, and the
supervisor is the process the benchmark started. In one process the roles are threads: the
engine's are those named `ds-engine` (the thread that built the engines, and the threads the
engine library started from it) and `ds-batch` (the batchers' runs); everything else in the
process (event loop, gRPC's threads, decode threads) is the front end's share. Process totals
come from /proc/<pid>/stat, which keeps the time of threads that have exited.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENGINE_THREADS = ("ds-engine", "ds-batch")
FRONTEND_PREFIX = "ds-frontend-"
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _stat(path: Path) -> tuple[str, list[str]] | None:
    """(comm, the fields after it) of a /proc stat file; None once the process is gone."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.index("("), text.rindex(")")
    return text[start + 1:end], text[end + 2:].split()


def _cpu_s(fields: list[str]) -> float:
    # After the comm: state is field 3, utime field 14 and stime field 15 of proc(5).
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def process_cpu_s(pid: int) -> float:
    stat = _stat(Path(f"/proc/{pid}/stat"))
    return 0.0 if stat is None else _cpu_s(stat[1])


def thread_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """Per live thread id: (its name, its CPU seconds)."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return out
    for tid in tids:
        stat = _stat(Path(f"/proc/{pid}/task/{tid}/stat"))
        if stat is not None:
            out[tid] = (stat[0], _cpu_s(stat[1]))
    return out


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(Path(f"/proc/{entry}/stat"))
            if stat is not None and int(stat[1][1]) == pid:
                found.append(int(entry))
    return sorted(found)


def process_name(pid: int) -> str:
    stat = _stat(Path(f"/proc/{pid}/stat"))
    return "" if stat is None else stat[0]


@dataclass(frozen=True)
class RoleCpu:
    """CPU seconds by role at one moment (cumulative since each process started)."""

    frontend_s: float
    engine_s: float
    supervisor_s: float = 0.0
    frontends: int = 1  # front-end processes counted (1: the one process)

    def minus(self, before: RoleCpu) -> RoleCpu:
        return RoleCpu(self.frontend_s - before.frontend_s, self.engine_s - before.engine_s,
                       self.supervisor_s - before.supervisor_s, self.frontends)


def server_cpu(pid: int) -> RoleCpu:
    """The CPU of the server started as `pid`, by role (see the module docstring)."""
    kids = children_of(pid)
    fronts = [k for k in kids if process_name(k).startswith(FRONTEND_PREFIX)]
    engines = [k for k in kids if process_name(k) == ENGINE_THREADS[0]]
    if fronts or engines:
        return RoleCpu(sum(process_cpu_s(k) for k in fronts),
                       sum(process_cpu_s(k) for k in engines), process_cpu_s(pid), len(fronts))
    engine = sum(s for name, s in thread_cpu_s(pid).values() if name.startswith(ENGINE_THREADS))
    return RoleCpu(process_cpu_s(pid) - engine, engine)

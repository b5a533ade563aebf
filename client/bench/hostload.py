"""The host's load around a benchmark: load averages and CPU time by kind (/proc/stat), so a
report can say whether the machine was busy with something else or lost time to its hypervisor.

A snapshot is taken when a results document is created and again at each write of it; the
results hold both and, from the difference of the CPU counters, the share of the host's CPU
time that was stolen (`steal`: time the hypervisor gave to other guests) and the share that was
busy. Both cover every process on the host, the benchmark's own server and client included.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

# /proc/stat "cpu" line fields, in order (guest time is already counted in user and nice).
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_IDLE = ("idle", "iowait")


def read_cpu_jiffies(stat_path: Path = Path("/proc/stat")) -> dict[str, int] | None:
    """The summed `cpu` line of /proc/stat as {field: clock ticks}; None without /proc."""
    try:
        lines = stat_path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if parts and parts[0] == "cpu":
            values = [int(v) for v in parts[1:1 + len(CPU_FIELDS)]]
            values += [0] * (len(CPU_FIELDS) - len(values))  # old kernels lack steal
            return dict(zip(CPU_FIELDS, values, strict=True))
    return None


def read_loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages; None where the platform has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def snapshot(stat_path: Path = Path("/proc/stat")) -> dict[str, Any]:
    """Load averages and CPU ticks now (JSON-ready); `monotonic_s` times the interval."""
    return {"time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "monotonic_s": round(time.monotonic(), 3), "loadavg": read_loadavg(),
            "cpu_jiffies": read_cpu_jiffies(stat_path), "cpu_count": os.cpu_count()}


def _share(part: float, total: float) -> float | None:
    return round(100.0 * part / total, 2) if total > 0 else None


def between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """`before`, `after`, the interval, and the stolen / busy shares (%) of the host's CPU
    time over it (None when /proc/stat was unreadable or no tick passed)."""
    out: dict[str, Any] = {"before": before, "after": after,
                           "interval_s": round(after["monotonic_s"] - before["monotonic_s"], 3),
                           "steal_pct": None, "busy_pct": None}
    a, b = before.get("cpu_jiffies"), after.get("cpu_jiffies")
    if a is None or b is None:
        return out
    delta = {k: b[k] - a[k] for k in CPU_FIELDS}
    total = sum(delta.values())
    out["steal_pct"] = _share(delta["steal"], total)
    out["busy_pct"] = _share(total - sum(delta[k] for k in _IDLE), total)
    return out


def describe(host_load: dict[str, Any] | None) -> str:
    """One markdown line for a report."""
    if not host_load:
        return ("not recorded (this run predates host-load recording: load averages and CPU "
                "steal are absent from its results.json)")
    before, after = host_load["before"], host_load.get("after") or {}

    def avg(snap: dict[str, Any]) -> str:
        la = snap.get("loadavg")
        return "n/a" if la is None else " / ".join(f"{v:.2f}" for v in la)

    def pct(key: str) -> str:
        v = host_load.get(key)
        return "n/a" if v is None else f"{v:.1f} %"

    return (f"load average (1 / 5 / 15 min) {avg(before)} before, {avg(after)} after "
            f"(the benchmark's own server and client included); over the "
            f"{host_load.get('interval_s', 0):.0f} s between: CPU steal {pct('steal_pct')}, "
            f"host CPU busy {pct('busy_pct')} of {before.get('cpu_count')} CPUs")

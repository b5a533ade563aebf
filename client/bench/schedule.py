"""Open-loop arrival schedules: offsets (seconds from the start) at which requests are due.

Latency in open loop is measured from these scheduled times, not from when the client managed
to send, so a client or server that falls behind cannot hide its queueing (no coordinated
omission).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np

Arrivals = Literal["constant", "poisson"]
ARRIVALS: tuple[str, ...] = ("constant", "poisson")


def check_rate(rate: float) -> None:
    if not (rate > 0 and np.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of requests per second, got {rate!r}")


def arrival_offsets(rate: float, arrivals: str, seed: int = 0) -> Iterator[float]:
    """Endless offsets for `rate` requests/s: evenly spaced, or Poisson (exponential gaps)."""
    check_rate(rate)
    if arrivals == "constant":
        i = 0
        while True:
            yield i / rate
            i += 1
    elif arrivals == "poisson":
        rng = np.random.default_rng(seed)
        t = 0.0
        while True:
            # Draw in chunks: one numpy call per 1024 gaps keeps the scheduler cheap.
            for gap in rng.exponential(1.0 / rate, 1024):
                yield t
                t += float(gap)
    else:
        raise ValueError(f"arrivals must be one of {list(ARRIVALS)}, got {arrivals!r}")


def schedule(rate: float, arrivals: str, duration_s: float, seed: int = 0) -> list[float]:
    """All offsets in [0, duration_s)."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s!r}")
    out = []
    for t in arrival_offsets(rate, arrivals, seed):
        if t >= duration_s:
            break
        out.append(t)
    return out

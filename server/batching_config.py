"""Batching settings of one served model, validated on creation (server/batcher.py uses them;
admission reads the bounds)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def _check_int(name: str, value: object, minimum: int) -> None:
    # bool is an int subclass, but `max_batch_size: true` in YAML is a mistake, not a 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 8
    max_queue_delay_s: float = 0.002
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 256
    instances: int = 1
    # Admission refuses a request whose expected wait is above this; None = no time bound.
    max_queue_wait_s: float | None = None
    # Wait for company only while admitted requests are still decoding (see `coming`).
    adaptive_window: bool = True

    def __post_init__(self) -> None:
        _check_int("max_batch_size", self.max_batch_size, 1)
        if not isinstance(self.adaptive_window, bool):
            raise ValueError(f"adaptive_window must be true or false, got {self.adaptive_window!r}")
        wait = self.max_queue_wait_s
        if wait is not None and (
            isinstance(wait, bool) or not isinstance(wait, int | float)
            or not math.isfinite(wait) or wait <= 0
        ):
            raise ValueError(f"max_queue_wait_s must be a finite number > 0 or None, got {wait!r}")
        _check_int("max_queue_size", self.max_queue_size, 1)
        _check_int("instances", self.instances, 1)
        delay = self.max_queue_delay_s
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
            or delay < 0
        ):
            raise ValueError(f"max_queue_delay_s must be a finite number >= 0, got {delay!r}")
        sizes: Any = self.preferred_batch_sizes
        if isinstance(sizes, str | bytes) or not isinstance(sizes, tuple | list):
            raise ValueError(f"preferred_batch_sizes must be a list of integers, got {sizes!r}")
        for size in sizes:
            _check_int("each preferred batch size", size, 1)
            if size > self.max_batch_size:
                raise ValueError(
                    f"preferred batch size {size} is larger than max_batch_size "
                    f"{self.max_batch_size}"
                )
        # Normalised so that YAML lists and unsorted input compare and hash alike.
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(sizes))))

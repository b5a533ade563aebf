"""Warm-up: one inference of each batch size an engine will run, before it takes traffic.

The first run of a size pays for work the engine defers until it sees that shape (ONNX Runtime's
arena growth and kernel choice, an OpenVINO compiled model's first infer request, a CUDA graph's
capture), so without a warm-up the first requests of each size would carry it as latency.
An engine that knows its own compiled sizes (OpenVINO's static batch sizes) implements
`WarmsUp`; any other engine is warmed by `infer` on zeros at each size asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from detserve.engines.base import Engine


@runtime_checkable
class WarmsUp(Protocol):
    """An engine that warms its own compiled batch sizes."""

    def warm_up(self, batch_sizes: Sequence[int]) -> tuple[int, ...]:
        """Run each compiled size once (`batch_sizes`: what the server will form, for engines
        that compile on demand); returns the sizes that ran."""
        ...


def warm_up(engine: Engine, batch_sizes: Sequence[int]) -> tuple[int, ...]:
    """Warm `engine` for `batch_sizes`; returns the batch sizes that ran, ascending."""
    if isinstance(engine, WarmsUp):
        return tuple(sorted(engine.warm_up(batch_sizes)))
    m = engine.manifest
    sizes = tuple(sorted(set(batch_sizes)))
    for n in sizes:
        engine.infer(np.zeros((n, 3, m.input_height, m.input_width), np.float32))
    return sizes

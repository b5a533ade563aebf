"""Running a formed batch on an engine that holds fixed compiled batch sizes.

An engine with per-size artefacts (OpenVINO per-size compile, CUDA graphs, TensorRT profiles
tuned per size) cannot run a batch of 6 on a model compiled for 8 without paying for 8. Padding a
batch of 2 up to 8 made batching lose to no batching at moderate load (issue 12: 0.49x at four
callers). `plan_batch` picks, for every batch size up to the maximum, the cheapest sequence of
compiled runs that covers it: chunks of compiled sizes, at most the last one padded, chosen by
measured cost per compiled size. A batch of 6 on sizes {1, 2, 4, 8} may run as 4 + 2, or padded
to 8 where one run of 8 is cheaper than two runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class PlannedBatches(Protocol):
    """An engine that runs a batch as a sequence of compiled sizes (possibly padded)."""

    def batch_plan(self, n: int) -> tuple[int, ...]:
        """The compiled sizes a batch of `n` images runs as, in order; their sum is what the
        engine executes (n plus padding)."""
        ...


def executed_batch_size(engine: object, n: int) -> int:
    """Images the engine computes for a batch of `n`: n plus padding (n for dynamic engines)."""
    if isinstance(engine, PlannedBatches):
        return sum(engine.batch_plan(n))
    return n


@dataclass(frozen=True)
class BatchPlan:
    """For every batch size 1..max_batch: the compiled sizes to run it as."""

    chunks: Mapping[int, tuple[int, ...]]
    costs_s: Mapping[int, float]  # measured (or assumed) seconds per run of each compiled size

    def for_size(self, n: int) -> tuple[int, ...]:
        try:
            return self.chunks[n]
        except KeyError:
            raise ValueError(
                f"no plan for a batch of {n}: this engine plans batches 1..{max(self.chunks)}"
            ) from None

    def expected_s(self, n: int) -> float:
        return sum(self.costs_s[s] for s in self.for_size(n))


def plan_batches(costs_s: Mapping[int, float], max_batch: int) -> BatchPlan:
    """The cheapest cover of every batch size 1..`max_batch` by compiled sizes.

    `costs_s` maps each compiled size to the seconds one run of it takes. Dynamic programming
    over the number of images still to run: best(m) = min over sizes s of cost(s) + best(m - s),
    where m - s below zero means the last run is padded. Ties go to fewer runs, then to less
    padding, so equal costs never pick a plan that wastes more.
    """
    if not costs_s:
        raise ValueError("plan_batches needs at least one compiled batch size, got none")
    for size, cost in costs_s.items():
        if size < 1 or not math.isfinite(cost) or cost < 0:
            raise ValueError(f"compiled size {size} has a bad cost {cost!r} (need size >= 1, "
                             f"cost a finite number of seconds >= 0)")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = sorted(costs_s)
    # best[m] = (cost, runs, executed images, chunks) for m images still to run.
    best: list[tuple[float, int, int, tuple[int, ...]]] = [(0.0, 0, 0, ())]
    for m in range(1, max_batch + 1):
        options = []
        for s in sizes:
            cost, runs, executed, chunks = best[max(m - s, 0)]
            options.append((cost + costs_s[s], runs + 1, executed + s, (s, *chunks)))
        best.append(min(options, key=lambda o: (round(o[0], 9), o[1], o[2])))
    # Largest first: the same runs in any order cost the same, and in an optimal cover removing
    # any run leaves fewer than m images, so the smallest run can always be the padded last one.
    plans = {m: tuple(sorted(best[m][3], reverse=True)) for m in range(1, max_batch + 1)}
    return BatchPlan(plans, dict(costs_s))


def split_rows(n: int, chunks: Sequence[int]) -> list[tuple[int, int, int]]:
    """(start, stop, compiled size) per run: rows start..stop of the batch go into a run of
    `size`, the rest of that run being padding."""
    out, start = [], 0
    for size in chunks:
        stop = min(start + size, n)
        out.append((start, stop, size))
        start = stop
    if start != n:
        raise ValueError(f"chunks {list(chunks)} cover {start} rows, not the batch's {n}")
    return out

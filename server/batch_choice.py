"""Which waiting requests form the next batch when deadlines are known (DESIGN.md "Batching
semantics").

Inputs are the time left to each waiting request's deadline, in queue order (None: no deadline),
and the expected seconds of a batch of n, as measured. Every request here can still finish in a
batch of one (the batcher fails the others before asking).

- Normally the batch is the head of the queue, cut to the largest size whose expected run ends
  before all its members' deadlines: a tight deadline gets a smaller, faster batch and nobody
  is left behind.
- Under pressure (more waiting than this batch takes, or the server refusing requests), the
  engine is the bottleneck, and cutting a batch short to save one request costs the requests
  behind it more: everyone waits longer for a slower engine, more deadlines are missed, and
  goodput falls (a 200 ms deadline at 3x capacity ran batches of 2.6 on average, queued for
  three batches, where full ones would fit: the tightest request at the head cut every batch).
  So the batch is the set that answers the most requests in time per engine second: for each
  size n, the first n requests in queue order whose deadline allows a batch of n; the best rate
  wins, the larger batch on a tie. A request passed over stays at the head and runs in a later
  batch if it still can.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["choose_members"]

BatchTime = Callable[[int], float]


def choose_members(left_s: Sequence[float | None], size: int, batch_time_s: BatchTime,
                   pressed: bool) -> list[int]:
    """Indices into `left_s` (ascending) of the requests to run now, at most `size`, at least
    one when `left_s` is not empty. `pressed`: the engine is the bottleneck (a backlog, or the
    server is refusing requests)."""
    if not left_s or size < 1:
        return []
    if not pressed:
        return list(range(_cut_to_fit(left_s[:size], batch_time_s)))
    return _fastest_members(left_s, size, batch_time_s)


def _fits(left: float | None, seconds: float) -> bool:
    return left is None or seconds <= left


def _cut_to_fit(head: Sequence[float | None], batch_time_s: BatchTime) -> int:
    """The largest n whose expected batch time ends before the first n's deadlines (>= 1)."""
    earliest: float | None = None
    for n, left in enumerate(head, start=1):
        if left is not None:
            earliest = left if earliest is None else min(earliest, left)
        if n > 1 and not _fits(earliest, batch_time_s(n)):
            return n - 1
    return len(head)


def _fastest_members(left_s: Sequence[float | None], size: int,
                     batch_time_s: BatchTime) -> list[int]:
    head = list(range(min(size, len(left_s))))
    if all(_fits(left_s[i], batch_time_s(size)) for i in head):
        return head  # nobody passed over
    best: list[int] = []
    best_rate = 0.0
    for n in range(1, size + 1):
        seconds = batch_time_s(n)
        members = [i for i, left in enumerate(left_s) if _fits(left, seconds)][:n]
        if not members:
            continue
        rate = len(members) / batch_time_s(len(members))
        if rate >= best_rate:
            best, best_rate = members, rate
    return best

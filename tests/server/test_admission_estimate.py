"""The expected wait that admission compares with `max_queue_wait_ms` and deadlines, from the
measured batch and decode times and what the batcher reports of its engines."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from detserve.server.admission import InServer, ModelAdmission, ServiceTimes
from detserve.server.batching_config import BatchingConfig


@dataclass
class Engines:
    """What a batcher reports: (start, size) of each batch in an engine."""

    batches: list[tuple[float, int]] = field(default_factory=list)

    @property
    def running(self) -> list[tuple[float, int]]:
        return self.batches

    @property
    def running_items(self) -> int:
        return sum(size for _, size in self.batches)


def admission(engines: Engines, held: int, decoding: int, decode_threads: int = 2,
              batch_s: float = 0.1, decode_s: float = 0.003) -> ModelAdmission:
    times = ServiceTimes(max_batch_size=8)
    times.observe_batch(8, batch_s)
    times.observe_decode(decode_s)
    counts = InServer(held=held, decoding=decoding)
    return ModelAdmission("m", BatchingConfig(max_batch_size=8, max_queue_wait_s=0.4),
                          decode_threads, engines, times, counts)


def test_idle_server_expects_only_the_requests_own_decode() -> None:
    assert admission(Engines(), held=0, decoding=0).expected_wait_s() == pytest.approx(0.003)


def test_engine_turn_counts_the_running_batch_and_one_batch_per_full_round() -> None:
    # A batch of 8 began 40 ms ago (60 ms left); 16 more wait: two rounds of 100 ms each.
    engines = Engines([(time.monotonic() - 0.040, 8)])
    wait_s = admission(engines, held=8 + 16, decoding=0).expected_wait_s()
    assert wait_s == pytest.approx(0.060 + 2 * 0.100, abs=0.005)


def test_decode_overlaps_the_engine_turn_instead_of_adding_to_it() -> None:
    # 6 decoding on 2 threads end in 4 decodes (12 ms), well inside the 60 ms the engine has
    # left: the wait is the engine's, not 60 + 12 ms.
    engines = Engines([(time.monotonic() - 0.040, 8)])
    wait_s = admission(engines, held=8 + 6, decoding=6).expected_wait_s()
    assert wait_s == pytest.approx(0.060, abs=0.005)


def test_a_decode_backlog_longer_than_the_engine_turn_is_the_wait() -> None:
    # 200 decoding on 2 threads at 3 ms: 101 decodes (303 ms) before this request's own ends;
    # the engine is idle, and 200 waiting make 25 rounds of 8 at 1 ms each.
    wait_s = admission(Engines(), held=200, decoding=200, batch_s=0.001).expected_wait_s()
    assert wait_s == pytest.approx(0.303, abs=0.001)

"""The expected wait that admission compares with `max_queue_wait_ms` and deadlines, from the
measured batch and decode times and what the batcher reports of its engines."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from detserve.server.admission import InServer, ModelAdmission, Rejected, ServiceTimes
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


def test_steady_batches_have_no_tail_and_varied_ones_do() -> None:
    steady = ServiceTimes(max_batch_size=8)
    for _ in range(20):
        steady.observe_batch(8, 0.100)
    assert steady.batch_time_s(8, tail=True) == pytest.approx(steady.batch_time_s(8))
    varied = ServiceTimes(max_batch_size=8)
    for i in range(200):
        varied.observe_batch(8, 0.080 if i % 2 else 0.120)
    mean_s, tail_s = varied.batch_time_s(8), varied.batch_time_s(8, tail=True)
    assert mean_s == pytest.approx(0.100, abs=0.005)
    # Deviation ~20 ms: two of them above the mean.
    assert tail_s == pytest.approx(mean_s + 2 * 0.020, abs=0.006)
    # Sizes not measured scale from the nearest one, tail included.
    assert varied.batch_time_s(4, tail=True) == pytest.approx(tail_s / 2)


def test_the_queue_wait_bound_uses_slow_batches_and_deadlines_the_mean() -> None:
    engines = Engines()
    adm = admission(engines, held=28, decoding=0)
    for i in range(200):
        adm.times.observe_batch(8, 0.080 if i % 2 else 0.120)
    # 28 waiting: 3 rounds; the mean says ~300 ms (under the 400 ms bound), the slow tail
    # ~420 ms (over it).
    assert adm.expected_wait_s() == pytest.approx(0.300, abs=0.02)
    assert adm.expected_wait_s(tail=True) == pytest.approx(0.420, abs=0.03)
    with pytest.raises(Rejected) as refused:
        adm.admit(deadline=None)
    assert refused.value.reason == "queue_wait"

"""The cheapest cover of each batch size by compiled sizes (engines/batch_plan.py)."""

from __future__ import annotations

import itertools

import pytest

from detserve.engines.batch_plan import executed_batch_size, plan_batches, split_rows


def _brute_force_cost(costs: dict[int, float], n: int, max_runs: int = 8) -> float:
    best = float("inf")
    for runs in range(1, max_runs + 1):
        for combo in itertools.product(sorted(costs), repeat=runs):
            if sum(combo) >= n and sum(combo[:-1]) < n:  # only the last run may pad
                best = min(best, sum(costs[s] for s in combo))
    return best


def test_sublinear_costs_chain_small_sizes_instead_of_padding_to_eight() -> None:
    # Shaped like the served model on this CPU: one run of 8 costs about 4.4 runs of 1.
    costs = {1: 0.012, 2: 0.019, 4: 0.033, 8: 0.053}
    plan = plan_batches(costs, 8)
    assert plan.for_size(1) == (1,)
    assert plan.for_size(2) == (2,)
    assert plan.for_size(3) == (2, 1)
    assert plan.for_size(5) == (4, 1)
    assert plan.for_size(6) == (4, 2)
    assert plan.for_size(7) == (8,)  # 4 + 2 + 1 = 64 ms > one padded 8 at 53 ms
    assert plan.expected_s(6) == pytest.approx(0.052)


@pytest.mark.parametrize("costs", [
    {1: 1.0, 8: 3.0},
    {1: 1.0, 2: 1.9, 4: 3.5, 8: 6.0},
    {2: 1.0, 3: 1.2, 8: 2.0},
    {1: 5.0, 4: 2.0},  # a small size dearer than a larger one: always pad to 4
])
def test_plan_is_as_cheap_as_any_cover(costs: dict[int, float]) -> None:
    plan = plan_batches(costs, 12)
    for n in range(1, 13):
        chunks = plan.for_size(n)
        assert sum(chunks) >= n and sum(chunks[:-1]) < n
        assert plan.expected_s(n) == pytest.approx(_brute_force_cost(costs, n))


def test_equal_costs_prefer_fewer_runs_then_less_padding() -> None:
    plan = plan_batches({1: 1.0, 2: 1.0, 4: 1.0}, 4)
    assert [plan.for_size(n) for n in (1, 2, 3, 4)] == [(1,), (2,), (4,), (4,)]


def test_split_rows_gives_each_run_its_rows_and_pads_only_the_last() -> None:
    assert split_rows(6, (4, 2)) == [(0, 4, 4), (4, 6, 2)]
    assert split_rows(7, (4, 4)) == [(0, 4, 4), (4, 7, 4)]
    with pytest.raises(ValueError, match=r"chunks \[2\] cover 2 rows, not the batch's 3"):
        split_rows(3, (2,))


def test_bad_inputs_name_the_value() -> None:
    with pytest.raises(ValueError, match="at least one compiled batch size"):
        plan_batches({}, 4)
    with pytest.raises(ValueError, match=r"compiled size 2 has a bad cost -1"):
        plan_batches({2: -1.0}, 4)
    with pytest.raises(ValueError, match="max_batch must be >= 1, got 0"):
        plan_batches({1: 1.0}, 0)
    with pytest.raises(ValueError, match=r"no plan for a batch of 9: .* batches 1..8"):
        plan_batches({1: 1.0}, 8).for_size(9)


class _Padded:
    def batch_plan(self, n: int) -> tuple[int, ...]:
        return (8,)


def test_executed_batch_size_counts_padding_and_defaults_to_n() -> None:
    assert executed_batch_size(_Padded(), 3) == 8
    assert executed_batch_size(object(), 3) == 3

"""The deadline-aware batch choice, on given batch times (as if measured), so the choices are
exact: without a backlog the head is cut to fit; with one, the most answers in time per engine
second win, even if a tight request at the head is passed over."""

from __future__ import annotations

from detserve.server.batch_choice import choose_members

# One image 10 ms, two 15, four 20, eight 40: batches pay (a rate of 200 images/s at 8).
TIMES_S = {1: 0.010, 2: 0.015, 3: 0.020, 4: 0.020, 5: 0.040, 6: 0.040, 7: 0.040, 8: 0.040}


def bt(n: int) -> float:
    return TIMES_S[n]


def test_no_deadlines_take_the_head() -> None:
    assert choose_members([None] * 3, 8, bt, False) == [0, 1, 2]
    assert choose_members([None] * 12, 8, bt, True) == list(range(8))


def test_without_backlog_a_tight_head_cuts_the_batch_and_nobody_is_left_out() -> None:
    # The head has 16 ms left: a batch of two (15 ms) fits it, of three (20 ms) does not.
    assert choose_members([0.016, None, None], 8, bt, False) == [0, 1]


def test_with_a_backlog_a_tight_head_is_passed_over_for_a_full_batch() -> None:
    # Twelve waiting, the head with 16 ms left: cutting to two would answer 2 per 15 ms
    # (133/s); passing it over answers 8 per 40 ms (200/s).
    left = [0.016] + [None] * 11
    assert choose_members(left, 8, bt, True) == list(range(1, 9))


def test_with_a_backlog_a_full_batch_that_fits_everyone_is_the_head() -> None:
    assert choose_members([0.050] * 10, 8, bt, True) == list(range(8))


def test_with_a_backlog_many_tight_requests_get_a_smaller_faster_batch() -> None:
    # Nine waiting with 25 ms left each: no batch of five or more (40 ms) fits; four (20 ms)
    # is the best rate that does.
    assert choose_members([0.025] * 9, 8, bt, True) == [0, 1, 2, 3]


def test_the_choice_is_never_empty() -> None:
    assert choose_members([0.010] * 9, 8, bt, True) == [0]
    assert choose_members([], 8, bt, True) == []


def test_under_pressure_a_short_queue_is_not_cut_for_its_tightest_member() -> None:
    # The server is refusing requests, five wait; the head has 16 ms left. A batch of four
    # (20 ms) answers the other four, 200/s, where cutting to two for the head answers 133/s.
    left = [0.016, None, None, None, None]
    assert choose_members(left, 8, bt, True) == [1, 2, 3, 4]
    assert choose_members(left, 8, bt, False) == [0, 1]

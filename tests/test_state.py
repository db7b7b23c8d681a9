"""The restart policy and the transition table: pure functions, no processes needed."""

from __future__ import annotations

import pytest

from pbhost.process.state import (
    ALLOWED,
    BACKOFF_CAP,
    ProcessState,
    backoff_delay,
    can_move,
    gives_up,
)


def test_backoff_doubles_from_the_base() -> None:
    assert [backoff_delay(n, 1.0) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert [backoff_delay(n, 0.5) for n in range(1, 4)] == [0.5, 1.0, 2.0]


def test_backoff_is_capped_at_30_seconds_and_stays_there() -> None:
    assert backoff_delay(6, 1.0) == BACKOFF_CAP == 30.0
    assert backoff_delay(7, 1.0) == 30.0
    assert backoff_delay(10_000, 1.0) == 30.0  # no overflow in a week-long crash loop


def test_no_failure_means_no_wait() -> None:
    assert backoff_delay(0, 1.0) == 0.0


@pytest.mark.parametrize("failures,max_retries,expected", [
    (1, None, False), (10_000, None, False), (4, 5, False), (5, 5, True), (1, 0, True),
])
def test_gives_up_after_max_retries_quick_failures(failures: int, max_retries: int | None,
                                                   expected: bool) -> None:
    assert gives_up(failures, max_retries) is expected


def test_every_state_has_a_way_out_and_stopping_never_goes_straight_to_running() -> None:
    assert set(ALLOWED) == set(ProcessState)
    # BACKOFF and CRASHED: pbhost's own restart over maxMemory, after a quick breach.
    assert ALLOWED[ProcessState.STOPPING] == {ProcessState.STOPPED, ProcessState.STARTING,
                                              ProcessState.BACKOFF, ProcessState.CRASHED}
    assert can_move(ProcessState.CRASHED, ProcessState.STARTING)
    assert not can_move(ProcessState.STOPPED, ProcessState.RUNNING)
    assert not can_move(ProcessState.STOPPING, ProcessState.RUNNING)

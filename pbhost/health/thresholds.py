"""Probe policy, free of processes and sockets: the thresholds (as Kubernetes counts them), when
the next probe may start, whether a failed run had been healthy, and the loop that runs one
probe kind on that schedule.

The loop is written against asyncio's clock only (`asyncio.sleep`, `loop.time()`), so the
policy tests run it on a loop with virtual time and a scripted check (tests/test_health_policy.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable


@dataclass(frozen=True)
class Result:
    ok: bool
    detail: str   # `GET /health -> 503`, `TCP 127.0.0.1:8001: connection refused`


class Threshold:
    """A probe's verdict: it turns to failing after `failures` consecutive failures, and back
    to passing after `successes` consecutive successes. A liveness probe starts passing (a
    fresh process is presumed alive), a readiness probe starts failing (not ready yet)."""

    def __init__(self, failures: int, successes: int, passing: bool) -> None:
        self.failure_threshold = failures
        self.success_threshold = successes
        self.passing = passing
        self.fails = 0       # consecutive failures so far
        self.oks = 0         # consecutive successes so far

    def feed(self, ok: bool) -> bool:
        """Count one result; True when the verdict flipped with it."""
        if ok:
            self.oks += 1
            self.fails = 0
            flip = not self.passing and self.oks >= self.success_threshold
        else:
            self.fails += 1
            self.oks = 0
            flip = self.passing and self.fails >= self.failure_threshold
        if flip:
            self.passing = not self.passing
        return flip


def next_wait(began: float, now: float, period: float) -> float:
    """Seconds until the next probe: `period` after the last one began, never before it has
    ended (probes never overlap; one that took longer than the period is followed at once)."""
    return max(0.0, began + period - now)


def ran_healthy(started: float, last_ok: float | None, healthy_run: float) -> bool:
    """A run that ends in a liveness failure was healthy (restart at once, failure count reset)
    if it last passed its check at least `healthy_run` seconds into the run; otherwise it is a
    quick failure, backed off like a crash."""
    return last_ok is not None and last_ok - started >= healthy_run


Check = Callable[[], Awaitable[Result]]


class ProbeUnavailable(Exception):
    """pbhost could not run a check for want of its own resources (no fd for a socket, no fork
    for an exec probe): says nothing about the process, so it is neither a pass nor a failure."""


async def probe_loop(check: Check, initial_delay: float, period: float, timeout: float,
                     on_result: Callable[[Result], bool], timed_out: str,
                     skipped: Callable[[str], None] | None = None) -> None:
    """Run `check` every `period` seconds, the first after `initial_delay`, each bounded by
    `timeout`, until `on_result` returns False. A check that times out is cancelled (an exec
    probe kills its process group on cancellation) and counts as a failure: `timed_out`. A
    check that raises ProbeUnavailable is skipped (`skipped(reason)`) and tried next period:
    a healthy process is not restarted because pbhost ran out of fds, nor its probe lost."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(initial_delay)
    while True:
        began = loop.time()
        try:
            result: Result | None = await asyncio.wait_for(check(), timeout)
        except asyncio.TimeoutError:
            result = Result(False, timed_out)
        except ProbeUnavailable as exc:
            result = None
            if skipped is not None:
                skipped(str(exc))
        if result is not None and not on_result(result):
            return
        await asyncio.sleep(next_wait(began, loop.time(), period))

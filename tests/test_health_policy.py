"""Probe and restart policy in-process, on a loop with virtual time: thresholds, the probe
schedule (never before initialDelay, never overlapping, bounded by the timeout), what a
liveness failure does to a Supervisor (backoff 1, 2, 4 s; maxRetries; a healthy run restarts at
once), one-shot jobs, and the dependency rules. The real-process side is tests/test_health.py.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from pbhost.health.thresholds import (
    ProbeUnavailable,
    Result,
    Threshold,
    next_wait,
    probe_loop,
    ran_healthy,
)
from pbhost.order import depends
from pbhost.order.depends import DepState
from pbhost.process.state import ProcessState
from pbhost.process.supervisor import Launch, Policy, Supervisor
from vclock import FakeRuntime, run_virtual, spawn_times

S = ProcessState


# -- thresholds and schedule --------------------------------------------------------------------
def test_liveness_threshold_flips_only_after_n_consecutive_failures() -> None:
    t = Threshold(3, 1, passing=True)
    assert [t.feed(ok) for ok in (False, False, True, False, False)] == [False] * 5
    assert t.passing and t.fails == 2  # a success in between started the count again
    assert t.feed(False) is True and not t.passing


def test_readiness_threshold_needs_consecutive_successes() -> None:
    t = Threshold(1, 2, passing=False)
    assert [t.feed(ok) for ok in (True, False, True)] == [False, False, False]
    assert t.feed(True) is True and t.passing


def test_next_probe_is_a_period_after_the_last_began_never_before_it_ended() -> None:
    assert next_wait(began=10.0, now=10.2, period=1.0) == pytest.approx(0.8)
    assert next_wait(began=10.0, now=11.5, period=1.0) == 0.0  # took longer than the period


def test_a_run_was_healthy_if_it_passed_late_enough() -> None:
    assert ran_healthy(100.0, 111.0, healthy_run=10.0)
    assert not ran_healthy(100.0, 105.0, healthy_run=10.0)
    assert not ran_healthy(100.0, None, healthy_run=10.0)  # never passed at all


def test_probe_loop_waits_initial_delay_never_overlaps_and_times_out() -> None:
    spans: list[tuple[float, float]] = []
    cancelled: list[float] = []
    durations = iter([0.1, 5.0, 0.3, 0.1])  # the second check hangs past the 1 s timeout

    async def check() -> Result:
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            await asyncio.sleep(next(durations))
        except asyncio.CancelledError:
            cancelled.append(loop.time())
            raise
        spans.append((began, loop.time()))
        return Result(True, "ok")

    results: list[Result] = []

    def on_result(r: Result) -> bool:
        results.append(r)
        return len(results) < 4

    async def main() -> None:
        await probe_loop(check, initial_delay=2.0, period=0.5, timeout=1.0,
                         on_result=on_result, timed_out="timed out after 1s")

    run_virtual(main)
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[1].detail == "timed out after 1s"
    assert spans[0][0] == pytest.approx(2.0)             # not before initialDelay
    assert cancelled == [pytest.approx(2.5 + 1.0)]        # the hung one, at its timeout
    assert spans[1][0] == pytest.approx(3.5)              # right after it: its period had passed
    assert spans[2][0] == pytest.approx(4.0)              # then one period after the last began
    starts = [a for a, _ in spans] + cancelled
    ends = [b for _, b in spans] + cancelled
    ordered = sorted(zip(starts, ends, strict=True))
    pairs = zip(ordered, ordered[1:], strict=False)
    assert all(b1 <= a2 for (_, b1), (a2, _) in pairs)  # never overlap


def test_a_check_pbhost_cannot_run_is_skipped_neither_pass_nor_failure() -> None:
    outcomes = iter([True, None, None, False, True])  # None: no fd for its socket
    results: list[Result] = []
    skipped: list[tuple[float, str]] = []

    async def check() -> Result:
        ok = next(outcomes)
        if ok is None:
            raise ProbeUnavailable("no socket: Too many open files")
        return Result(ok, "checked")

    def on_result(r: Result) -> bool:
        results.append(r)
        return len(results) < 3

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await probe_loop(check, 0.0, 1.0, 0.5, on_result, "timed out",
                         lambda why: skipped.append((loop.time(), why)))

    run_virtual(main)
    assert [r.ok for r in results] == [True, False, True]  # the two skips are not failures
    assert [why for _, why in skipped] == ["no socket: Too many open files"] * 2
    assert [t for t, _ in skipped] == pytest.approx([1.0, 2.0])  # tried again each period


# -- liveness failures on a Supervisor ----------------------------------------------------------
def _sup(rt: FakeRuntime, **policy: object) -> Supervisor:
    launch = Launch(["agent"], {}, "/")
    return Supervisor("agent", lambda: launch, Policy(**policy), rt)  # type: ignore[arg-type]


def test_liveness_failures_right_after_start_back_off_1_2_4_seconds() -> None:
    rt = FakeRuntime()

    async def main() -> Supervisor:
        sup = _sup(rt, stop_timeout=5.0)
        sup.spawn_now()
        for _ in range(4):
            await asyncio.sleep(0.3)  # fails its check 0.3 s into every run
            sup.fail_run(rt.last, "liveness failed 3 times (GET /health -> 503)", healthy=False)
            await _until(lambda: sup.state is S.BACKOFF)
            await _until(lambda: sup.state is S.RUNNING)
        return sup

    sup = run_virtual(main)
    times = spawn_times(rt)
    gaps = [round(b - a - 0.3, 2) for a, b in zip(times, times[1:], strict=False)]
    assert gaps == [1.0, 2.0, 4.0, 8.0]
    assert [sig for _, _, sig in rt.signals] == [signal.SIGTERM] * 4  # the normal stop
    assert sup.last_error == "liveness failed 3 times (GET /health -> 503)"
    assert sup.restart_count == 4 and sup.failures == 4


def test_a_liveness_failure_after_a_healthy_run_restarts_at_once() -> None:
    rt = FakeRuntime()

    async def main() -> Supervisor:
        sup = _sup(rt, healthy_run=10.0)
        sup.spawn_now()
        sup.failures = 3
        await asyncio.sleep(60)
        sup.fail_run(rt.last, "liveness failed 3 times (x)", healthy=True)
        await _until(lambda: len(rt.spawned) == 2)
        return sup

    sup = run_virtual(main)
    assert spawn_times(rt) == [0.0, 60.0] and sup.failures == 0 and sup.state is S.RUNNING


def test_liveness_failures_count_towards_max_retries() -> None:
    rt = FakeRuntime()

    async def main() -> Supervisor:
        sup = _sup(rt, max_retries=2)
        sup.spawn_now()
        for _ in range(2):
            sup.fail_run(rt.last, "watchdog: no WATCHDOG=1 for 1s", healthy=False)
            await _until(lambda: sup.state in (S.BACKOFF, S.CRASHED))
            if sup.state is not S.CRASHED:
                await _until(lambda: _state_of(sup) is S.RUNNING)
        return sup

    sup = run_virtual(main)
    assert sup.state is S.CRASHED and len(rt.spawned) == 2
    assert sup.last_error == "watchdog: no WATCHDOG=1 for 1s"


def test_a_hung_process_that_ignores_sigterm_is_killed_at_its_stop_timeout() -> None:
    rt = FakeRuntime()

    async def main() -> None:
        sup = _sup(rt, stop_timeout=2.0)
        sup.spawn_now()
        child = rt.last
        rt.signal_group = lambda pgid, sig: _ignore_term(rt, pgid, sig)  # type: ignore[method-assign]
        sup.fail_run(child, "liveness failed 3 times (x)", healthy=False)
        await _until(lambda: sup.state is S.BACKOFF)

    run_virtual(main)
    assert [(round(t, 2), sig) for t, _, sig in rt.signals] == [(0.0, signal.SIGTERM),
                                                                (2.0, signal.SIGKILL)]


def _ignore_term(rt: FakeRuntime, pgid: int, sig: int) -> bool:
    if sig == signal.SIGTERM:
        rt.signals.append((rt.now(), pgid, sig))
        return True
    return FakeRuntime.signal_group(rt, pgid, sig)


def test_a_stop_during_a_liveness_restart_wins() -> None:
    rt = FakeRuntime()

    async def main() -> Supervisor:
        sup = _sup(rt)
        sup.spawn_now()
        sup.fail_run(rt.last, "liveness failed 3 times (x)", healthy=True)
        await sup.stop()
        await asyncio.sleep(5)
        return sup

    sup = run_virtual(main)
    assert sup.state is S.STOPPED and len(rt.spawned) == 1


def test_stale_reports_for_an_earlier_run_are_ignored() -> None:
    rt = FakeRuntime()

    async def main() -> Supervisor:
        sup = _sup(rt, gated=True)
        sup.spawn_now()
        old = rt.last
        await sup.restart()
        sup.mark_ready(old, "READY=1")                  # the old run's word
        sup.fail_run(old, "liveness failed", healthy=False)
        await asyncio.sleep(1)
        return sup

    sup = run_virtual(main)
    assert not sup.ready and sup.state is S.RUNNING and len(rt.spawned) == 2
    assert sup.health is None or "restarting" not in sup.health


def test_gated_process_is_running_but_not_ready_until_its_gate_passes() -> None:
    rt = FakeRuntime()

    async def main() -> tuple[bool, bool, str | None]:
        sup = _sup(rt, gated=True)
        sup.spawn_now()
        before = sup.ready
        sup.mark_ready(rt.last, "log line /up/ matched")
        return before, sup.ready, sup.health

    assert run_virtual(main) == (False, True, "ready")


def test_a_job_that_exits_0_has_completed_and_is_not_restarted() -> None:
    rt = FakeRuntime()

    async def main() -> Supervisor:
        sup = _sup(rt, one_shot=True)
        sup.spawn_now()
        rt.exit(rt.last.pid, 0)
        await asyncio.sleep(40)
        return sup

    sup = run_virtual(main)
    assert sup.state is S.STOPPED and sup.completed and sup.health == "completed"
    assert len(rt.spawned) == 1 and sup.failures == 0


def test_a_job_that_fails_is_retried_with_backoff() -> None:
    rt = FakeRuntime()

    async def main() -> Supervisor:
        sup = _sup(rt, one_shot=True, max_retries=2)
        sup.spawn_now()
        rt.exit(rt.last.pid, 1 << 8)
        await _until(lambda: len(rt.spawned) == 2)
        rt.exit(rt.last.pid, 1 << 8)
        await asyncio.sleep(1)
        return sup

    sup = run_virtual(main)
    assert sup.state is S.CRASHED and not sup.completed
    assert sup.last_error is not None and sup.last_error.startswith("exited with code 1")


def _state_of(sup: Supervisor) -> ProcessState:
    return sup.state  # read afresh (mypy would keep the type narrowed by an earlier check)


async def _until(pred: object, limit: float = 120.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not pred():  # type: ignore[operator]
        if loop.time() > end:
            raise AssertionError("condition not reached in virtual time")
        await asyncio.sleep(0.01)


# -- dependencies --------------------------------------------------------------------------------
def _state(**kw: object) -> DepState:
    base: dict[str, object] = {"alive": False, "ready": False, "completed": False}
    base.update(kw)
    return DepState(**base)  # type: ignore[arg-type]


def test_conditions() -> None:
    running = _state(alive=True)
    ready = _state(alive=True, ready=True)
    done = _state(completed=True, state="stopped")
    assert depends.met("started", running) and not depends.met("ready", running)
    assert depends.met("ready", ready) and not depends.met("completed", ready)
    assert all(depends.met(c, done) for c in depends.CONDITIONS)  # a finished job satisfies all


def test_unmet_and_the_waiting_text_name_what_gave_up() -> None:
    deps = {"pocketbase": "ready", "redis": "ready", "migrate": "completed"}
    states = {"pocketbase": _state(alive=True, ready=True),
              "redis": _state(alive=True, state="running"),
              "migrate": _state(state="crashed", reason="exited with code 1 after 0.1s",
                                gave_up=True)}
    waiting = depends.unmet(deps, states)
    assert waiting == ["redis", "migrate"]
    assert depends.waiting_text(deps, waiting, states) == (
        "waiting for redis (ready), migrate (completed): "
        "migrate crashed (exited with code 1 after 0.1s)")
    assert depends.unmet({"gone": "started"}, {}) == ["gone"]  # removed at run time: unmet


def test_graph_problems_name_unknown_ids_with_a_suggestion_and_the_cycle() -> None:
    graph = {"api": {"redus": "ready"}, "a": {"b": "ready"}, "b": {"c": "started"},
             "c": {"a": "completed"}, "redis": {}, "self": {"self": "ready"}}
    problems = depends.graph_problems(graph, graph)
    assert ("api", 'names "redus", which is not configured (did you mean "redis"?)') in problems
    assert ("self", 'names the process itself ("self")') in problems
    assert ("a", "forms a cycle: a -> b -> c -> a") in problems
    assert depends.graph_problems({"x": {"pocketbase": "started"}}, ["x"]) == []


def test_no_cycle_in_a_long_chain_and_no_recursion_limit() -> None:
    chain = {f"p{i}": {f"p{i + 1}": "ready"} for i in range(5000)}
    chain["p5000"] = {}
    assert depends.find_cycle(chain) is None
    chain["p5000"] = {"p0": "started"}
    cycle = depends.find_cycle(chain)
    assert cycle is not None and cycle[0] == cycle[-1] and len(cycle) == 5002


def test_jobs_and_dependents() -> None:
    graph = {"app": {"pocketbase": "ready", "migrate": "completed", "redis": "ready"},
             "worker": {"redis": "started"}, "migrate": {}, "redis": {}}
    assert depends.jobs(graph) == {"migrate"}
    assert depends.dependents(graph) == {"app": set(), "worker": set(), "migrate": {"app"},
                                         "redis": {"app", "worker"}}

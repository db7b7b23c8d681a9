"""The restart policy of one Supervisor, driven in-process: scripted children, virtual time.

Every branch of the policy (quick failures back off 1, 2, 4 s; a healthy run resets; a requested
restart is not a failure; stop wins over restart; maxRetries -> crashed; ...) takes a fraction
of a millisecond here instead of seconds of real processes. The supervisor runs unchanged on a
real asyncio loop whose clock only moves when nothing is ready (tests/vclock.py; like honcho's
scripted histories, with supervisor's one-test-per-transition habit); the system is a fake
`Runtime` (pbhost/process/runtime.py) whose children follow a script. The real-process tests
(test_serve.py and others) stay: these add to them, they do not replace them.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from pbhost.process.spawn import Child, SpawnError
from pbhost.process.state import BACKOFF_CAP, ProcessState
from pbhost.process.supervisor import Launch, Policy, Supervisor
from vclock import run_virtual

S = ProcessState


# -- scripted children ------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """How one spawned child behaves: exits by itself after `lasts` seconds (None: runs until
    signalled) with `code`; `stubborn` ignores SIGTERM; `unstartable` fails at exec."""

    lasts: float | None = None
    code: int = 1
    stubborn: bool = False
    unstartable: bool = False


@dataclass
class FakeRuntime:
    """A Runtime whose children follow a script; records what the supervisor did, and when."""

    script: Iterator[Run]
    spawns: list[float] = field(default_factory=list)
    signals: list[tuple[float, int]] = field(default_factory=list)  # (time, signal)
    exits: list[float] = field(default_factory=list)
    _next_pid: int = 1000
    _live: dict[int, Run] = field(default_factory=dict)
    _watchers: dict[int, Callable[[int], None]] = field(default_factory=dict)
    changed: asyncio.Event | None = None  # set on every spawn and exit, for `until`

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> Child:
        behaviour = next(self.script)
        if behaviour.unstartable:
            raise SpawnError(errno.ENOENT, f"command not found: {argv[0]}")
        self._next_pid += 1
        pid = self._next_pid
        self._live[pid] = behaviour
        self.spawns.append(self.now())
        self._poke()
        if behaviour.lasts is not None:
            asyncio.get_running_loop().call_later(behaviour.lasts, self._exit, pid,
                                                  behaviour.code << 8)
        return Child(pid, None, -1, -1, self.now(), time.time())

    def watch(self, child: Child, on_exit: Callable[[int], None]) -> None:
        self._watchers[child.pid] = on_exit

    def attach(self, proc_id: str, child: Child) -> None:
        pass  # no pipes: output is not what these tests are about

    def signal_group(self, pgid: int, sig: int) -> bool:
        behaviour = self._live.get(pgid)
        if behaviour is None:
            return False
        if sig == 0:
            return True
        self.signals.append((self.now(), sig))
        if sig == signal.SIGKILL or (sig == signal.SIGTERM and not behaviour.stubborn):
            asyncio.get_running_loop().call_soon(self._exit, pid_of(pgid), sig)  # killed by sig
        return True

    def _exit(self, pid: int, status: int) -> None:
        if self._live.pop(pid, None) is None:
            return  # already gone (killed before its scripted exit)
        self.exits.append(self.now())
        watcher = self._watchers.pop(pid, None)
        if watcher is not None:
            watcher(status)
        self._poke()

    def _poke(self) -> None:
        if self.changed is not None:
            self.changed.set()


def pid_of(pgid: int) -> int:
    return pgid  # each child leads its own group


def always(behaviour: Run) -> Iterator[Run]:
    while True:
        yield behaviour


def then(*runs: Run, forever: Run | None = None) -> Iterator[Run]:
    yield from runs
    while forever is not None:
        yield forever


def supervisor(rt: FakeRuntime, **policy: Any) -> tuple[Supervisor, list[ProcessState]]:
    """A supervisor on the fake runtime, and the list of states it moves through."""
    states: list[ProcessState] = []
    policy.setdefault("healthy_run", 10.0)
    sup = Supervisor("agent", lambda: Launch(["agent"], {}, "/"), Policy(**policy), rt,
                     on_change=lambda s: states.append(s.state))
    return sup, states


async def until(rt: FakeRuntime, pred: Callable[[], bool]) -> None:
    """Let virtual time run, one spawn or exit at a time, until `pred()` holds. If nothing is
    scheduled any more, the loop's selector fails the test (the history is stuck)."""
    rt.changed = asyncio.Event()
    while not pred():
        rt.changed.clear()
        await rt.changed.wait()


def gaps(rt: FakeRuntime) -> list[float]:
    """Seconds from each exit to the next spawn."""
    pairs = zip(rt.exits, rt.spawns[1:], strict=False)  # the last exit may have no successor
    return [round(spawn - exit_, 6) for exit_, spawn in pairs]


# -- keep-alive -------------------------------------------------------------------------------
def test_quick_failures_wait_1_2_4_seconds() -> None:
    rt = FakeRuntime(always(Run(lasts=0.2)))
    sup, states = supervisor(rt)

    async def history() -> None:
        sup.spawn_now()
        await until(rt, lambda: len(rt.spawns) == 4)

    run_virtual(history)
    assert gaps(rt) == [1.0, 2.0, 4.0]
    assert sup.failures == 3 and sup.restart_count == 3
    assert states[:4] == [S.STARTING, S.RUNNING, S.BACKOFF, S.STARTING]
    assert sup.last_error == "exited with code 1 after 0.2s"


def test_backoff_doubles_from_its_base_and_stops_at_the_cap() -> None:
    rt = FakeRuntime(always(Run(lasts=0.0)))
    sup, _ = supervisor(rt, backoff=0.5)

    async def history() -> None:
        sup.spawn_now()
        await until(rt, lambda: len(rt.spawns) == 10)

    run_virtual(history)
    assert gaps(rt) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, BACKOFF_CAP, BACKOFF_CAP, BACKOFF_CAP]


def test_a_healthy_run_restarts_at_once_and_resets_the_count() -> None:
    rt = FakeRuntime(then(Run(lasts=0.1), Run(lasts=0.1), Run(lasts=12.0),
                          forever=Run(lasts=0.1)))
    sup, _ = supervisor(rt)

    async def history() -> None:
        sup.spawn_now()
        await until(rt, lambda: len(rt.spawns) == 5)

    run_virtual(history)
    # two quick failures (1 s, 2 s), a healthy 12 s run (at once), then 1 s again
    assert gaps(rt) == [1.0, 2.0, 0.0, 1.0]
    assert sup.failures == 1


def test_max_retries_quick_failures_mark_it_crashed_and_start_gives_a_new_budget() -> None:
    rt = FakeRuntime(always(Run(lasts=0.1)))
    sup, states = supervisor(rt, max_retries=3)

    async def history() -> None:
        sup.spawn_now()
        await until(rt, lambda: sup.state is S.CRASHED)
        await asyncio.sleep(120)  # nothing happens while crashed
        assert len(rt.spawns) == 3
        assert await sup.start() is not None
        assert sup.failures == 0 and sup.last_error is None

    run_virtual(history)
    assert states.count(S.CRASHED) == 1
    assert len(rt.spawns) == 4


def test_a_process_that_cannot_start_is_crashed_at_once_with_the_reason() -> None:
    rt = FakeRuntime(always(Run(unstartable=True)))
    sup, states = supervisor(rt)

    async def history() -> None:
        assert sup.spawn_now() is None
        await asyncio.sleep(60)

    run_virtual(history)
    assert sup.state is S.CRASHED
    assert states == [S.STARTING, S.CRASHED]
    assert sup.last_error == "command not found: agent"
    assert rt.spawns == []


# -- requested operations -----------------------------------------------------------------------
def test_a_requested_restart_is_not_a_failure() -> None:
    rt = FakeRuntime(always(Run()))
    sup, _ = supervisor(rt)

    async def history() -> None:
        first = sup.spawn_now()
        await asyncio.sleep(3)
        second = await sup.restart()
        assert second is not None and second != first

    run_virtual(history)
    assert gaps(rt) == [0.0]  # the new one starts as soon as the old group is gone
    assert sup.failures == 0 and sup.restart_count == 1
    assert sup.state is S.RUNNING
    assert [sig for _, sig in rt.signals] == [signal.SIGTERM]


def test_a_restart_of_a_crashed_process_gives_a_fresh_budget() -> None:
    rt = FakeRuntime(then(Run(lasts=0.1), Run(lasts=0.1), forever=Run()))
    sup, _ = supervisor(rt, max_retries=2)

    async def history() -> None:
        sup.spawn_now()
        await until(rt, lambda: sup.state is S.CRASHED)
        assert await sup.restart() is not None

    run_virtual(history)
    assert sup.state is S.RUNNING and sup.failures == 0


def test_a_stubborn_child_gets_sigkill_at_the_stop_timeout() -> None:
    rt = FakeRuntime(always(Run(stubborn=True)))
    sup, states = supervisor(rt, stop_timeout=3.0)

    async def history() -> None:
        sup.spawn_now()
        await asyncio.sleep(1)
        await sup.stop()

    run_virtual(history)
    (t_term, term), (t_kill, kill) = rt.signals
    assert (term, kill) == (signal.SIGTERM, signal.SIGKILL)
    assert t_kill - t_term == pytest.approx(3.0, abs=0.03)
    assert states[-2:] == [S.STOPPING, S.STOPPED]
    assert sup.held


def test_stop_wins_over_a_restart_under_way() -> None:
    rt = FakeRuntime(always(Run(stubborn=True)))
    sup, _ = supervisor(rt, stop_timeout=2.0)

    async def history() -> int | None:
        sup.spawn_now()
        restart = asyncio.ensure_future(sup.restart())
        await asyncio.sleep(0.5)  # the restart is waiting for the stubborn group
        await sup.stop()
        return await restart

    assert run_virtual(history) is None
    assert sup.state is S.STOPPED
    assert len(rt.spawns) == 1  # the restart never spawned a second process


def test_a_burst_of_restarts_ends_with_one_new_process() -> None:
    rt = FakeRuntime(always(Run()))
    sup, _ = supervisor(rt)

    async def history() -> list[int | None]:
        sup.spawn_now()
        await asyncio.sleep(1)
        return list(await asyncio.gather(*(sup.restart() for _ in range(20))))

    pids = run_virtual(history)
    assert len(rt.spawns) == 2 or len(rt.spawns) == 3  # the first one, one or two restarts
    assert len(set(pids)) <= 2 and sup.state is S.RUNNING
    assert pids[-1] == sup.pid


def test_stopping_a_process_in_backoff_cancels_its_restart() -> None:
    rt = FakeRuntime(always(Run(lasts=0.1)))
    sup, states = supervisor(rt, backoff=5.0)

    async def history() -> None:
        sup.spawn_now()
        await until(rt, lambda: sup.state is S.BACKOFF)
        await sup.stop()
        await asyncio.sleep(60)

    run_virtual(history)
    assert len(rt.spawns) == 1
    assert states[-1] is S.STOPPED


def test_a_process_stopped_on_request_stays_stopped() -> None:
    rt = FakeRuntime(always(Run()))
    sup, _ = supervisor(rt)

    async def history() -> None:
        sup.spawn_now()
        await sup.stop()
        await asyncio.sleep(600)

    run_virtual(history)
    assert sup.state is S.STOPPED and len(rt.spawns) == 1 and rt.exits == [pytest.approx(0.0)]


def test_start_of_a_running_process_returns_its_pid_without_a_second_spawn() -> None:
    rt = FakeRuntime(always(Run()))
    sup, _ = supervisor(rt)

    async def history() -> tuple[int | None, int | None]:
        first = sup.spawn_now()
        return first, await sup.start()

    first, again = run_virtual(history)
    assert first == again and len(rt.spawns) == 1


def test_an_exit_during_stop_is_not_a_failure() -> None:
    rt = FakeRuntime(always(Run()))
    sup, states = supervisor(rt)

    async def history() -> None:
        sup.spawn_now()
        await sup.stop()

    run_virtual(history)
    assert sup.failures == 0 and S.BACKOFF not in states

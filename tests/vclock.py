"""An asyncio loop with virtual time, and a scripted Runtime for driving a Supervisor on it.

When nothing is ready to run, the loop jumps its clock to the next timer instead of waiting, so
`asyncio.sleep(30)` takes microseconds and every time a test reads is exact. For pure policy
only (probe scheduling, restart policy): real processes are tested with real processes.
"""

from __future__ import annotations

import asyncio
import selectors
import signal
import time
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

from pbhost.process.reaper import ExitCallback
from pbhost.process.spawn import Child, SpawnError

T = TypeVar("T")


class _JumpSelector(selectors.SelectSelector):
    """select() never waits: it moves the clock by the timeout the loop asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("virtual loop: nothing scheduled and nothing ready (deadlock)")
        self.clock += max(0.0, timeout)
        return []


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """Run `main()` on a fresh loop whose `time()` is virtual, starting at 0."""
    selector = _JumpSelector()
    loop = asyncio.SelectorEventLoop(selector)
    loop.time = lambda: selector.clock  # type: ignore[method-assign]
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


class FakeRuntime:
    """Children that live until signalled (or told to exit); exits arrive on the next loop turn,
    as the reaper would deliver them."""

    def __init__(self, fail_spawn: bool = False) -> None:
        self.spawned: list[tuple[float, Child]] = []
        self.signals: list[tuple[float, int, int]] = []   # (time, pgid, signal)
        self._alive: set[int] = set()
        self._watch: dict[int, ExitCallback] = {}
        self._next_pid = 1000
        self.fail_spawn = fail_spawn
        self.envs: list[Mapping[str, str]] = []

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> Child:
        if self.fail_spawn:
            raise SpawnError(2, f"command not found: {argv[0]}")
        self._next_pid += 1
        child = Child(self._next_pid, None, -1, -1, self.now(), time.time())
        self._alive.add(child.pid)
        self.spawned.append((self.now(), child))
        self.envs.append(dict(env))
        return child

    def signal_group(self, pgid: int, sig: int) -> bool:
        if pgid not in self._alive:
            return False
        if sig:
            self.signals.append((self.now(), pgid, sig))
            if sig in (signal.SIGTERM, signal.SIGKILL):
                asyncio.get_running_loop().call_soon(self.exit, pgid, sig)  # killed by sig
        return True

    def exit(self, pid: int, status: int) -> None:
        """The child `pid` ends with raw wait status `status` (code n: n << 8)."""
        if pid in self._alive:
            self._alive.discard(pid)
            callback = self._watch.pop(pid, None)
            if callback is not None:
                callback(status)

    def watch(self, child: Child, on_exit: ExitCallback) -> None:
        self._watch[child.pid] = on_exit

    def attach(self, proc_id: str, child: Child) -> None:
        pass

    @property
    def last(self) -> Child:
        return self.spawned[-1][1]


def spawn_times(rt: FakeRuntime) -> list[float]:
    return [round(t, 3) for t, _ in rt.spawned]


def noop(*_: Any) -> None:
    pass

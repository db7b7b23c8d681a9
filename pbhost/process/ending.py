"""Ending processes: SIGTERM, a grace period, SIGKILL for what is left. The one stop routine.

Every stop in pbhost goes through `ending()`: a supervisor stopping its process group, the
sweep of escapees, the leftovers of a killed run, the PocketBase of the fast start path. The
targets are looked up afresh on every round (a group while it has members, processes matched
by their start time, pbhost's unsupervised children), so whatever appears during a stop is
ended too. `ending()` is a plan: a generator of how long to wait before the next round. Two
drivers run it: `end_blocking` where no event loop runs (time.sleep), and `end`/`start_ending`
on the loop (asyncio, woken early by an event such as "the leader has exited").

Import-light: the fast start path stops its PocketBase with this before asyncio is imported
(asyncio is imported inside the asyncio driver, which only runs once the loop exists).
"""

from __future__ import annotations

import signal
import time

from pbhost.process.spawn import killpg

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import Any, Callable, Generator, Hashable, Iterable, Protocol, TypeVar

    class Target(Protocol):
        """Something that can be signalled and asked whether it is still there."""

        @property
        def key(self) -> Hashable: ...
        def signal(self, sig: int) -> bool: ...   # False: it is gone
        def alive(self) -> bool: ...

    T = TypeVar("T", bound=Target)
    Plan = Generator[float, None, "Outcome"]

STOP_TIMEOUT = 5.0   # SIGTERM -> SIGKILL, unless a process's stopTimeout says otherwise
POLL = 0.02          # seconds between two looks at what is still alive
KILL_WAIT = 1.0      # after SIGKILL: how long the kernel may take to end them


class Group:
    """A process group, signalled as a whole (`killpg`). `reap`, where given, collects the
    leader's exit before each look: for the early path, where no reaper runs yet."""

    __slots__ = ("pgid", "_send", "_reap")

    def __init__(self, pgid: int, send: Callable[[int, int], bool] = killpg,
                 reap: Callable[[], object] | None = None) -> None:
        self.pgid = pgid
        self._send = send
        self._reap = reap

    @property
    def key(self) -> Hashable:
        return ("group", self.pgid)

    def signal(self, sig: int) -> bool:
        return self._send(self.pgid, sig)

    def alive(self) -> bool:
        if self._reap is not None:
            self._reap()
        return self._send(self.pgid, 0)


class Outcome:
    """What a stop did: the targets that needed SIGKILL."""

    __slots__ = ("killed",)

    def __init__(self) -> None:
        self.killed: list[Any] = []


def alive(targets: Iterable[T]) -> Callable[[], list[T]]:
    """A fixed set of targets, as `ending()` looks them up: those still there."""
    fixed = list(targets)
    return lambda: [t for t in fixed if t.alive()]


def ending(find: Callable[[], Iterable[T]], grace: float, *,
           kill_wait: float | None = KILL_WAIT, poll: float = POLL,
           clock: Callable[[], float] = time.monotonic,
           on_signal: Callable[[T, int], None] | None = None,
           sent: dict[Hashable, int] | None = None) -> Plan:
    """SIGTERM every target `find()` returns, wait up to `grace` for all to go, then SIGKILL
    what is left and wait up to `kill_wait` more (None: until it is gone).

    Yields the seconds to wait before the next look; returns the Outcome. A target found only
    after the grace gets SIGKILL at once. `sent` (key -> last signal) lets a caller share what
    it already signalled, so nobody is told twice; `on_signal` is told of each signal sent.
    """
    term_until = clock() + grace
    sent = {} if sent is None else sent
    outcome = Outcome()
    while True:
        targets = list(find())
        if not targets:
            return outcome
        now = clock()
        killing = now >= term_until
        sig = signal.SIGKILL if killing else signal.SIGTERM
        for target in targets:
            if sent.get(target.key) in (sig, signal.SIGKILL):
                continue
            if target.signal(sig):
                sent[target.key] = sig
                if killing:
                    outcome.killed.append(target)
                if on_signal is not None:
                    on_signal(target, sig)
        if killing and kill_wait is not None and now >= term_until + kill_wait:
            return outcome
        wake_at = now + poll if killing else min(now + poll, term_until)
        yield max(0.0, wake_at - clock())


def end_blocking(plan: Plan) -> Outcome:
    """Run a plan where no event loop runs: before it starts, or after it has closed."""
    try:
        while True:
            time.sleep(next(plan))
    except StopIteration as stop:
        result: Outcome = stop.value
        return result


async def end(plan: Plan, wake: asyncio.Event | None = None) -> Outcome:
    """Run a plan on the loop; `wake` (cleared on use) cuts a wait short, e.g. on an exit."""
    try:
        delay = next(plan)
    except StopIteration as stop:
        result: Outcome = stop.value
        return result
    return await _drive(plan, delay, wake)


def start_ending(plan: Plan) -> asyncio.Task[Outcome] | None:
    """Send the first signals now and leave the rest to a task; None when nothing was there."""
    try:
        delay = next(plan)
    except StopIteration:
        return None
    import asyncio
    return asyncio.get_running_loop().create_task(_drive(plan, delay, None))


async def _drive(plan: Plan, delay: float, wake: asyncio.Event | None) -> Outcome:
    import asyncio  # already loaded: this only runs on the loop
    try:
        while True:
            if wake is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                wake.clear()
            delay = next(plan)
    except StopIteration as stop:
        result: Outcome = stop.value
        return result

"""One process's life: spawn in its own session, keep it alive with backoff, stop its group.

Every state change goes through `_set_state`, which checks the allowed moves in `state.py`.
Exit statuses arrive from the runtime (the reaper, for real processes); nothing here waits on
a child. Everything the supervisor does to the system goes through its `Runtime`, so the fast
policy tests can drive it with scripted children and a virtual clock.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from pbhost.process.ending import STOP_TIMEOUT, Group, alive, end, ending, start_ending
from pbhost.process.reaper import describe_status, exit_code
from pbhost.process.spawn import Child, SpawnError
from pbhost.process.state import (
    ALIVE,
    HEALTHY_RUN,
    RESOURCE_RETRY_CAP,
    ProcessState,
    backoff_delay,
    can_move,
    gives_up,
)

if TYPE_CHECKING:
    from pbhost.process.runtime import Runtime

log = logging.getLogger("pbhost")
S = ProcessState


@dataclass(frozen=True)
class Launch:
    """Everything needed to spawn the process once; built fresh for every start."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str
    interpreter: str = "direct"


@dataclass(frozen=True)
class Policy:
    """Restart and stop policy of one process."""

    max_retries: int | None = None
    backoff: float = 1.0
    stop_timeout: float = STOP_TIMEOUT
    healthy_run: float = HEALTHY_RUN
    needs_ready: bool = False  # True: stays STARTING until the host calls mark_running()


class Supervisor:
    def __init__(self, proc_id: str, prepare: Callable[[], Launch], policy: Policy,
                 runtime: Runtime,
                 on_change: Callable[[Supervisor], None] | None = None) -> None:
        self.id = proc_id
        self.policy = policy
        self._prepare = prepare
        self._runtime = runtime
        self._on_change = on_change
        self.state = S.STOPPED
        self.child: Child | None = None
        self.failures = 0
        self.starved = 0                     # spawns in a row that failed for want of resources
        self.restart_count = 0
        self.last_error: str | None = None
        self.last_exit: int | None = None
        self.interpreter: str | None = None
        self.start_wall: float | None = None
        self._exited: asyncio.Future[int] | None = None
        self._backoff: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()          # one requested operation at a time per process
        self._queued: asyncio.Future[int | None] | None = None
        self._stop_gen = 0                   # bumped by stop(): a restart under way yields to it
        self.held = False                    # stopped on request: reloads leave it alone

    # -- queries --------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    @property
    def uptime(self) -> float:
        if self.child is None or self.state not in ALIVE:
            return 0.0
        return self._runtime.now() - self.child.started

    # -- state ----------------------------------------------------------------------------
    def _set_state(self, new: ProcessState) -> None:
        old = self.state
        if old is new:
            return
        if not can_move(old, new):
            raise RuntimeError(f"{self.id}: illegal move {old} -> {new}")
        self.state = new
        log.debug("%s: %s -> %s", self.id, old, new)
        if self._on_change is not None:
            self._on_change(self)

    def mark_running(self) -> None:
        if self.state is S.STARTING:
            self._set_state(S.RUNNING)

    # -- spawning -------------------------------------------------------------------------
    def spawn_now(self) -> int | None:
        """Start one run now. A process that cannot be started at all (command not found, not
        executable, cwd gone) is `crashed` at once: retrying the same exec cannot succeed. One
        that cannot be started *now* (pbhost out of fds, no memory to fork) is retried."""
        self._cancel_backoff()
        self._set_state(S.STARTING)
        try:
            launch = self._prepare()
            self.interpreter = launch.interpreter
            child = self._runtime.spawn(launch.argv, launch.env, launch.cwd)
        except SpawnError as exc:
            self.last_error = exc.strerror
            if exc.transient:
                self._retry_when_resources_return(exc.strerror or str(exc))
                return None
            self.failures += 1
            log.error("%s: cannot start: %s; marked crashed (fix it, then `pbhost start %s`)",
                      self.id, exc.strerror, self.id)
            self._set_state(S.CRASHED)
            return None
        self.adopt(child)
        return child.pid

    def _retry_when_resources_return(self, reason: str) -> None:
        """Out of fds, processes or memory: nothing is wrong with the process itself, so this
        is not a failure (maxRetries does not count it) and never `crashed`: back off (capped
        low, a retry costs nothing) and try again until resources return."""
        self.starved += 1
        n = self.starved
        delay = backoff_delay(n, max(self.policy.backoff, 0.25), RESOURCE_RETRY_CAP)
        if n == 1:
            log.error("%s: cannot start now: %s; retrying in %s, until it can", self.id, reason,
                      _secs(delay))
        elif n & (n - 1) == 0:  # attempts 2, 4, 8...: said again, not every few seconds
            log.warning("%s: still cannot start (attempt %d): %s; retrying in %s", self.id, n,
                        reason, _secs(delay))
        self._set_state(S.BACKOFF)
        self._backoff = asyncio.get_running_loop().call_later(delay, self._backoff_done)

    def adopt(self, child: Child) -> None:
        """Take charge of a spawned child (also one spawned before the loop existed)."""
        self.child = child
        self.starved = 0
        self.start_wall = child.started_wall
        self._exited = asyncio.get_running_loop().create_future()
        self._runtime.watch(child, functools.partial(self._on_exit, child))
        self._runtime.attach(self.id, child)
        if self.state is not S.STARTING:
            self._set_state(S.STARTING)
        if self.interpreter and self.interpreter != "direct":
            log.info("%s: started (pid %d, %s)", self.id, child.pid, self.interpreter)
        else:
            log.info("%s: started (pid %d)", self.id, child.pid)
        if not self.policy.needs_ready:
            self._set_state(S.RUNNING)

    def _on_exit(self, child: Child, status: int) -> None:
        ran = self._runtime.now() - child.started
        self.last_exit = exit_code(status)
        if self.child is child:
            self.child = None
        exited, self._exited = self._exited, None
        if exited is not None and not exited.done():
            exited.set_result(status)
        if self.state is S.STOPPING:
            return  # a stop is under way; it finishes the move
        # Members of the group the leader left behind are unsupervised now; ask them to go.
        self._reap_group_later(child.pgid)
        how = describe_status(status)
        if ran >= self.policy.healthy_run:
            log.warning("%s: %s after %.1fs; restarting", self.id, how, ran)
            self.failures = 0
            self.restart_count += 1
            self.spawn_now()
            return
        self.last_error = f"{how} after {ran:.1f}s"
        log.error("%s: %s", self.id, self.last_error)
        self._after_failure()

    def _after_failure(self) -> None:
        self.failures += 1
        if gives_up(self.failures, self.policy.max_retries):
            log.error("%s: giving up after %d quick failures in a row", self.id, self.failures)
            self._set_state(S.CRASHED)
            return
        delay = backoff_delay(self.failures, self.policy.backoff)
        log.warning("%s: restarting in %s (failure %d)", self.id, _secs(delay), self.failures)
        self._set_state(S.BACKOFF)
        self._backoff = asyncio.get_running_loop().call_later(delay, self._backoff_done)

    def _backoff_done(self) -> None:
        self._backoff = None
        if self.state is S.BACKOFF:
            if not self.starved:  # a retry for want of resources is not one more restart
                self.restart_count += 1
            self.spawn_now()

    def _cancel_backoff(self) -> None:
        if self._backoff is not None:
            self._backoff.cancel()
            self._backoff = None

    def _group(self, pgid: int) -> Group:
        return Group(pgid, send=self._runtime.signal_group)

    def _reap_group_later(self, pgid: int) -> None:
        """SIGTERM now, SIGKILL at the stop timeout, one look in between: off the hot path."""
        timeout = self.policy.stop_timeout
        start_ending(ending(alive([self._group(pgid)]), timeout, kill_wait=0, poll=timeout,
                            clock=self._runtime.now))

    # -- stopping -------------------------------------------------------------------------
    async def _terminate(self) -> None:
        """SIGTERM the group; once the leader and the rest of its group have gone, or at the
        stop timeout, SIGKILL what is left; return once the leader has been reaped."""
        child, exited = self.child, self._exited
        if child is None or exited is None:
            return
        self._set_state(S.STOPPING)
        timeout = self.policy.stop_timeout
        wake = asyncio.Event()
        exited.add_done_callback(lambda _: wake.set())

        def told(_: Group, sig: int) -> None:
            if sig != signal.SIGKILL:
                return
            if exited.done():  # the leader went in time, members of its group did not
                log.warning("%s: killed what was left of its process group", self.id)
            else:
                log.warning("%s: still running %s after SIGTERM; sending SIGKILL", self.id,
                            _secs(timeout))
        await end(ending(alive([self._group(child.pgid)]), timeout, clock=self._runtime.now,
                         on_signal=told), wake)
        await exited

    def kill_now(self) -> None:
        """Second Ctrl-C: SIGKILL the group at once; the pending stop completes on the exit."""
        if self.child is not None:
            self._runtime.signal_group(self.child.pgid, signal.SIGKILL)

    async def stop(self) -> None:
        """Stop and stay stopped: keep-alive leaves it alone until start() or restart()."""
        self._stop_gen += 1  # at once: a restart under way yields to this stop
        self.held = True
        self._cancel_backoff()
        # In turn with start() and restart(): run alongside them, this stop could end a child
        # they had just spawned without waiting for it (then "stopped" while it runs on) or
        # find the state they set and make an illegal move.
        async with self._lock:
            self._cancel_backoff()
            await self._terminate()
            if self.state is not S.STOPPED:
                self._set_state(S.STOPPED)
                log.info("%s: stopped", self.id)

    # -- requested operations -------------------------------------------------------------
    async def restart(self, reason: str = "requested") -> int | None:
        """A requested restart: not a failure, no backoff. Returns the new pid.

        Requests that arrive while one is waiting for its turn share its result, so a burst of
        restarts ends with exactly one live process group.
        """
        if self._queued is not None:
            return await asyncio.shield(self._queued)
        queued = self._queued = asyncio.get_running_loop().create_future()
        try:
            async with self._lock:
                if self._queued is queued:
                    self._queued = None  # from here on, a new request queues a new restart
                pid = await self._restart_now(reason)
        except BaseException:
            if self._queued is queued:
                self._queued = None
            queued.cancel()  # requests that joined this one see it cancelled
            raise
        queued.set_result(pid)
        return pid

    async def _restart_now(self, reason: str) -> int | None:
        gen = self._stop_gen
        self.held = False
        log.info("%s: restarting (%s)", self.id, reason)
        if self.state is S.CRASHED:
            self.failures = 0  # the user fixed something: give it a fresh budget
        self._cancel_backoff()
        await self._terminate()
        if gen != self._stop_gen:
            return None  # a stop arrived meanwhile: it wins
        self.restart_count += 1
        return self.spawn_now()

    async def start(self) -> int | None:
        """Start a stopped or crashed process now, with a fresh failure budget."""
        async with self._lock:
            self.held = False
            if self.child is not None:
                return self.child.pid
            self.failures = 0
            self.last_error = None
            return self.spawn_now()


def _secs(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:g}s"

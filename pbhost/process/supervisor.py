"""One process's life: spawn in its own session, keep it alive with backoff, stop its group.

Every state change goes through `_set_state`, which checks the allowed moves in `state.py`.
Exit statuses arrive from the runtime (the reaper, for real processes); nothing here waits on
a child. Everything the supervisor does to the system goes through its `Runtime`, so the fast
policy tests can drive it with scripted children and a virtual clock.

Readiness is the supervisor's too: a run is `ready` once its readiness gate passed (at once
without one). What watches a run (probes, the notify socket: health/monitor.py) plugs in as
`RunHooks` and reports back through `mark_ready`, `fail_run` and the health texts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from dataclasses import dataclass, field
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
    env: Mapping[str, str] = field(repr=False)  # secrets: never in a repr or a log line
    cwd: str
    interpreter: str = "direct"


class LaunchError(Exception):
    """The start could not be prepared (an envFile missing or malformed): like a missing
    binary, the process cannot be started at all until someone fixes it. str() is the reason."""


@dataclass(frozen=True)
class Policy:
    """Restart and stop policy of one process."""

    max_retries: int | None = None
    backoff: float = 1.0
    stop_timeout: float = STOP_TIMEOUT
    healthy_run: float = HEALTHY_RUN
    needs_ready: bool = False  # True: stays STARTING until the host calls mark_running()
    gated: bool = False        # True: a run is ready only once its readiness gate passes
    one_shot: bool = False     # a job: an exit with code 0 ends it (stopped, `completed`)


class RunHooks:
    """What watches each run (health/monitor.py); every hook does nothing unless overridden."""

    def env(self) -> Mapping[str, str]:
        """Extra environment for the next run (its NOTIFY_SOCKET), made just before the spawn;
        the process's own `env` wins over it."""
        return {}

    def begin(self, sup: Supervisor, child: Child, launch: Launch | None) -> None:
        """A run began (`launch` is None for a child spawned before the loop existed)."""

    def end(self) -> None:
        """The run is over or being stopped: stop watching it. Called more than once."""


class Supervisor:
    def __init__(self, proc_id: str, prepare: Callable[[], Launch], policy: Policy,
                 runtime: Runtime,
                 on_change: Callable[[Supervisor], None] | None = None,
                 hooks: RunHooks | None = None) -> None:
        self.id = proc_id
        self.policy = policy
        self._prepare = prepare
        self._runtime = runtime
        self._on_change = on_change
        self._hooks = hooks or RunHooks()
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
        self.retired = False                 # removed from the config: never started again
        # Health: what `ready`, `health` and the API's fields are made of.
        self._ready = False                  # this run's readiness gate passed
        self.probe_text: str | None = None   # the monitor's word: "not ready: GET / -> 503"
        self.notify_status: str | None = None  # the last STATUS= of this run (sd_notify)
        self.waiting_for: tuple[str, ...] = ()  # dependencies not met yet (set by the host)
        self.waiting_text: str | None = None
        self.completed = False               # a job whose last run exited with code 0
        self._failing: tuple[Child, str, bool] | None = None  # a liveness kill under way

    # -- queries --------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    @property
    def uptime(self) -> float:
        if self.child is None or self.state not in ALIVE:
            return 0.0
        return self._runtime.now() - self.child.started

    @property
    def ready(self) -> bool:
        """Running, and its readiness gate (if any) passed in this run."""
        return self.state is S.RUNNING and self._ready and self._failing is None

    @property
    def health(self) -> str | None:
        """A short word on health for people: `ready`, `not ready: GET /health -> 503`,
        `liveness failing 2/3 (...)`, `waiting for redis (ready)`; None: nothing to say."""
        if self.waiting_text is not None:
            return self.waiting_text
        if self.completed and self.state is S.STOPPED:
            return "completed"
        if self.state not in ALIVE:
            return None
        if self.probe_text is not None:
            return self.probe_text
        return "ready" if self.policy.gated and self._ready else None

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

    def _changed(self) -> None:
        """Something a watcher cares about changed without a state move (readiness)."""
        if self._on_change is not None:
            self._on_change(self)

    def mark_running(self) -> None:
        if self.state is S.STARTING:
            self._ready = True
            self.probe_text = None
            self._set_state(S.RUNNING)

    # -- health: reported by the run's monitor ----------------------------------------------
    def mark_ready(self, child: Child, how: str) -> None:
        """`child`'s readiness gate passed (a stale report for an earlier run is ignored)."""
        if self.child is not child or self._ready or self._failing is not None:
            return
        self._ready = True
        self.probe_text = None
        log.info("%s: ready (%s)", self.id, how)
        self._changed()

    def set_waiting(self, waiting: Sequence[str], text: str | None) -> None:
        """The host's word on dependencies: those not met yet, and how that reads."""
        self.waiting_for = tuple(waiting)
        self.waiting_text = text if waiting else None

    @property
    def failing(self) -> bool:
        """A run is being ended by pbhost's own decision (fail_run), not yet restarted."""
        return self._failing is not None

    def fail_run(self, child: Child, reason: str, healthy: bool) -> None:
        """pbhost ends `child`: it failed its liveness check or its watchdog, or stayed over
        its maxMemory. Stop its group the way a stop does (SIGTERM, stopTimeout, SIGKILL) and,
        once it has exited, restart it as after a crash: at once if the run had been `healthy`
        for long enough, else with backoff, counted towards maxRetries. `reason` becomes
        lastError; the log says it with "; restarting"."""
        if self.child is not child or self.state not in ALIVE or self._failing is not None:
            return
        self._failing = (child, reason, healthy)
        self._hooks.end()  # no further probe may pile a second failure on this one
        self.probe_text = f"{reason}; restarting"
        log.error("%s: %s; restarting", self.id, reason)
        exited = self._exited
        start_ending(ending(alive([self._group(child.pgid)]), self.policy.stop_timeout,
                            clock=self._runtime.now, on_signal=self._told(exited)))
        self._changed()

    # -- spawning -------------------------------------------------------------------------
    def spawn_now(self) -> int | None:
        """Start one run now. A process that cannot be started at all (command not found, not
        executable, cwd gone) is `crashed` at once: retrying the same exec cannot succeed. One
        that cannot be started *now* (pbhost out of fds, no memory to fork) is retried."""
        self._cancel_backoff()
        if self.retired:
            return None  # removed by a reload: whatever asks for a start comes too late
        self.completed = False
        self.set_waiting((), None)
        self._set_state(S.STARTING)
        try:
            launch = self._prepare()
            self.interpreter = launch.interpreter
            # The run's own NOTIFY_SOCKET and friends; a key the user set in `env` wins.
            env = {**self._hooks.env(), **launch.env}
            child = self._runtime.spawn(launch.argv, env, launch.cwd)
        except SpawnError as exc:
            if exc.transient:
                self._hooks.end()
                self.last_error = exc.strerror
                self._retry_when_resources_return(exc.strerror or str(exc))
                return None
            self._cannot_start(exc.strerror or str(exc))
            return None
        except LaunchError as exc:
            self._cannot_start(str(exc))
            return None
        self.adopt(child, Launch(launch.argv, env, launch.cwd, launch.interpreter))
        return child.pid

    def _cannot_start(self, reason: str) -> None:
        self._hooks.end()
        self.last_error = reason
        self.failures += 1
        log.error("%s: cannot start: %s; marked crashed (fix it, then `pbhost start %s`)",
                  self.id, reason, self.id)
        self._set_state(S.CRASHED)

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

    def adopt(self, child: Child, launch: Launch | None = None) -> None:
        """Take charge of a spawned child (also one spawned before the loop existed)."""
        self.child = child
        self.starved = 0
        self.start_wall = child.started_wall
        self._exited = asyncio.get_running_loop().create_future()
        self._ready = not (self.policy.needs_ready or self.policy.gated)
        self.probe_text = self.notify_status = None
        self._failing = None
        self._runtime.watch(child, functools.partial(self._on_exit, child))
        self._runtime.attach(self.id, child)
        if self.state is not S.STARTING:
            self._set_state(S.STARTING)
        if self.interpreter and self.interpreter != "direct":
            log.info("%s: started (pid %d, %s)", self.id, child.pid, self.interpreter)
        else:
            log.info("%s: started (pid %d)", self.id, child.pid)
        # Before any of its output can be read (that happens on a later loop turn), so a
        # readiness log line is never missed.
        self._hooks.begin(self, child, launch)
        if not self.policy.needs_ready:
            self._set_state(S.RUNNING)

    def _on_exit(self, child: Child, status: int) -> None:
        ran = self._runtime.now() - child.started
        self.last_exit = exit_code(status)
        if self.child is child:
            self.child = None
            self._hooks.end()
        failing, self._failing = self._failing, None
        exited, self._exited = self._exited, None
        if exited is not None and not exited.done():
            exited.set_result(status)
        if self.state is S.STOPPING:
            return  # a stop is under way; it finishes the move
        # Members of the group the leader left behind are unsupervised now; ask them to go.
        self._reap_group_later(child.pgid)
        if failing is not None and failing[0] is child:
            self._after_failed_run(failing[1], failing[2])
            return
        how = describe_status(status)
        if self.policy.one_shot and self.last_exit == 0:
            self.completed = True
            self.failures = 0
            log.info("%s: completed (%s after %.1fs)", self.id, how, ran)
            self._set_state(S.STOPPED)
            return
        if ran >= self.policy.healthy_run:
            log.warning("%s: %s after %.1fs; restarting", self.id, how, ran)
            self.failures = 0
            self.restart_count += 1
            self.spawn_now()
            return
        self.last_error = f"{how} after {ran:.1f}s"
        log.error("%s: %s", self.id, self.last_error)
        self._after_failure()

    def _after_failed_run(self, reason: str, healthy: bool) -> None:
        """A run ended by its liveness check: restarted like a run that exited."""
        self.last_error = reason
        if healthy:
            self.failures = 0
            self.restart_count += 1
            self.spawn_now()
            return
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
    def _told(self, exited: asyncio.Future[int] | None) -> Callable[[Group, int], None]:
        """What a stop says when it has to SIGKILL."""
        def told(_: Group, sig: int) -> None:
            if sig != signal.SIGKILL:
                return
            if exited is None or exited.done():  # the leader went in time, members did not
                log.warning("%s: killed what was left of its process group", self.id)
            else:
                log.warning("%s: still running %s after SIGTERM; sending SIGKILL", self.id,
                            _secs(self.policy.stop_timeout))
        return told

    async def _terminate(self) -> None:
        """SIGTERM the group; once the leader and the rest of its group have gone, or at the
        stop timeout, SIGKILL what is left; return once the leader has been reaped."""
        child, exited = self.child, self._exited
        if child is None or exited is None:
            return
        self._hooks.end()  # a probe failing during the stop must not restart it
        self._set_state(S.STOPPING)
        wake = asyncio.Event()
        exited.add_done_callback(lambda _: wake.set())
        await end(ending(alive([self._group(child.pgid)]), self.policy.stop_timeout,
                         clock=self._runtime.now, on_signal=self._told(exited)), wake)
        await exited

    def kill_now(self) -> None:
        """Second Ctrl-C: SIGKILL the group at once; the pending stop completes on the exit."""
        if self.child is not None:
            self._runtime.signal_group(self.child.pgid, signal.SIGKILL)

    async def stop(self) -> None:
        """Stop and stay stopped: keep-alive leaves it alone until start() or restart()."""
        self._stop_gen += 1  # at once: a restart under way yields to this stop
        self.held = True
        self.set_waiting((), None)  # it waits for nothing now: it stays stopped
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
            else:
                self._changed()  # held now: what waits for it must hear that it will not come

    # -- a reload of the config: the host's word -------------------------------------------
    async def halt(self, then: Callable[[], None] | None = None) -> None:
        """End the current run, if any, and leave the process `stopped`, neither held nor
        completed, then call `then` (a reload's reconfigure) before anything else may start it:
        a start or restart waiting for its turn runs after this, with what `then` set. In turn
        with start(), stop() and restart(), like them. The host starts it again."""
        self._cancel_backoff()
        async with self._lock:
            self._cancel_backoff()
            await self._terminate()
            self.completed = False  # a job that reruns has not completed for its dependents
            self.set_waiting((), None)
            if then is not None:
                then()
            if self.state is not S.STOPPED:
                self._set_state(S.STOPPED)
            else:
                self._changed()

    def reconfigure(self, prepare: Callable[[], Launch], policy: Policy,
                    hooks: RunHooks | None = None) -> None:
        """The next runs follow a new spec. New `hooks` only between runs (after halt(), or
        while stopped): the hooks of a live run must see it end; None keeps the current ones."""
        if hooks is not None:
            if self.child is not None:
                raise RuntimeError(f"{self.id}: new run hooks during a run")
            self._hooks = hooks
        self._prepare = prepare
        self.policy = policy

    async def retire(self) -> None:
        """Removed from the config: stop it (its whole group) for good; nothing starts it
        again, not even a request that was waiting for its turn."""
        self.retired = True
        await self.stop()

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

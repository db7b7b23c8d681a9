"""maxMemory at run time: every second, the resident memory of each limited process's whole
tree (its group, what escaped it), fed to the policy in memlimit.py; a breach restarts the
process through its supervisor (`Supervisor.fail_run`, as a failed liveness check does: the
normal graceful stop, then a restart as after a crash).

A Companion that serve.py adds only when some process sets maxMemory: without a limit nothing
samples and nothing wakes up. With limits, one /proc scan per tick serves all of them
(orphans/trees.py), and none at all while no limited process is running. When a process goes
over its limit, one more sample is taken exactly when its sustain window ends, so the restart
does not wait for the next tick (up to a second later). A reload that removes the last limit
stops the sampling (no timer at all); one that sets a limit again starts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Callable

from pbhost.limits.memlimit import Breach, RunWatch
from pbhost.orphans.proctable import PAGE
from pbhost.orphans.trees import TreeScanner
from pbhost.process.hostview import Companion
from pbhost.process.state import ALIVE

if TYPE_CHECKING:
    from pbhost.process.hostview import HostView
    from pbhost.process.supervisor import Supervisor

log = logging.getLogger("pbhost")

SAMPLE_INTERVAL = 1.0  # seconds between samples: the issue asks for at least one a second


class MemoryWatch(Companion):
    def __init__(self, interval: float = SAMPLE_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock  # the clock of Child.started
        self._scanner = TreeScanner()
        self._host: HostView | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._runs: dict[str, tuple[int, RunWatch]] = {}   # id -> (pid of the run, its watch)
        self._window_ends: dict[str, tuple[float, asyncio.TimerHandle]] = {}

    # -- Companion ------------------------------------------------------------------------
    def started(self, host: HostView) -> None:
        self._host = host
        self.reloaded(host)

    def reloaded(self, host: HostView) -> None:
        if self._host is None:
            return  # shutting down
        if not any(spec.max_memory is not None for spec in host.specs.values()):
            self._idle()
        elif self._timer is None:
            self._schedule()

    def shutting_down(self) -> None:
        self._idle()
        self._host = None  # the stops under way finish; nothing new is started

    def _idle(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _, handle in self._window_ends.values():
            handle.cancel()
        self._window_ends.clear()
        self._runs.clear()

    # -- sampling -------------------------------------------------------------------------
    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._schedule()  # first: a failing sample must not end the sampling
        self.sample()

    def sample(self) -> None:
        """One look at every limited process that is running; act on those that breached."""
        host = self._host
        if host is None:
            return
        limited = {sup.id: sup for sup in host.sidecars
                   if host.specs[sup.id].max_memory is not None and sup.pid is not None
                   and sup.state in ALIVE and not sup.failing}
        self._runs = {i: r for i, r in self._runs.items() if i in limited}
        if not limited:
            return
        now = self._clock()
        trees = self._scanner.scan({proc_id: sup.pid for proc_id, sup in limited.items()
                                    if sup.pid is not None})
        for proc_id, sup in limited.items():
            rss = sum(p.rss_pages for p in trees.get(proc_id, ())) * PAGE
            pid, watch = self._run(host, sup)
            breach = watch.observe(now, rss)
            if breach is not None:
                self._act(sup, pid, breach)
            elif watch.over_since is not None:
                self._sample_at(proc_id, watch.over_since + watch.window)
            elif proc_id in self._window_ends:
                self._window_ends.pop(proc_id)[1].cancel()  # back under: the window is off

    def _sample_at(self, proc_id: str, when: float) -> None:
        """One more sample when `proc_id`'s window ends (once per stretch over the limit)."""
        pending = self._window_ends.get(proc_id)
        if pending is not None and pending[0] == when:
            return
        if pending is not None:
            pending[1].cancel()
        delay = max(0.0, when - self._clock())
        handle = asyncio.get_running_loop().call_later(delay, self._window_end, proc_id)
        self._window_ends[proc_id] = (when, handle)

    def _window_end(self, proc_id: str) -> None:
        self._window_ends.pop(proc_id, None)
        self.sample()

    def _run(self, host: HostView, sup: Supervisor) -> tuple[int, RunWatch]:
        """The watch of the current run: a new run starts with a clean window."""
        child = sup.child
        assert child is not None  # sample() only looks at running processes
        entry = self._runs.get(sup.id)
        if entry is None or entry[0] != child.pid:
            spec = host.specs[sup.id]
            assert spec.max_memory is not None
            entry = (child.pid, RunWatch(spec.max_memory, spec.max_memory_for, child.started,
                                         sup.policy.healthy_run))
            self._runs[sup.id] = entry
        return entry

    def _act(self, sup: Supervisor, pid: int, breach: Breach) -> None:
        # Over again soon after its start: a quick failure (backoff); later: restart at once.
        if sup.child is not None and sup.child.pid == pid:
            sup.fail_run(sup.child, breach.reason(), healthy=not breach.quick)

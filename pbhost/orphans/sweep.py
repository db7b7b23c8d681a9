"""Descendants that escaped their sidecar's process group (setsid, daemonizing, double fork).

pbhost is PID 1 or a child subreaper, so once the process that started such an escapee is
gone, the escapee becomes pbhost's own child. Stopping a group does not reach it; this does:
- when a sidecar has exited (restart, backoff, stop, crash): pbhost's children that no
  supervisor owns and whose environment says `PBHOST_PROCESS_ID=<that id>` are ended, with all
  their descendants (SIGTERM, then SIGKILL after the sidecar's stop timeout);
- at shutdown, after every supervised group is gone: all of pbhost's remaining children and
  their descendants are ended, whoever they came from.
Reaping stays with the reaper: these are pbhost's children, so their exits arrive as SIGCHLD.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Callable, Collection, Hashable

from pbhost.orphans import proctable
from pbhost.orphans.proctable import ProcInfo
from pbhost.process.ending import alive, end, ending, start_ending

log = logging.getLogger("pbhost")
SWEEP_DELAY = 0.1  # after a sidecar's exit: lets its replacement start before /proc is scanned


class Sweeper:
    def __init__(self, supervised: Callable[[], Collection[int]],
                 current: Callable[[str], int | None] = lambda proc_id: None) -> None:
        self._supervised = supervised  # pids of the live supervised children: never touched
        self._current = current  # an id's live child (its replacement after an exit), if any
        self._me = os.getpid()
        self._pending: dict[str, float] = {}  # id -> grace, for the next sweep
        self._timer: asyncio.TimerHandle | None = None
        self._signalled: dict[Hashable, int] = {}  # (pid, start) -> the signal sent already

    def escaped(self, proc_id: str | None = None,
                before: int | None = None) -> list[ProcInfo]:
        """Unsupervised children of pbhost (from `proc_id` only, if given; started before the
        start time `before` only, if given) and their descendants."""
        procs = list(proctable.all_processes())
        return self._escaped_in(procs, self._orphans(procs), proc_id, before)

    def _orphans(self, procs: list[ProcInfo]) -> list[ProcInfo]:
        keep = set(self._supervised())
        return [p for p in procs if p.ppid == self._me and p.pid not in keep and p.state != "Z"]

    @staticmethod
    def _escaped_in(procs: list[ProcInfo], orphans: list[ProcInfo], proc_id: str | None,
                    before: int | None) -> list[ProcInfo]:
        roots = [p.pid for p in orphans
                 if (before is None or p.start < before)
                 and (proc_id is None
                      or proctable.environ(p.pid).get("PBHOST_PROCESS_ID") == proc_id)]
        return [p for p in proctable.subtrees(roots, procs) if p.state != "Z"] if roots else []

    def after_exit(self, proc_id: str, grace: float) -> None:
        """A sidecar's process exited: end what it left outside its group, off the hot path
        (scheduled after the restart's spawn, not before it). Exits close together share one
        sweep, so one look at /proc: 100 sidecars stopping at once made 100 scans of it."""
        self._pending[proc_id] = grace
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SWEEP_DELAY, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        pending, self._pending = self._pending, {}
        procs = list(proctable.all_processes())
        orphans = self._orphans(procs)
        if not orphans:  # the usual case: nothing escaped any group
            return
        self._signalled = {k: s for k, s in self._signalled.items() if _still_there(k)}
        for proc_id, grace in pending.items():
            # A replacement may be running already (a restart does not wait for this sweep):
            # what it left outside its group since it started is its own, not the exited run's.
            replacement = self._current(proc_id)
            since = proctable.start_time(replacement) if replacement else None
            found = self._escaped_in(procs, orphans, proc_id, since)
            if not found:
                continue
            for p in found:
                log.warning("%s: ending pid %d (%s), left behind when it exited", proc_id,
                            p.pid, proctable.cmdline(p.pid))
            # SIGTERM now, SIGKILL at the grace's end: one look in between, no polling.
            start_ending(ending(alive(found), grace, kill_wait=0, poll=grace,
                                sent=self._signalled))

    async def end_all(self, grace: float) -> int:
        """Shutdown, after the supervised groups: end every remaining child of pbhost and its
        descendants; SIGKILL what is left after `grace`. Returns how many were ended."""
        ended: set[Hashable] = set()

        def told(p: ProcInfo, sig: int) -> None:
            ended.add(p.key)
            if sig == signal.SIGTERM:
                log.info("ending pid %d (%s), left behind outside a stopped group",
                         p.pid, proctable.cmdline(p.pid))
            else:
                log.warning("killing pid %d (%s): still running %gs after SIGTERM", p.pid,
                            proctable.cmdline(p.pid), grace)
        await end(ending(self.escaped, grace, on_signal=told, sent=dict(self._signalled)))
        return len(ended)


def _still_there(key: Hashable) -> bool:
    return isinstance(key, tuple) and proctable.is_alive(*key)

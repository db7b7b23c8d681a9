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
        self._pending: set[str] = set()
        self._signalled: dict[Hashable, int] = {}  # (pid, start) -> the signal sent already

    def escaped(self, proc_id: str | None = None,
                before: int | None = None) -> list[ProcInfo]:
        """Unsupervised children of pbhost (from `proc_id` only, if given; started before the
        start time `before` only, if given) and their descendants."""
        procs = list(proctable.all_processes())
        keep = set(self._supervised())
        roots = [p.pid for p in procs
                 if p.ppid == self._me and p.pid not in keep and p.state != "Z"
                 and (before is None or p.start < before)
                 and (proc_id is None
                      or proctable.environ(p.pid).get("PBHOST_PROCESS_ID") == proc_id)]
        return [p for p in proctable.subtrees(roots, procs) if p.state != "Z"]

    def after_exit(self, proc_id: str, grace: float) -> None:
        """A sidecar's process exited: end what it left outside its group, off the hot path
        (scheduled after the restart's spawn, not before it)."""
        if proc_id in self._pending:
            return
        self._pending.add(proc_id)
        asyncio.get_running_loop().call_later(SWEEP_DELAY, self._sweep_one, proc_id, grace)

    def _sweep_one(self, proc_id: str, grace: float) -> None:
        self._pending.discard(proc_id)
        # A replacement may be running already (a restart does not wait for this sweep): what
        # it left outside its group since it started is its own, not the exited run's.
        replacement = self._current(proc_id)
        since = proctable.start_time(replacement) if replacement else None
        procs = self.escaped(proc_id, before=since)
        if not procs:
            return
        self._signalled = {k: s for k, s in self._signalled.items() if _still_there(k)}
        for p in procs:
            log.warning("%s: ending pid %d (%s), left behind when it exited", proc_id,
                        p.pid, proctable.cmdline(p.pid))
        # SIGTERM now, SIGKILL at the grace's end: one look in between, no polling.
        start_ending(ending(alive(procs), grace, kill_wait=0, poll=grace, sent=self._signalled))

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

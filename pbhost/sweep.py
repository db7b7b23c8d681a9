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
from typing import Callable, Collection

from . import proctable
from .proctable import ProcInfo

log = logging.getLogger("pbhost")
POLL = 0.02
SWEEP_DELAY = 0.1  # after a sidecar's exit: lets its replacement start before /proc is scanned
KILL_WAIT = 1.0  # after SIGKILL: time for the kernel to take them before pbhost exits


class Sweeper:
    def __init__(self, supervised: Callable[[], Collection[int]],
                 current: Callable[[str], int | None] = lambda proc_id: None) -> None:
        self._supervised = supervised  # pids of the live supervised children: never touched
        self._current = current  # an id's live child (its replacement after an exit), if any
        self._me = os.getpid()
        self._pending: set[str] = set()
        self._signalled: set[tuple[int, int]] = set()  # (pid, start) sent SIGTERM already

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
        self._signalled = {k for k in self._signalled if proctable.is_alive(*k)}
        self._signalled.update((p.pid, p.start) for p in procs)
        for p in procs:
            log.warning("%s: ending pid %d (%s), left behind when it exited", proc_id,
                        p.pid, proctable.cmdline(p.pid))
            proctable.signal_if_same(p, signal.SIGTERM)
        asyncio.get_running_loop().call_later(grace, _kill_survivors, procs)

    async def end_all(self, grace: float) -> int:
        """Shutdown, after the supervised groups: end every remaining child of pbhost and its
        descendants; SIGKILL what is left after `grace`. Returns how many were ended."""
        loop = asyncio.get_running_loop()
        term_until = loop.time() + grace
        kill_until = term_until + KILL_WAIT
        sent = {signal.SIGTERM: set(self._signalled), signal.SIGKILL: set[tuple[int, int]]()}
        while (procs := self.escaped()) and loop.time() < kill_until:
            sig = signal.SIGTERM if loop.time() < term_until else signal.SIGKILL
            for p in procs:
                if (p.pid, p.start) in sent[sig]:
                    continue
                sent[sig].add((p.pid, p.start))
                if sig == signal.SIGTERM:
                    log.info("ending pid %d (%s), left behind outside a stopped group",
                             p.pid, proctable.cmdline(p.pid))
                else:
                    log.warning("killing pid %d (%s): still running %gs after SIGTERM", p.pid,
                                proctable.cmdline(p.pid), grace)
                proctable.signal_if_same(p, sig)
            await asyncio.sleep(POLL)
        return len(sent[signal.SIGTERM] | sent[signal.SIGKILL])


def _kill_survivors(procs: list[ProcInfo]) -> int:
    return sum(proctable.signal_if_same(p, signal.SIGKILL) for p in procs)

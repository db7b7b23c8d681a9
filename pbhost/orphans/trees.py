"""Which live processes make up each supervised process's tree: the members of its process
group, what they started outside it (setsid, daemons), and escapees re-parented to pbhost
whose environment carries its PBHOST_PROCESS_ID (sweep.py ends those; here they are counted).

One pass over /proc answers for every process asked about, and costs little more on a busy
machine than on a quiet one: a process is classified once, when its pid first appears in
/proc, and its tree (or none) is remembered. After that a pass lists /proc, reads
/proc/<pid>/stat for the processes in the trees asked about (their memory and CPU, and their
start time: the same process, not a recycled pid) and for new pids, and nothing for the rest.
A tree is fixed at fork: a child is in its parent's tree, so first sight decides. Between two
passes further apart than RECHECK, a pid could have been recycled unseen (the kernel goes round
all of pid_max first): then every pid is classified afresh.
"""

from __future__ import annotations

import os
import time
from typing import Mapping

from pbhost.orphans import proctable
from pbhost.orphans.proctable import ProcInfo

PROCESS_ID_ENV = "PBHOST_PROCESS_ID"
RECHECK = 5.0  # seconds: passes further apart than this classify every pid again


class TreeScanner:
    def __init__(self, me: int | None = None) -> None:
        self._me = me if me is not None else os.getpid()
        self._owned: dict[int, tuple[int, str]] = {}  # pid -> (start ticks, its tree's id)
        self._seen: set[str] = set()                  # /proc names classified already
        self._at = float("-inf")                      # time.monotonic() of the last pass

    def scan(self, roots: Mapping[str, int]) -> dict[str, list[ProcInfo]]:
        """id -> the live processes of its tree; `roots` maps each id asked about to its
        group leader's pid (the process group id: every child is its own group leader)."""
        found: dict[str, list[ProcInfo]] = {proc_id: [] for proc_id in roots}
        try:
            names = set(os.listdir("/proc"))
        except OSError:
            return found
        now = time.monotonic()
        if now - self._at > RECHECK:
            self._seen = set()
        self._at = now
        groups = {pgid: proc_id for proc_id, pgid in roots.items()}
        owner: dict[int, tuple[int, str]] = {}  # this pass's verdicts, every tree's
        fresh: dict[int, ProcInfo] = {}         # outside the groups asked about, unplaced
        for pid, (start, proc_id) in self._owned.items():
            if str(pid) not in names:
                continue  # gone
            if proc_id not in roots:
                owner[pid] = (start, proc_id)  # a tree nobody asks about now: kept, not read
                continue
            info = proctable.proc_info(pid)
            if info is None or info.state == "Z":
                continue
            if info.start != start:
                fresh[pid] = info  # a recycled pid: a new process, placed afresh below
                continue
            owner[pid] = (start, proc_id)
            found[proc_id].append(info)
        new = [int(name) for name in names - self._seen if name.isdigit()]
        for pid in [*new, *(p for p in roots.values() if p not in owner)]:
            if pid in owner or pid in fresh:
                continue
            info = proctable.proc_info(pid)
            if info is None or info.state == "Z":
                continue
            group = groups.get(info.pgid)
            if group is None:
                fresh[pid] = info
                continue
            owner[pid] = (info.start, group)
            found[group].append(info)
        for pid, info in fresh.items():
            tree = self._descent(pid, fresh, owner)
            if tree is not None:
                owner[pid] = (info.start, tree)
                if tree in found:
                    found[tree].append(info)
        self._owned, self._seen = owner, names
        return found

    def _descent(self, pid: int, fresh: Mapping[int, ProcInfo],
                 owner: Mapping[int, tuple[int, str]]) -> str | None:
        """The tree of a process first seen outside the groups asked about: that of its
        nearest ancestor in a tree, or, where the line reaches pbhost, the id in the
        environment of the process pbhost is the parent of (a sidecar, or an escapee whose
        parents have exited)."""
        seen: set[int] = set()
        current = pid
        while current in fresh and current not in seen:
            seen.add(current)
            parent = fresh[current].ppid
            if parent in owner:
                return owner[parent][1]
            if parent == self._me:
                return proctable.environ(current).get(PROCESS_ID_ENV) or None
            current = parent
        return None

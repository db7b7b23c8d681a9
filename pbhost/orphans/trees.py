"""Which live processes make up each supervised process's tree: the members of its process
group, what they started outside it (setsid, daemons), and escapees re-parented to pbhost
whose environment carries its PBHOST_PROCESS_ID (sweep.py ends those; here they are counted).

One pass over /proc answers for every process asked about. A process is classified once, when
it is first seen, and its owner is remembered with its start time; after that a scan opens
/proc/<pid>/stat only for processes that belong to a tree (for their memory and CPU) and asks
every other pid for its process group alone (one getpgid call, no file opened), so a busy
machine costs little more than a quiet one. A pid is remembered only while it is listed: the
kernel gives it to a new process only after going round all of pid_max, not within a scan's
interval.
"""

from __future__ import annotations

import os
from typing import Mapping

from pbhost.orphans import proctable
from pbhost.orphans.proctable import ProcInfo

PROCESS_ID_ENV = "PBHOST_PROCESS_ID"


class TreeScanner:
    def __init__(self, me: int | None = None) -> None:
        self._me = me if me is not None else os.getpid()
        self._owned: dict[int, tuple[int, str]] = {}  # pid -> (start ticks, owner id)
        self._others: set[int] = set()                # pids seen and found to be nobody's

    def scan(self, roots: Mapping[str, int]) -> dict[str, list[ProcInfo]]:
        """id -> the live processes of its tree; `roots` maps each id asked about to its
        group leader's pid (the process group id: every child is its own group leader)."""
        found: dict[str, list[ProcInfo]] = {proc_id: [] for proc_id in roots}
        try:
            names = os.listdir("/proc")
        except OSError:
            return found
        groups = {pgid: proc_id for proc_id, pgid in roots.items()}
        owner: dict[int, tuple[int, str]] = {}  # this scan's verdicts, every tree's
        fresh: dict[int, ProcInfo] = {}         # first seen, outside the groups asked about
        others: set[int] = set()
        for name in names:
            if not name.isdigit():
                continue
            pid = int(name)
            try:
                proc_id = groups.get(os.getpgid(pid))
            except OSError:
                continue  # gone meanwhile
            known = self._owned.get(pid)
            if proc_id is None and known is not None and known[1] not in roots:
                owner[pid] = known  # a tree nobody asks about now: kept, not read
                continue
            if proc_id is None and known is None and pid in self._others:
                others.add(pid)
                continue
            info = proctable.proc_info(pid)
            if info is None or info.state == "Z":
                continue
            if proc_id is None and known is not None and known[0] == info.start:
                proc_id = known[1]  # it was in a tree, and stays in it (escaped by setsid)
            if proc_id is None:
                fresh[pid] = info
                continue
            owner[pid] = (info.start, proc_id)
            found[proc_id].append(info)
        for pid, info in fresh.items():
            tree = self._descent(pid, fresh, owner)
            if tree is None:
                others.add(pid)
                continue
            owner[pid] = (info.start, tree)
            if tree in found:
                found[tree].append(info)
        self._owned, self._others = owner, others
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

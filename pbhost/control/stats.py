"""CPU % and resident memory of whole process trees, read from /proc (Linux; zeros elsewhere).

A sidecar's cost is its tree's: an agent that forks workers, a shell running a pipeline, a
daemon that left the group with setsid() are measured with everything they started
(orphans/trees.py finds them). CPU % is the change of utime+stime between two samples, so
samples are taken at most every `min_interval` seconds (clock ticks are 10 ms: a shorter
window would read 0 % or 1000 %); list requests in between get the last figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

from pbhost.orphans.proctable import CLK_TCK, PAGE, ProcInfo
from pbhost.orphans.trees import TreeScanner

PROC = "/proc"
FORGET = 60.0  # seconds a sample of a process nobody asks about is kept


@dataclass(frozen=True)
class Usage:
    cpu: float = 0.0     # percent of one core, summed over the tree
    memory: int = 0      # resident bytes, summed over the tree


@dataclass
class _Sample:
    at: float                            # time.monotonic()
    pid: int                             # the run it is of: a restart starts afresh
    ticks: dict[tuple[int, int], int]    # (pid, start time) -> utime+stime, per member
    usage: Usage


class GroupStats:
    def __init__(self, min_interval: float = 1.0) -> None:
        self.min_interval = min_interval
        self._last: dict[str, _Sample] = {}
        self._scanner = TreeScanner()

    def usage(self, roots: Mapping[str, int]) -> dict[str, Usage]:
        """Usage per process id, given each one's pid; one sampled less than min_interval
        ago (in the same run) is not re-read."""
        now = time.monotonic()
        stale = {proc_id: pid for proc_id, pid in roots.items()
                 if proc_id not in self._last or self._last[proc_id].pid != pid
                 or now - self._last[proc_id].at >= self.min_interval}
        if stale:
            self._resample(stale, now)
        # Forget processes nobody asked about for a while (stopped, or gone from the config).
        self._last = {i: s for i, s in self._last.items() if i in roots or now - s.at < FORGET}
        return {i: self._last[i].usage for i in roots if i in self._last}

    def _resample(self, roots: Mapping[str, int], now: float) -> None:
        trees = self._scanner.scan(roots)
        uptime = _boot_uptime()
        for proc_id, pid in roots.items():
            procs = trees.get(proc_id, [])
            ticks = {p.key: p.cpu_ticks for p in procs}
            memory = sum(p.rss_pages for p in procs) * PAGE
            prev = self._last.get(proc_id)
            if prev is not None and prev.pid == pid:
                # A member missing from the last sample started since: all its ticks are new.
                used = sum(t - prev.ticks.get(key, 0) for key, t in ticks.items())
                span = now - prev.at
            else:
                # First look at this run: its average since the leader started.
                used = sum(ticks.values())
                span = max((uptime - _leader_start(procs, pid)) if uptime else 0.0, 0.0)
            cpu = 100.0 * max(used, 0) / CLK_TCK / span if span > 0.01 else 0.0
            self._last[proc_id] = _Sample(now, pid, ticks, Usage(round(cpu, 1), memory))


def _boot_uptime() -> float:
    try:
        with open(f"{PROC}/uptime", "rb") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def _leader_start(procs: list[ProcInfo], pid: int) -> float:
    """Seconds after boot at which the run began (its leader, else its oldest member)."""
    starts = [p.start for p in procs if p.pid == pid] or [p.start for p in procs]
    return min(starts) / CLK_TCK if starts else 0.0

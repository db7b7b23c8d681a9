"""CPU % and resident memory of whole process groups, read from /proc (Linux; zeros elsewhere).

A sidecar's cost is its group's: an agent that forks workers or a shell running a pipeline is
measured with everything it started. CPU % is the change of utime+stime between two samples,
so samples are taken at most every `min_interval` seconds (clock ticks are 10 ms: a shorter
window would read 0 % or 1000 %); list requests in between get the last figures.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterable

from pbhost.orphans import proctable

try:
    CLK_TCK = os.sysconf("SC_CLK_TCK")
    PAGE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):  # not POSIX enough: report zeros
    CLK_TCK, PAGE = 100, 4096

PROC = "/proc"
FORGET = 60.0  # seconds a sample of a group nobody asks about is kept


@dataclass(frozen=True)
class Usage:
    cpu: float = 0.0     # percent of one core, summed over the group
    memory: int = 0      # resident bytes, summed over the group


@dataclass
class _Sample:
    at: float                            # time.monotonic()
    ticks: dict[tuple[int, int], int]    # (pid, start time) -> utime+stime, per member
    usage: Usage


class GroupStats:
    def __init__(self, min_interval: float = 1.0) -> None:
        self.min_interval = min_interval
        self._last: dict[int, _Sample] = {}

    def usage(self, pgids: Iterable[int]) -> dict[int, Usage]:
        """Usage per process group id; a group seen less than min_interval ago is not re-read."""
        wanted = set(pgids)
        now = time.monotonic()
        fresh = {g for g in wanted
                 if g in self._last and now - self._last[g].at < self.min_interval}
        stale = wanted - fresh
        if stale:
            self._resample(stale, now)
        # Forget groups nobody asked about for a while (they are gone, or restarted).
        self._last = {g: s for g, s in self._last.items() if g in wanted or now - s.at < FORGET}
        return {g: self._last[g].usage for g in wanted if g in self._last}

    def _resample(self, pgids: set[int], now: float) -> None:
        members = scan_groups(pgids)
        uptime = _boot_uptime()
        for pgid in pgids:
            procs = members.get(pgid, [])
            ticks = {(pid, start): t for pid, start, t, _ in procs}
            memory = sum(rss for *_, rss in procs) * PAGE
            prev = self._last.get(pgid)
            if prev is not None:
                # A member missing from the last sample started since: all its ticks are new.
                used = sum(t - prev.ticks.get(key, 0) for key, t in ticks.items())
                span = now - prev.at
            else:
                # First look at this group: its average since the leader started.
                used = sum(ticks.values())
                span = max((uptime - _leader_start(procs, pgid)) if uptime else 0.0, 0.0)
            cpu = 100.0 * max(used, 0) / CLK_TCK / span if span > 0.01 else 0.0
            self._last[pgid] = _Sample(now, ticks, Usage(round(cpu, 1), memory))


def scan_groups(pgids: set[int]) -> dict[int, list[tuple[int, int, int, int]]]:
    """pgid -> [(pid, start ticks, utime+stime ticks, rss pages)] for every live member."""
    out: dict[int, list[tuple[int, int, int, int]]] = {}
    try:
        names = os.listdir(PROC)
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            # getpgid is one syscall; reading stat is three: only read the members' stat.
            if os.getpgid(pid) not in pgids:
                continue
        except OSError:
            continue  # gone meanwhile
        info = proctable.proc_info(pid)
        if info is None or info.state == "Z":
            continue
        out.setdefault(info.pgid, []).append((pid, info.start, info.cpu_ticks, info.rss_pages))
    return out


def _boot_uptime() -> float:
    try:
        with open(f"{PROC}/uptime", "rb") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def _leader_start(procs: list[tuple[int, int, int, int]], pgid: int) -> float:
    """Seconds after boot at which the group began (its leader, else its oldest member)."""
    starts = [start for pid, start, _, _ in procs if pid == pgid] or [s for _, s, _, _ in procs]
    return min(starts) / CLK_TCK if starts else 0.0

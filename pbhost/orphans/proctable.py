"""Reading the process table from /proc (Linux): start times, environments, subtrees.

Where /proc does not exist every query finds nothing, so the sweeps built on it do nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator

try:
    CLK_TCK = os.sysconf("SC_CLK_TCK")   # the unit of start, cpu_ticks
    PAGE = os.sysconf("SC_PAGE_SIZE")    # the unit of rss_pages
except (AttributeError, ValueError, OSError):  # not POSIX enough: nothing is read anyway
    CLK_TCK, PAGE = 100, 4096


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    start: int   # field 22 of /proc/<pid>/stat: clock ticks after boot
    state: str   # "R", "S", "Z", ...
    comm: str
    cpu_ticks: int = 0  # utime + stime (fields 14, 15), clock ticks
    rss_pages: int = 0  # field 24

    # As a target of process/ending.py: this very process, never whoever recycles its pid.
    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start)

    def signal(self, sig: int) -> bool:
        return signal_if_same(self, sig)

    def alive(self) -> bool:
        return is_alive(self.pid, self.start)


def _parse_stat(pid: int, data: bytes) -> ProcInfo:
    # comm may contain spaces and parentheses: split at the last ")".
    close = data.rindex(b")")
    comm = data[data.index(b"(") + 1:close].decode("utf-8", "replace")
    f = data[close + 2:].split()
    # f[0] is field 3 (state); field n is f[n - 3].
    return ProcInfo(pid, int(f[1]), int(f[2]), int(f[3]), int(f[19]), f[0].decode(), comm,
                    int(f[11]) + int(f[12]), int(f[21]))


def proc_info(pid: int) -> ProcInfo | None:
    # os.open/os.read, not open(): no buffered file object, a third of the cost, which counts
    # when maxMemory reads every member of every limited tree each second.
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _parse_stat(pid, os.read(fd, 4096))  # one read: procfs hands it out whole
    except (OSError, ValueError, IndexError):
        return None
    finally:
        os.close(fd)


def start_time(pid: int) -> int | None:
    info = proc_info(pid)
    return info.start if info is not None else None


def all_processes() -> Iterator[ProcInfo]:
    """Every process visible in /proc (about 10 µs each); zombies included."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if name.isdigit():
            info = proc_info(int(name))
            if info is not None:
                yield info


def is_alive(pid: int, start: int) -> bool:
    """The very process that had this start time is still there (and not a zombie)."""
    info = proc_info(pid)
    return info is not None and info.start == start and info.state != "Z"


def environ(pid: int) -> dict[str, str]:
    """The environment a process was started with; {} when unreadable (gone, other user)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def cmdline(pid: int, limit: int = 80) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return "?"
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def subtrees(roots: Iterable[int], procs: Iterable[ProcInfo]) -> list[ProcInfo]:
    """`roots` and all their descendants, from one snapshot of the process table."""
    by_parent: dict[int, list[ProcInfo]] = {}
    by_pid: dict[int, ProcInfo] = {}
    for p in procs:
        by_parent.setdefault(p.ppid, []).append(p)
        by_pid[p.pid] = p
    out: list[ProcInfo] = []
    todo = [by_pid[r] for r in roots if r in by_pid]
    seen: set[int] = set()
    while todo:
        p = todo.pop()
        if p.pid in seen:
            continue
        seen.add(p.pid)
        out.append(p)
        todo.extend(by_parent.get(p.pid, ()))
    return out


def signal_if_same(p: ProcInfo, sig: int) -> bool:
    """Signal `p` unless its pid now belongs to someone else; False if it is gone."""
    if not is_alive(p.pid, p.start):
        return False
    try:
        os.kill(p.pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # not ours to end


def boot_id() -> str:
    """Start times are ticks since boot: they only compare within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""

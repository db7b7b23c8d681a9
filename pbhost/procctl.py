"""Linux process plumbing: prctl (subreaper, parent-death signal) and reading /proc.

Everything degrades to a no-op where it does not exist (not Linux, no /proc): pbhost still
supervises its direct children, it just cannot catch what escapes them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PDEATHSIG = signal.SIGKILL  # a child must not outlive a pbhost that was killed outright

_prctl: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    try:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        _prctl = None


def set_child_subreaper() -> bool:
    """Make orphaned descendants re-parent to us instead of init. False if not possible."""
    return _prctl is not None and _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def pdeathsig_hook() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child die with its parent, or None where unsupported.

    Runs in the child between fork and exec. The signal fires when the parent *thread* that
    forked it ends; pbhost spawns only from its one loop thread, so that is pbhost's death.
    The kernel keeps the setting across execve (PocketBase's own re-exec on a hook change
    included) except for set-uid/set-gid binaries.
    """
    prctl = _prctl
    parent = os.getpid()
    if prctl is None or parent == 1:
        # As PID 1 the kernel ends the whole namespace with us; skipping the hook keeps
        # subprocess on its fast vfork path.
        return None

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, PDEATHSIG, 0, 0, 0)
        if os.getppid() != parent:  # pbhost died before the prctl: nobody would tell us
            os.kill(os.getpid(), PDEATHSIG)
    return hook


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    start: int   # field 22 of /proc/<pid>/stat: clock ticks after boot
    state: str   # "R", "S", "Z", ...
    comm: str


def _parse_stat(pid: int, data: bytes) -> ProcInfo:
    # comm may contain spaces and parentheses: split at the last ")".
    close = data.rindex(b")")
    comm = data[data.index(b"(") + 1:close].decode("utf-8", "replace")
    f = data[close + 2:].split()
    # f[0] is field 3 (state); field n is f[n - 3].
    return ProcInfo(pid, int(f[1]), int(f[2]), int(f[3]), int(f[19]), f[0].decode(), comm)


def proc_info(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return _parse_stat(pid, f.read())
    except (OSError, ValueError, IndexError):
        return None


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

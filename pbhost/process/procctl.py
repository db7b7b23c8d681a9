"""Process control for pbhost (Linux): child subreaper, the file-descriptor limit, and what every
child does between fork and exec (its parent-death signal, the fd limit pbhost started with).

A no-op where prctl does not exist: pbhost still supervises its direct children, it just
cannot catch what escapes them. Only ctypes and resource here: spawn.py uses this on the fast
start path, where importing typing or dataclasses would delay PocketBase.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PDEATHSIG = signal.SIGKILL  # a child must not outlive a pbhost that was killed outright

_prctl: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    try:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        _prctl = None

# RLIMIT_NOFILE as pbhost was started with, once raise_nofile() has raised pbhost's own; every
# child gets it back before exec. None: unchanged, children inherit it as it is.
_child_nofile: tuple[int, int] | None = None


def set_child_subreaper() -> bool:
    """Make orphaned descendants re-parent to us instead of init. False if not possible."""
    return _prctl is not None and _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def raise_nofile() -> int:
    """Raise pbhost's soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force.

    A soft limit of 1024 (systemd's default, most shells') is one client opening 1,100 idle
    connections away from a pbhost that cannot make the pipes of a restart. pbhost uses epoll,
    never select(), so a high limit costs it nothing. Its children get the limit it was started
    with back (`preexec_hook`), as Go does since 1.19, so a child written for select() is not
    surprised. Idempotent: the fast path and the click path may both call it.
    """
    global _child_nofile
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _child_nofile is not None or soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        return soft  # e.g. an unlimited hard limit the kernel refuses as a soft one: keep ours
    _child_nofile = (soft, hard)
    return hard


def nofile_limit() -> int:
    """pbhost's soft RLIMIT_NOFILE now: the number of file descriptors it may hold."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def preexec_hook() -> Callable[[], None] | None:
    """A `preexec_fn` for every child, or None when a child needs nothing done before exec
    (subprocess then takes its faster vfork path).

    It gives the child the fd limit pbhost was started with (when raise_nofile changed pbhost's)
    and makes the child die with its parent. The parent-death signal fires when the parent
    *thread* that forked it ends; pbhost spawns only from its one loop thread, so that is
    pbhost's death. The setting belongs to the child's thread: it survives that thread's execve
    (not a set-uid one), but a program that re-execs from another thread loses it. PocketBase
    does that on a hook change (from a Go thread); state.json lets the next run end it then.
    As PID 1 there is no parent-death signal to set: the kernel ends the whole namespace with us.
    """
    parent = os.getpid()
    prctl = _prctl if parent != 1 else None
    nofile = _child_nofile
    if prctl is None and nofile is None:
        return None

    def hook() -> None:
        # Between fork and exec: nothing here may raise (that would fail the spawn).
        if nofile is not None:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
            except (OSError, ValueError):
                pass
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, PDEATHSIG, 0, 0, 0)
            if os.getppid() != parent:  # pbhost died before the prctl: nobody would tell us
                os.kill(os.getpid(), PDEATHSIG)
    return hook

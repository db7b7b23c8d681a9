"""prctl for pbhost (Linux): child subreaper, and the parent-death signal of its children.

A no-op where prctl does not exist: pbhost still supervises its direct children, it just
cannot catch what escapes them. Only ctypes here: spawn.py uses this on the fast start path,
where importing typing or dataclasses would delay PocketBase.
"""

from __future__ import annotations

import ctypes
import os
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


def set_child_subreaper() -> bool:
    """Make orphaned descendants re-parent to us instead of init. False if not possible."""
    return _prctl is not None and _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def pdeathsig_hook() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child die with its parent, or None where unsupported.

    Runs in the child between fork and exec. The signal fires when the parent *thread* that
    forked it ends; pbhost spawns only from its one loop thread, so that is pbhost's death.
    The setting belongs to the child's thread: it survives that thread's execve (not a
    set-uid one), but a program that re-execs from another thread loses it. PocketBase does
    that on a hook change (from a Go thread); state.json lets the next run end it then.
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

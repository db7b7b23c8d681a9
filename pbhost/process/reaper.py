"""The only place that calls waitpid.

SIGCHLD is handled on the event loop; the handler reaps every exited child until none is left
and hands each raw status to the callback registered for that pid. Children of ours that nobody
watches (orphans adopted as PID 1 or as a subreaper) are reaped too, so no zombie is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Callable

log = logging.getLogger("pbhost")

ExitCallback = Callable[[int], None]  # receives the raw wait status


def exit_code(status: int) -> int:
    """Shell convention: the exit code, or 128+n for a child killed by signal n."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


class Reaper:
    def __init__(self) -> None:
        # A child spawned before the loop existed (PocketBase on the fast start path) must be
        # watched before install(), whose first reap may already collect it.
        self._watched: dict[int, ExitCallback] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()  # anything that exited before the handler existed

    def uninstall(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self._loop = None

    def watch(self, pid: int, callback: ExitCallback) -> None:
        self._watched[pid] = callback

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            callback = self._watched.pop(pid, None)
            if callback is not None:
                try:
                    callback(status)
                except Exception:  # a bug in one supervisor must not stall reaping the rest
                    log.exception("handling the exit of pid %d failed", pid)
            else:
                log.debug("reaped pid %d (%s), not one of ours directly", pid,
                          describe_status(status))

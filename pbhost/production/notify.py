"""systemd at run time: sd_notify (READY, STATUS, STOPPING, WATCHDOG) and journal detection.
No libsystemd: the protocol is one datagram per message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Mapping, Protocol, Sequence

from pbhost.process.state import ProcessState

log = logging.getLogger("pbhost")


class Notifier:
    """Sends sd_notify messages when NOTIFY_SOCKET is set; does nothing otherwise."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = _socket_address(address) if address else None
        self.watchdog = watchdog_usec / 1e6 if watchdog_usec else None
        self._sock: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_status: str | None = None
        self._failed = False
        self._ready = False  # READY=1 was sent: a reload may say RELOADING=1, then READY=1

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Notifier:
        usec = None
        pid = environ.get("WATCHDOG_PID")
        if pid in (None, "", str(os.getpid())):  # the watchdog is meant for us, not a parent
            try:
                usec = int(environ.get("WATCHDOG_USEC", "")) or None
            except ValueError:
                usec = None
        return cls(environ.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> None:
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            if not self._failed:  # say it once; the service itself keeps working
                log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"),
                            exc.strerror or exc)
                self._failed = True

    def ready(self, status: str) -> None:
        self._last_status = status
        self._ready = True
        self.send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        """A reload of the config begins (`systemctl status` shows "reloading"); only once
        ready: before that, systemd is still waiting for the start-up's READY=1."""
        if self._ready:
            usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)
            self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the process file")

    def reloaded(self) -> None:
        if self._ready:
            self.send(f"READY=1\nSTATUS={self._last_status or 'running'}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping")

    def start_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        """WATCHDOG=1 every half WATCHDOG_USEC: the only timer pbhost keeps while idle."""
        if self.enabled and self.watchdog:
            self._ping(loop)

    def _ping(self, loop: asyncio.AbstractEventLoop) -> None:
        self.send("WATCHDOG=1")
        assert self.watchdog is not None
        self._timer = loop.call_later(self.watchdog / 2, self._ping, loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Described(Protocol):
    """What a status line needs of a process (a Supervisor is one)."""

    id: str
    state: ProcessState

    @property
    def ready(self) -> bool: ...


def status_line(supervisors: Sequence[Described]) -> str:
    """One line for `systemctl status`: PocketBase's state, then the sidecars', naming those
    not running and those running but not ready yet (a readiness probe, a dependency)."""
    pb, sidecars = supervisors[0], supervisors[1:]
    text = f"{pb.id} {pb.state}"  # PocketBase is `starting` until /api/health answers
    if sidecars:
        up = sum(s.state is ProcessState.RUNNING for s in sidecars)
        text += f"; {up}/{len(sidecars)} sidecars running"
        others = [f"{s.id} {s.state}" if s.state is not ProcessState.RUNNING
                  else f"{s.id} not ready" for s in sidecars
                  if s.state is not ProcessState.RUNNING or not s.ready]
        if others:
            text += " (" + ", ".join(others) + ")"
    return text


def _socket_address(value: str) -> str | bytes:
    """`@name` is an abstract socket (a leading NUL byte); anything else a path."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def stdout_is_journal(environ: Mapping[str, str], fd: int = 1) -> bool:
    """True when `fd` is the stream systemd connected to the journal (JOURNAL_STREAM=dev:ino)."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(fd)
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError):
        return False

"""A sidecar's own NOTIFY_SOCKET: the sd_notify protocol (READY=1, WATCHDOG=1, STATUS=...) that
systemd's sd_notify(3), Python's `sdnotify` and many libraries speak, heard by pbhost.

One datagram socket per run, in the abstract namespace (`@pbhost-...`: no file to clean up after
a kill -9, no 108-byte sun_path limit to mind for a deep data dir). Per run, so a message sent by
what an earlier run left behind cannot reach (or mark ready) the run after it. Read on the loop
with `add_reader`: a process that never sends costs one idle fd. The kernel stamps each datagram
with its sender's credentials (SO_PASSCRED); only our own user (or root) is heard, which is what
a socket file in a 0700 folder would give. pbhost's own NOTIFY_SOCKET (from systemd) is never
passed on (runenv.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from typing import Callable

log = logging.getLogger("pbhost")

MAX_DATAGRAM = 4096       # sd_notify messages are short; longer ones are cut
MAX_STATUS = 200          # characters of STATUS= kept for `pbhost ls`
BURST = 64                # datagrams read per wake-up, so a flood cannot starve the loop
_UCRED = struct.Struct("3i")  # pid, uid, gid
_NAME_MAX = 107           # sun_path is 108 bytes, the first is the abstract namespace's NUL

Message = dict[str, str]


def parse(data: bytes) -> Message:
    """`READY=1\\nSTATUS=Loading model` -> {"READY": "1", "STATUS": "Loading model"}."""
    out: Message = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            out[key] = value
    return out


def clean_status(text: str) -> str:
    """A STATUS= text fit for one table cell: no control characters, bounded."""
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()[:MAX_STATUS]


class NotifySocket:
    """Bound at once (messages sent before the loop reads are queued by the kernel)."""

    def __init__(self, name: str) -> None:
        self.name = name[:_NAME_MAX]
        self._sock = socket.socket(socket.AF_UNIX,
                                   socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._sock.bind(b"\0" + self.name.encode())
        except OSError:
            self._sock.close()
            raise
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_message: Callable[[Message], None] | None = None
        self._uids = {0, os.geteuid()}

    @property
    def address(self) -> str:
        """The NOTIFY_SOCKET value: `@` stands for the abstract namespace's leading NUL."""
        return "@" + self.name

    def start(self, loop: asyncio.AbstractEventLoop, on_message: Callable[[Message], None]) -> None:
        self._loop = loop
        self._on_message = on_message
        loop.add_reader(self._sock.fileno(), self._readable)
        self._readable()  # what the process sent before the loop got here

    def _readable(self) -> None:
        for _ in range(BURST):
            try:
                data, ancdata, _, _ = self._sock.recvmsg(MAX_DATAGRAM,
                                                         socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("notify socket %s: %s", self.address, exc)
                return
            if not self._trusted(ancdata):
                continue
            if self._on_message is not None and data:
                self._on_message(parse(data))

    def _trusted(self, ancdata: list[tuple[int, int, bytes]]) -> bool:
        for level, kind, value in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS \
                    and len(value) >= _UCRED.size:
                _, uid, _ = _UCRED.unpack_from(value)
                if uid in self._uids:
                    return True
                log.debug("notify socket %s: ignored a message from uid %d", self.address, uid)
                return False
        return False

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._on_message = None

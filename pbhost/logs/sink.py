"""pbhost's stdout as a non-blocking sink with a bounded backlog.

Children must never wait for whoever reads pbhost's output (a slow terminal, a stalled pipe).
So the output fd is written non-blocking; what cannot be written now waits in a backlog of
at most `limit` bytes; beyond that the oldest whole lines are dropped and counted per
process, and a notice saying how many goes out as soon as the output accepts data again.

Pieces hold whole lines of one owner, so dropping from the front never cuts a line and a
partial write only ever leaves the rest of one line (`_inflight`), written before anything
else.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import stat
import time
from collections import deque
from typing import Callable

_IOV_MAX = 512  # well under the kernel's 1024 iovecs per writev


class BacklogWriter:
    """Ordered, non-blocking writes of line pieces to one fd, memory bounded by `limit`."""

    def __init__(self, fd: int, limit: int, notice: Callable[[dict[str, int]], bytes],
                 on_broken: Callable[[OSError], None] | None = None) -> None:
        self.fd = fd
        self.limit = limit
        self.dropped: dict[str, int] = {}       # lines lost per owner, since start
        self.dropped_total = 0
        self._notice = notice                   # renders "dropped N lines from <id>" lines
        self._unreported: dict[str, int] = {}   # drops not yet announced in the output
        self._queue: deque[tuple[str, bytes]] = deque()
        self._size = 0                          # bytes in _queue
        self._inflight = b""                    # rest of a partly written line: never dropped
        self._loop: asyncio.AbstractEventLoop | None = None
        self._saved_flags: int | None = None
        self._shared_fd: int | None = None      # the caller's fd, while we write a private one
        self._scheduled = False
        self._waiting = False                   # add_writer registered: fd is full
        self._broken = False                    # EPIPE & co: the reader is gone for good
        self._on_broken = on_broken             # told once, when that happens
        self._holding = False                   # closing: queue only, close() writes

    @property
    def backlog(self) -> int:
        return self._size + len(self._inflight)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        private = _private_nonblocking(self.fd)
        if private is not None:
            self._shared_fd, self.fd = self.fd, private
            return
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        self._saved_flags = flags
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

    def put(self, owner: str, data: bytes) -> None:
        """Queue whole lines of `owner`; written on this loop iteration if the fd allows."""
        if self._broken:
            self._count_drop(owner, data.count(b"\n"))
            return
        self._queue.append((owner, data))
        self._size += len(data)
        if self._size > self.limit:
            self._trim()
        if self._holding:
            return
        if self._loop is None:
            self._drain_until(time.monotonic() + 5.0)  # before start / after close: synchronous
        elif not (self._scheduled or self._waiting):
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def detach(self) -> None:
        """Leave the loop (it may be closed already); queue without writing until close()."""
        if self._waiting and self._loop is not None:
            self._loop.remove_writer(self.fd)
        self._waiting = False
        self._scheduled = False  # a call_soon flush may never run now
        self._loop = None
        self._holding = True

    def close(self, timeout: float) -> None:
        """Write what is left, waiting at most `timeout`, then give the fd its flags back."""
        self.detach()
        self._holding = False
        self._drain_until(time.monotonic() + timeout)
        self._discard_rest()
        if self._saved_flags is not None:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self._saved_flags)
            self._saved_flags = None
        if self._shared_fd is not None:
            os.close(self.fd)
            self.fd, self._shared_fd = self._shared_fd, None

    # -- writing ----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write until done or the fd is full; on full, wait for add_writer to call again."""
        self._scheduled = False
        while self._pending():
            written = self._write_some()
            if written is None:  # would block
                self._wait_writable()
                return
        if self._waiting and self._loop is not None:
            self._loop.remove_writer(self.fd)
            self._waiting = False

    def _pending(self) -> bool:
        if self._unreported and not self._broken:
            self._inflight += self._notice(self._unreported)
            self._unreported = {}
        return bool(self._inflight or self._queue)

    def _write_some(self) -> int | None:
        """One writev of the head of the output; None if the fd is full."""
        bufs = [self._inflight] if self._inflight else []
        bufs.extend(piece for _, piece in _take(self._queue, _IOV_MAX - len(bufs)))
        try:
            n = os.writev(self.fd, bufs)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:  # EPIPE, EIO...: nobody will ever read what we write
            self._broken = True
            self._discard_rest()
            if self._on_broken is not None:
                self._on_broken(exc)
            return 0
        self._consume(n)
        return n

    def _consume(self, n: int) -> None:
        """Forget `n` written bytes; a line cut by a short write moves to _inflight."""
        if self._inflight:
            k = min(n, len(self._inflight))
            self._inflight = self._inflight[k:]
            n -= k
        while n and self._queue:
            owner, piece = self._queue[0]
            if n >= len(piece):
                self._queue.popleft()
                self._size -= len(piece)
                n -= len(piece)
                continue
            nl = piece.find(b"\n", n) + 1  # every piece ends with "\n", so nl > n
            self._inflight = piece[n:nl]
            rest = piece[nl:]
            self._size -= len(piece) - len(rest)
            if rest:
                self._queue[0] = (owner, rest)
            else:
                self._queue.popleft()
            n = 0

    def _wait_writable(self) -> None:
        if self._waiting or self._loop is None:
            return
        try:
            self._loop.add_writer(self.fd, self._flush)
            self._waiting = True
        except (PermissionError, ValueError):
            # A regular file cannot be polled (and never says EAGAIN): just try again soon.
            self._scheduled = True
            self._loop.call_later(0.01, self._flush)

    def _drain_until(self, deadline: float) -> None:
        """Blocking-style flush with a deadline, for close() and use outside the loop."""
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while self._pending():
            if self._write_some() is not None:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return
            poller.poll(left * 1000)

    # -- dropping ---------------------------------------------------------------------------

    def _trim(self) -> None:
        """Drop the oldest whole lines until the backlog fits in `limit`."""
        while self._size > self.limit and self._queue:
            owner, piece = self._queue[0]
            excess = self._size - self.limit
            nl = piece.find(b"\n", excess - 1) + 1
            if nl <= 0 or nl >= len(piece):
                self._queue.popleft()
                self._size -= len(piece)
                self._count_drop(owner, piece.count(b"\n"))
            else:
                self._queue[0] = (owner, piece[nl:])
                self._size -= nl
                self._count_drop(owner, piece.count(b"\n", 0, nl))

    def _count_drop(self, owner: str, lines: int) -> None:
        self.dropped[owner] = self.dropped.get(owner, 0) + lines
        self.dropped_total += lines
        self._unreported[owner] = self._unreported.get(owner, 0) + lines

    def _discard_rest(self) -> None:
        """What could not be written (timeout, broken fd) counts as dropped."""
        for owner, piece in self._queue:
            self._count_drop(owner, piece.count(b"\n"))
        self._queue.clear()
        self._size = 0
        self._inflight = b""
        self._unreported = {}


def tell_stderr(text: str) -> None:
    """Write one line to fd 2 if it can take it now; never block, never raise (stderr may be
    the very pipe that broke, or a terminal that is gone)."""
    try:
        poller = select.poll()
        poller.register(2, select.POLLOUT)
        ready = poller.poll(0)
        if ready and ready[0][1] & select.POLLOUT and not ready[0][1] & select.POLLERR:
            os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


def _private_nonblocking(fd: int) -> int | None:
    """The same terminal or pipe opened anew, non-blocking, or None where that cannot be done.

    O_NONBLOCK belongs to the open file description, which pbhost's stdout shares with its
    stderr and with the shell that started it: set on fd 1 itself, a traceback on stderr could
    fail with EAGAIN and a `kill -9` would leave the terminal non-blocking. A description of our
    own avoids both. Regular files need neither (always writable); sockets (the journal) cannot
    be reopened, so for those the caller falls back to setting the flag on the shared one.
    """
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
            return None
        return os.open(f"/proc/self/fd/{fd}",
                       os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None


def _take(queue: deque[tuple[str, bytes]], n: int) -> list[tuple[str, bytes]]:
    """The first `n` items of a deque without copying all of it."""
    if len(queue) <= n:
        return list(queue)
    return [queue[i] for i in range(n)]

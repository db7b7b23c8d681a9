"""Basic log stream: child pipes -> prefixed lines on one output (the fast one replaces this)."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping

CHUNK = 1 << 18


@dataclass(frozen=True)
class LogRecord:
    ts: float
    id: str
    stream: str
    text: str


def want_color(fd: int, environ: Mapping[str, str], flag: bool | None) -> bool:
    if flag is False or environ.get("NO_COLOR"):
        return False
    if flag or environ.get("FORCE_COLOR"):
        return True
    return os.isatty(fd)


class LogStream:
    def __init__(self, out_fd: int = 1, *, color: bool = False, fmt: str = "text",
                 timestamps: bool = False, ring_size: int = 1000,
                 backlog_bytes: int = 4 << 20, syslog_prefix: bool = False) -> None:
        self.out_fd = out_fd
        self.syslog_prefix = syslog_prefix  # stdout is the journal: each line gets <priority>
        self.color = color
        self.rings: dict[str, collections.deque[LogRecord]] = {}
        self.ring_size = ring_size
        self.partial: dict[tuple[str, str], bytes] = {}
        self.subscribers: list[Callable[[LogRecord], None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dropped_total = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def register(self, proc_id: str) -> None:
        self.rings.setdefault(proc_id, collections.deque(maxlen=self.ring_size))

    def attach(self, proc_id: str, stream: str, fd: int) -> None:
        assert self.loop is not None
        self.loop.add_reader(fd, self._read, proc_id, stream, fd)

    def _read(self, proc_id: str, stream: str, fd: int) -> None:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        key = (proc_id, stream)
        if not data:
            assert self.loop is not None
            self.loop.remove_reader(fd)
            os.close(fd)
            rest = self.partial.pop(key, b"")
            if rest:
                self._emit(proc_id, stream, [rest])
            return
        data = self.partial.pop(key, b"") + data
        lines = data.split(b"\n")
        if lines[-1]:
            self.partial[key] = lines[-1]
        self._emit(proc_id, stream, lines[:-1])

    def _emit(self, proc_id: str, stream: str, lines: list[bytes]) -> None:
        out = []
        tag = f"[{proc_id}][{stream.upper()}] "
        if self.syslog_prefix:
            tag = syslog_priority(logging.ERROR if stream == "stderr" else logging.INFO) + tag
        ring = self.rings[proc_id]
        for raw in lines:
            text = raw.decode("utf-8", "replace").rstrip("\r")
            rec = LogRecord(time.time(), proc_id, stream, text)
            ring.append(rec)
            for fn in self.subscribers:
                fn(rec)
            out.append(tag + text + "\n")
        self._write("".join(out).encode())

    def system(self, levelno: int, text: str) -> None:
        head = syslog_priority(levelno) if self.syslog_prefix else ""
        self._write(f"{head}[pbhost] {text}\n".encode())

    def _write(self, data: bytes) -> None:
        while data:
            n = os.write(self.out_fd, data)
            data = data[n:]

    def tail(self, proc_id: str, n: int) -> list[LogRecord]:
        return list(self.rings[proc_id])[-n:]

    def subscribe(self, fn: Callable[[LogRecord], None]) -> Callable[[], None]:
        self.subscribers.append(fn)
        return lambda: self.subscribers.remove(fn)

    def close(self, timeout: float) -> None:
        pass


def syslog_priority(levelno: int) -> str:
    """The `<n>` journald reads as a line's priority: err 3, warning 4, info 6, debug 7."""
    if levelno >= logging.ERROR:
        return "<3>"
    if levelno >= logging.WARNING:
        return "<4>"
    return "<6>" if levelno >= logging.INFO else "<7>"


class LogStreamHandler(logging.Handler):
    def __init__(self, stream: LogStream) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.system(record.levelno, self.format(record))

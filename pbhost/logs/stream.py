"""Every child's pipes → one prefixed, coloured stream on pbhost's stdout.

`[ai-agent][STDOUT] Hello`, `[ai-agent][STDERR] ...`, `[pbhost] ...`. The fast path never
touches a line on its own: a pipe is read in 256 KiB chunks from an `add_reader` callback,
the whole lines of a chunk are prefixed with one `bytes.replace`, and the result is queued
as one piece on a non-blocking, bounded `BacklogWriter`. A `logging` call per line would be
about 40x slower. pbhost's own messages come through `LogStreamHandler` → `system()` and
share the same queue, so nothing interleaves mid-line.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sys
import termios
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from pbhost.errors import UnknownProcess
from pbhost.logs.lines import LineSplitter, clean, strip_escapes
from pbhost.logs.render import LEVELS, SYSTEM_ID, Renderer
from pbhost.logs.sink import BacklogWriter, tell_stderr

__all__ = ["LogRecord", "LogStream", "LogStreamHandler"]

CHUNK = 256 * 1024
# After a pipe had data, it is read again this much later instead of on its next write; see
# _on_readable. It is also the most a line waits behind others of a busy pipe.
COALESCE = 0.001
REDRAW_INTERVAL = 1.0     # at most one in-flight progress-bar redraw per second per pipe
RING_BYTES = 1 << 20      # a ring also stops at 1 MiB, so 1,000 huge lines cannot eat RAM


@dataclass(frozen=True)
class LogRecord:
    ts: float     # epoch seconds when pbhost read the line
    id: str
    stream: str   # "stdout" | "stderr" | "system"
    text: str
    seq: int = 0  # the line's number in its process's log, from 1: a cursor for readers


class _Ring:
    """Last `size` lines of one process, kept as the raw blocks they arrived in.

    `seq` counts every line ever added; each block keeps the number of its last line, so a
    reader can ask for what came after the last line it saw (`since`) at no per-line cost here.
    """

    __slots__ = ("blocks", "lines", "nbytes", "size", "seq")

    def __init__(self, size: int) -> None:
        # (time, stream, block, its line count, the seq of its last line)
        self.blocks: deque[tuple[float, str, bytes, int, int]] = deque()
        self.lines = self.nbytes = self.seq = 0
        self.size = size

    def add(self, ts: float, stream: str, block: bytes, n: int = -1) -> None:
        if n < 0:
            n = block.count(b"\n")
        self.seq += n
        self.blocks.append((ts, stream, block, n, self.seq))
        self.lines += n
        self.nbytes += len(block)
        while len(self.blocks) > 1 and (self.lines - self.blocks[0][3] >= self.size
                                        or self.nbytes > RING_BYTES):
            _, _, old, k, _ = self.blocks.popleft()
            self.lines -= k
            self.nbytes -= len(old)

    def tail(self, proc_id: str, n: int) -> list[LogRecord]:
        out: list[LogRecord] = []
        if n <= 0:
            return out
        for ts, stream, block, k, last in reversed(self.blocks):
            lines = _records(proc_id, stream, ts, block, last - k + 1)
            out[:0] = lines[-(n - len(out)):]
            if len(out) >= n:
                break
        return out[-min(n, self.size):]

    def since(self, proc_id: str, after: int, n: int) -> list[LogRecord]:
        """The first `n` kept lines numbered above `after`, oldest first. A cursor above the
        newest line comes from an earlier pbhost run: everything kept is newer than it."""
        if after > self.seq:
            after = 0
        after = max(after, self.seq - self.size)  # the same `size` lines as tail() shows
        newer: list[tuple[float, str, bytes, int, int]] = []
        for blk in reversed(self.blocks):
            if blk[4] <= after:
                break
            newer.append(blk)
        out: list[LogRecord] = []
        for ts, stream, block, k, last in reversed(newer):
            first = last - k + 1
            out.extend(_records(proc_id, stream, ts, block, first)[max(0, after + 1 - first):])
            if len(out) >= n:
                break
        return out[:max(0, n)]


def _records(proc_id: str, stream: str, ts: float, block: bytes,
             first: int) -> list[LogRecord]:
    """The lines of a block as records; `first` is the seq of its first line."""
    return [LogRecord(ts, proc_id, stream, line, seq)
            for seq, line in enumerate(_texts(block), first)]


def _texts(block: bytes) -> list[str]:
    return strip_escapes(block, keep_sgr=False).decode("utf-8", "replace").split("\n")[:-1]


def _first_lines(block: bytes, k: int) -> bytes:
    """The first `k` whole lines of a block of whole lines."""
    return b"\n".join(block.split(b"\n", k)[:k]) + b"\n"


# How many of the next n lines of (id, stream) a subscriber takes.
Wants = Callable[[str, str, int], int]
# A subscriber of whole chunks: (id, stream, time, the lines' texts, the seq of the first).
Batch = Callable[[str, str, float, list[str], int], None]


class _Sub:
    """A subscriber: its callback and, optionally, how many lines of a chunk it takes."""

    __slots__ = ("fn", "batch", "wants", "active")

    def __init__(self, fn: Callable[[LogRecord], None] | None, wants: Wants | None,
                 batch: Batch | None = None) -> None:
        self.fn = fn
        self.batch = batch
        self.wants = wants
        self.active = True  # False once unsubscribed: checked per line, so O(1)


class _Reader:
    """One attached pipe: its partial line, its prefix, its progress-bar throttle and, while
    it rests, the timer that reads it next (`wake`)."""

    __slots__ = ("fd", "id", "stream", "split", "prefix", "last_redraw", "pending", "timer",
                 "wake")

    def __init__(self, fd: int, proc_id: str, stream: str, prefix: bytes) -> None:
        self.fd = fd
        self.id = proc_id
        self.stream = stream
        self.split = LineSplitter()
        self.prefix = prefix
        self.last_redraw = float("-inf")
        self.pending: bytes | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.wake: asyncio.TimerHandle | None = None


class LogStream:
    """The one output stream; see docs/architecture.md for how the host drives it."""

    def __init__(self, out_fd: int = 1, *, color: bool = False, fmt: str = "text",
                 timestamps: bool = False, ring_size: int = 1000,
                 backlog_bytes: int = 4 << 20, syslog_prefix: bool = False) -> None:
        # syslog_prefix: stdout is the journal; each line starts with its <priority>.
        self._render = Renderer(color, fmt, timestamps, syslog_prefix)
        self._ring_size = ring_size
        self._out = BacklogWriter(out_fd, backlog_bytes, self._drop_notice, _output_gone)
        self._rings: dict[str, _Ring] = {}
        self._prefixes: dict[tuple[str, str], bytes] = {}
        self._readers: dict[int, _Reader] = {}
        self._siblings: dict[str, list[_Reader]] = {}  # a process's attached pipes
        self._subs: list[_Sub] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.register(SYSTEM_ID)

    @property
    def dropped_total(self) -> int:
        return self._out.dropped_total

    @property
    def dropped(self) -> dict[str, int]:
        """Lines dropped per process id because pbhost's output could not keep up."""
        return dict(self._out.dropped)

    @property
    def open_pipes(self) -> int:
        """Child pipes attached and not yet at EOF."""
        return len(self._readers)

    @property
    def backlog(self) -> int:
        """Bytes waiting for pbhost's output fd (bounded by backlog_bytes + one line)."""
        return self._out.backlog

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._out.start(loop)

    def register(self, proc_id: str) -> None:
        if proc_id in self._rings:
            return
        self._rings[proc_id] = _Ring(self._ring_size)
        for stream in ("stdout", "stderr"):
            self._prefixes[proc_id, stream] = self._render.prefix(proc_id, stream)

    def attach(self, proc_id: str, stream: str, fd: int) -> None:
        """Own the read end `fd` of a child's pipe until EOF (then it is closed here)."""
        if self._loop is None:
            raise RuntimeError("LogStream.attach() before start()")
        if stream not in LEVELS:
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        self.register(proc_id)
        os.set_blocking(fd, False)
        reader = _Reader(fd, proc_id, stream, self._prefixes[proc_id, stream])
        self._readers[fd] = reader
        self._siblings.setdefault(proc_id, []).append(reader)
        self._loop.add_reader(fd, self._on_readable, reader)

    def system(self, levelno: int, text: str) -> None:
        """A `[pbhost] ...` line (several if `text` has newlines), in order with the rest."""
        ts = time.time()
        block = self._system_block(text)
        self._rings[SYSTEM_ID].add(ts, "system", block)
        self._publish(SYSTEM_ID, "system", ts, block)
        self._out.put(SYSTEM_ID, self._render.system(levelno, block, ts))

    def tail(self, proc_id: str, n: int, after: int | None = None) -> list[LogRecord]:
        """The last `n` kept lines of `proc_id`; with `after`, the first `n` numbered above it
        (LogRecord.seq), so that a poller sees every kept line once."""
        ring = self._rings.get(proc_id)
        if ring is None:
            raise UnknownProcess(proc_id)
        return ring.tail(proc_id, n) if after is None else ring.since(proc_id, after, n)

    def subscribe(self, fn: Callable[[LogRecord], None],
                  wants: Wants | None = None) -> Callable[[], None]:
        """Call `fn` for every line from now on; returns the function that stops it.

        With `wants(id, stream, n)`, asked once per chunk of n whole lines, `fn` gets only the
        first lines of the chunk, as many as it answers (0: none). Lines nobody takes are never
        split into records, which keeps a flood cheap for a rate-limited subscriber."""
        return self._add(_Sub(fn, wants))

    def subscribe_batches(self, fn: Batch, wants: Wants) -> Callable[[], None]:
        """Like `subscribe`, but `fn(id, stream, ts, texts)` gets the lines of a chunk at once,
        as strings (no LogRecord each): for a subscriber whose cost must not grow per line,
        such as the one feeding every SSE follower."""
        return self._add(_Sub(None, wants, fn))

    def _add(self, sub: _Sub) -> Callable[[], None]:
        self._subs.append(sub)

        def unsubscribe() -> None:
            sub.active = False
            if sub in self._subs:
                self._subs.remove(sub)
        return unsubscribe

    def close(self, timeout: float) -> None:
        """Take what the pipes still hold, write everything out (at most `timeout`), restore
        the output fd's flags. Lines logged after this are written synchronously."""
        deadline = time.monotonic() + timeout
        # The loop may be closed already (the host calls this after asyncio.run): stop using it.
        loop, self._loop = self._loop, None
        self._out.detach()
        for reader in list(self._readers.values()):
            if loop is not None:
                loop.remove_reader(reader.fd)
            self._drain(reader, deadline)
        self._out.close(max(0.0, deadline - time.monotonic()))

    # -- reading ----------------------------------------------------------------------------

    # A pipe is either watched (add_reader: read as soon as it has data) or resting (a timer
    # reads it COALESCE later). Watching a busy pipe is dear for both ends: a pipe that has
    # been polled wakes its waiter on every write(2), so a child flushing each line paid a
    # wake-up per line and pbhost ran a loop turn for each ~60-byte read (1.09 s of CPU per
    # million lines, 0.17 s resting; scripts/bench_pipe.py). A resting pipe has no waiter:
    # writes are plain copies, and the next read takes the ~1 ms of lines that collected. A
    # lone line after a quiet spell is read at once (the pipe was watched), and a pipe found
    # empty is watched again, so an idle pipe costs no wake-ups.
    # Only one pipe of a process rests at a time, and it is read before a sibling that wakes
    # (_catch_up), so resting does not reorder a process's stdout and stderr.

    def _on_readable(self, reader: _Reader) -> None:
        paced = not self._catch_up(reader)
        got = self._read_once(reader)
        if got and paced and self._attached(reader):
            assert self._loop is not None
            self._loop.remove_reader(reader.fd)
            self._rest(reader, got)

    def _attached(self, reader: _Reader) -> bool:
        return self._loop is not None and reader.fd in self._readers

    def _rest(self, reader: _Reader, got: int) -> None:
        assert self._loop is not None
        # A full chunk means more is waiting: read it on the next loop turn, not 1 ms later.
        reader.wake = self._loop.call_later(0 if got == CHUNK else COALESCE, self._on_due,
                                            reader)

    def _on_due(self, reader: _Reader) -> None:
        reader.wake = None
        if not self._attached(reader):
            return
        got = self._read_once(reader)
        if not self._attached(reader):
            return  # ended (EOF) while being read
        assert self._loop is not None
        if got:
            self._rest(reader, got)
        else:  # quiet again: level-triggered epoll reports data that came in meanwhile
            self._loop.add_reader(reader.fd, self._on_readable, reader)

    def _catch_up(self, reader: _Reader) -> bool:
        """Before `reader` is read: read its process's resting pipe, if one rests, and watch it
        again; True if there was one. What it holds was written before what woke `reader`: a
        Python sidecar's `print()` followed by a traceback on stderr must not show the
        traceback first. With two busy pipes, both are watched: their order needs it."""
        found = False
        for other in tuple(self._siblings.get(reader.id, ())):
            if other is reader or other.wake is None:
                continue
            found = True
            other.wake.cancel()
            other.wake = None
            self._read_once(other)
            if self._attached(other):
                assert self._loop is not None
                self._loop.add_reader(other.fd, self._on_readable, other)
        return found

    def _read_once(self, reader: _Reader, size: int = CHUNK) -> int:
        """One chunk from the pipe: its size; 0 when it had nothing (would block) or ended."""
        try:
            chunk = os.read(reader.fd, size)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:  # EIO and friends: treat as end of stream
            chunk = b""
        if not chunk:
            self._detach(reader)
            return 0
        block, redraw = reader.split.feed(chunk)
        if block:
            reader.pending = None  # a finished line supersedes any throttled redraw
            self._emit(reader, block)
        if redraw is not None:
            self._redraw(reader, redraw)
        return len(chunk)

    def _drain(self, reader: _Reader, deadline: float) -> None:
        """At close: take what is already in the pipe (until the deadline), then detach.

        Only what is there now (FIONREAD): a child still flooding cannot keep shutdown busy,
        and the last read ends where its last write ended, not in the middle of a line that
        a cut at a chunk's size would have written out half."""
        try:
            left = int.from_bytes(fcntl.ioctl(reader.fd, termios.FIONREAD, bytes(4)),
                                  sys.byteorder)
        except OSError:
            left = CHUNK  # cannot tell: one read
        while left > 0 and time.monotonic() < deadline:
            got = self._read_once(reader, min(CHUNK, left))
            if not got:
                break
            left -= got
        if reader.fd in self._readers:
            self._detach(reader)

    def _detach(self, reader: _Reader) -> None:
        """EOF: flush the partial last line, stop watching and close the fd."""
        del self._readers[reader.fd]
        siblings = self._siblings[reader.id]
        siblings.remove(reader)
        if not siblings:
            del self._siblings[reader.id]
        if self._loop is not None:
            self._loop.remove_reader(reader.fd)
        if reader.timer is not None:
            reader.timer.cancel()
        if reader.wake is not None:
            reader.wake.cancel()
        os.close(reader.fd)
        last = reader.split.finish()
        if last:
            self._emit(reader, last)

    def _redraw(self, reader: _Reader, line: bytes) -> None:
        """A progress bar redraw: show it at most once per REDRAW_INTERVAL, the latest wins."""
        wait = reader.last_redraw + REDRAW_INTERVAL - time.monotonic()
        if wait <= 0:
            reader.last_redraw = time.monotonic()
            reader.pending = None
            self._emit(reader, line + b"\n")
            return
        reader.pending = line
        if reader.timer is None and self._loop is not None:
            reader.timer = self._loop.call_later(wait, self._redraw_due, reader)

    def _redraw_due(self, reader: _Reader) -> None:
        reader.timer = None
        line, reader.pending = reader.pending, None
        if line is not None and reader.fd in self._readers:
            self._redraw(reader, line)

    # -- output -----------------------------------------------------------------------------

    def _emit(self, reader: _Reader, block: bytes) -> None:
        """Whole lines of one pipe → ring, subscribers, output queue."""
        ts = time.time()
        block = clean(block, keep_sgr=self._render.color)
        n = block.count(b"\n")  # once: ring, subscribers and renderer each needed it
        self._rings[reader.id].add(ts, reader.stream, block, n)
        if self._subs:
            self._publish(reader.id, reader.stream, ts, block, n)
        self._out.put(reader.id, self._render.child(reader.id, reader.stream, reader.prefix,
                                                    block, ts, n))

    def _system_block(self, text: str) -> bytes:
        raw = ("\n".join(text.splitlines()) + "\n").encode("utf-8", "replace")
        return clean(raw, keep_sgr=False)

    def _drop_notice(self, counts: dict[str, int]) -> bytes:
        text = "\n".join(f"dropped {n} lines from {pid}" for pid, n in counts.items())
        ts = time.time()
        block = self._system_block(text)
        self._rings[SYSTEM_ID].add(ts, "system", block)
        return self._render.system(logging.WARNING, block, ts)

    def _publish(self, proc_id: str, stream: str, ts: float, block: bytes, n: int = -1) -> None:
        if n < 0:
            n = block.count(b"\n")
        takes = [(sub, n if sub.wants is None else min(n, sub.wants(proc_id, stream, n)))
                 for sub in list(self._subs)]
        most = max((k for _, k in takes), default=0)
        if most <= 0:
            return
        first = self._rings[proc_id].seq - n + 1  # the ring took this block just before
        texts = _texts(block if most >= n else _first_lines(block, most))
        records: list[LogRecord] | None = None
        for sub, k in takes:
            if k <= 0 or not sub.active:
                continue
            try:
                if sub.batch is not None:
                    sub.batch(proc_id, stream, ts, texts if k >= len(texts) else texts[:k],
                              first)
                    continue
                if records is None:
                    records = [LogRecord(ts, proc_id, stream, text, seq)
                               for seq, text in enumerate(texts, first)]
                assert sub.fn is not None
                for rec in records[:k]:
                    if not sub.active:
                        break  # removed meanwhile (a membership test here was O(subscribers))
                    sub.fn(rec)
            except Exception:  # a broken follower must not break the stream
                if sub.active:
                    sub.active = False
                    self._subs.remove(sub)


def _output_gone(exc: OSError) -> None:
    """pbhost's stdout reader went away (`pbhost serve | head`, a killed `tee`): supervising goes
    on, the rings keep every process's last lines; say so once, where someone may still read."""
    tell_stderr(f"[pbhost] its output is gone ({exc.strerror or exc}); pbhost keeps supervising "
                "and keeps each process's last lines for pbhost logs and the control API\n")


class LogStreamHandler(logging.Handler):
    """Routes pbhost's own `logging` records into `LogStream.system()`."""

    def __init__(self, stream: LogStream, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.stream = stream
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.system(record.levelno, self.format(record))
        except Exception:
            self.handleError(record)

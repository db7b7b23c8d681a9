"""`?follow=1` log followers (SSE), all fed by one subscription to the log stream.

Each line is encoded as an SSE event once, however many clients follow it, and a chunk of
lines reaches each follower as one piece of bytes: a follower costs pbhost a few operations
per chunk, not per line. (Followers that each subscribed and JSON-encoded every line made a
flooding child run 100x slower with 50 of them, pbhost being too busy to read its pipes.)
A follower that falls FOLLOW_QUEUE lines behind loses the newest lines, counted and told.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    from pbhost.logs.stream import LogRecord, LogStream

FOLLOW_QUEUE = 10_000      # lines a slow follower may lag behind before lines are dropped
HEARTBEAT = 15.0           # seconds between SSE comments, so dead clients are noticed

Send = Callable[[bytes], Awaitable[None]]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def record(rec: LogRecord) -> dict[str, Any]:
    return {"time": iso(rec.ts), "id": rec.id, "stream": rec.stream, "text": rec.text,
            "seq": rec.seq}


def event(rec: LogRecord) -> bytes:
    return ("data: " + dumps(record(rec)) + "\n\n").encode()


def events(proc_id: str, stream: str, ts: float, texts: list[str], first: int) -> bytes:
    """The SSE events of lines that share a chunk (same id, stream, time; lines numbered from
    `first`), byte for byte what `event()` makes of each. The texts are encoded as one JSON
    array, whose elements are separated by `","` and nowhere else (a quote inside a string is
    always escaped, so `","` cannot occur within one): one C call escapes them all, and only
    the join with each line's number is left per line."""
    if not texts:
        return b""
    head = (f'data: {{"time":{dumps(iso(ts))},"id":{dumps(proc_id)},"stream":{dumps(stream)},'
            '"text":"')
    parts = dumps(texts)[2:-2].split('","')
    return "".join(f'{head}{text}","seq":{seq}}}\n\n'
                   for seq, text in enumerate(parts, first)).encode()


def first_events(blob: bytes, k: int) -> bytes:
    """The first `k` events of a piece made by `events()`."""
    end = 0
    for _ in range(k):
        end = blob.index(b"\n\n", end) + 2
    return blob[:end]


class Follower:
    """One client: what it follows, what waits to be sent to it, what it lost."""

    def __init__(self, ids: set[str]) -> None:
        self.ids = ids
        self.pieces: list[bytes] = []
        self.queued = 0          # lines in `pieces`
        self.dropped = 0         # lines lost since the client was last told
        self.wake = asyncio.Event()

    def room(self) -> int:
        return max(0, FOLLOW_QUEUE - self.queued)

    def take(self, blob: bytes, count: int, offered: int) -> None:
        """`count` events in `blob`, of `offered` lines the chunk had."""
        k = min(count, self.room())
        self.dropped += offered - k
        if k:
            self.pieces.append(blob if k == count else first_events(blob, k))
            self.queued += k
        self.wake.set()

    async def run(self, backlog: list[LogRecord], send: Send, gone: asyncio.Event) -> None:
        await send(b"".join(event(r) for r in backlog) or b": following\n\n")
        while not gone.is_set():
            await self._wait(gone)
            batch, self.pieces, self.queued = self.pieces, [], 0
            if self.dropped:
                batch.append(b"event: dropped\ndata: " + dumps({"dropped": self.dropped})
                             .encode() + b"\n\n")
                self.dropped = 0
            await send(b"".join(batch) or b": keep-alive\n\n")

    async def _wait(self, gone: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(gone.wait())]
        try:
            await asyncio.wait(waits, timeout=HEARTBEAT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        self.wake.clear()


class FollowHub:
    """The one subscription behind every Follower: held while at least one client follows."""

    def __init__(self, stream: LogStream) -> None:
        self._stream = stream
        self._followers: list[Follower] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._offered = 0  # lines of the chunk being published (wants() precedes _lines())

    async def follow(self, ids: set[str], backlog: list[LogRecord], send: Send,
                     gone: asyncio.Event) -> None:
        follower = Follower(ids)
        self._followers.append(follower)
        if self._unsubscribe is None:
            self._unsubscribe = self._stream.subscribe_batches(self._lines, self._wants)
        try:
            await follower.run(backlog, send, gone)
        finally:
            self._followers.remove(follower)
            if not self._followers and self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None

    def _wants(self, proc_id: str, stream: str, n: int) -> int:
        """As many lines as the follower with the most room takes: the rest are never
        decoded, only counted as lost for those that follow `proc_id`."""
        self._offered = n
        most = 0
        for f in self._followers:
            if proc_id in f.ids:
                most = max(most, min(n, f.room()))
                if most == n:
                    break
        if most == 0:
            for f in self._followers:
                if proc_id in f.ids:
                    f.take(b"", 0, n)
        return most

    def _lines(self, proc_id: str, stream: str, ts: float, texts: list[str],
               first: int) -> None:
        blob = events(proc_id, stream, ts, texts, first)
        for f in self._followers:
            if proc_id in f.ids:
                f.take(blob, len(texts), self._offered)

"""SSE followers behind one log subscription (control/follow.py): the batch encoding is the
per-line encoding byte for byte, and a follower that falls behind loses the newest lines,
counted, without slowing the others. Driven in-process through a real LogStream (pbhost's
own lines go through the same publish path as a child's)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from pbhost.control import follow
from pbhost.control.follow import FollowHub, event, events, first_events
from pbhost.logs.stream import LogRecord, LogStream

TRICKY = ['plain', 'a "quoted" word', '","', 'comma, then "', 'back\\slash\\', '\\","\\',
          'tab\tend', 'unicode é ✓ 😀', '', '{"json": [1, 2]}', '"', '\\']


def test_batch_encoding_is_the_per_line_encoding() -> None:
    ts = 1_700_000_000.123
    records = [LogRecord(ts, "ai-agent", "stderr", t, seq) for seq, t in enumerate(TRICKY, 41)]
    expected = b"".join(event(rec) for rec in records)
    assert events("ai-agent", "stderr", ts, TRICKY, 41) == expected
    assert events("x", "stdout", ts, [], 1) == b""
    for k in range(len(TRICKY) + 1):
        assert first_events(expected, k) == b"".join(event(rec) for rec in records[:k])
    # each event parses back to its line and its number
    parsed = [json.loads(ev[len(b"data: "):]) for ev in expected.split(b"\n\n")[:-1]]
    assert [p["text"] for p in parsed] == TRICKY
    assert [p["seq"] for p in parsed] == list(range(41, 41 + len(TRICKY)))


def parse(sent: list[bytes]) -> tuple[list[str], int]:
    lines, dropped = [], 0
    for ev in b"".join(sent).split(b"\n\n")[:-1]:
        if ev.startswith(b"event: dropped"):
            dropped += json.loads(ev.split(b"data: ", 1)[1])["dropped"]
        elif ev.startswith(b"data: "):
            lines.append(json.loads(ev[len(b"data: "):])["text"])
    return lines, dropped


def test_followers_share_lines_and_a_stalled_one_loses_the_newest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "FOLLOW_QUEUE", 50)
    fd = os.open(tmp_path / "out.log", os.O_WRONLY | os.O_CREAT)

    async def main() -> None:
        stream = LogStream(fd)
        stream.start(asyncio.get_running_loop())
        hub = FollowHub(stream)
        fast: list[bytes] = []
        stalled: list[bytes] = []
        release = asyncio.Event()
        gone = asyncio.Event()

        async def send_fast(data: bytes) -> None:
            fast.append(data)

        async def send_stalled(data: bytes) -> None:
            stalled.append(data)
            if len(stalled) > 1:
                await release.wait()  # a client that stops reading

        tasks = [asyncio.ensure_future(hub.follow({"pbhost"}, [], send, gone))
                 for send in (send_fast, send_stalled)]
        await asyncio.sleep(0)
        stream.system(logging.INFO, "first")
        await asyncio.sleep(0.01)  # the stalled follower is now blocked in send
        for i in range(30):  # 30 chunks of 10 lines: 300 lines while one follower stalls
            stream.system(logging.INFO, "\n".join(f"line {i:02d} {j}" for j in range(10)))
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.sleep(0.01)  # it catches up: its queue is empty again
        stream.system(logging.INFO, "last")
        await asyncio.sleep(0.05)
        gone.set()
        await asyncio.gather(*tasks)
        assert stream._subs == []  # the hub let go of the stream with its last follower
        stream.close(1.0)

        got, lost = parse(fast)
        assert got[0] == "first" and got[-1] == "last" and lost == 0
        assert len(got) == 302
        got, lost = parse(stalled)
        assert got[0] == "first" and got[-1] == "last"
        assert len(got) - 2 == 50 and lost == 250  # the queue's worth kept, the rest counted
        assert got[1:-1] == [f"line {i:02d} {j}" for i in range(5) for j in range(10)]

    asyncio.run(main())
    os.close(fd)

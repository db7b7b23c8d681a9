"""LogStream driven directly in an event loop, fed by real child processes through real pipes.

The children are reaped with Popen.wait/poll here, in the tests only: the product leaves
waitpid to its reaper.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest

from pbhost.errors import UnknownProcess
from pbhost.logs.lines import MARKER, MAX_LINE, LineSplitter
from pbhost.logs.render import id_color, want_color
from pbhost.logs.stream import LogRecord, LogStream, LogStreamHandler
from support import until

PY = sys.executable



def spawn(stream: LogStream, proc_id: str, code: str, *, stderr: bool = True,
          argv: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child with our own pipes (read ends non-blocking), attach them, as the host does."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC) if stderr else (None, None)
    proc = subprocess.Popen(argv or [PY, "-c", textwrap.dedent(code)], stdout=out_w,
                            stderr=err_w if err_w is not None else subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    os.close(out_w)
    stream.attach(proc_id, "stdout", out_r)
    if err_r is not None and err_w is not None:
        os.close(err_w)
        stream.attach(proc_id, "stderr", err_r)
    return proc


class Capture:
    """pbhost's stdout as a pipe that the test reads on the same loop (or leaves stalled)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.r, False)
        self.data = bytearray()
        self.reading = False

    def start_reading(self, loop: asyncio.AbstractEventLoop) -> None:
        self.reading = True
        loop.add_reader(self.r, self._read)

    def _read(self) -> None:
        try:
            self.data += os.read(self.r, 1 << 16)
        except BlockingIOError:
            pass

    def lines(self) -> list[str]:
        return self.data.decode("utf-8").splitlines()

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.reading:
            loop.remove_reader(self.r)
        os.close(self.r)
        os.close(self.w)


def run_with_file(tmp_path: Path, body: Callable[[LogStream], Awaitable[None]],
                  **kw: Any) -> str:
    """Run `body` with a LogStream writing into a regular file; return what was written."""
    out_path = tmp_path / "out.log"

    async def main() -> None:
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        stream = LogStream(fd, **kw)
        stream.start(asyncio.get_running_loop())
        try:
            await body(stream)
        finally:
            stream.close(5.0)
            os.close(fd)

    asyncio.run(main())
    return out_path.read_bytes().decode("utf-8")  # strict: the output is always valid UTF-8


async def finish(stream: LogStream, *procs: subprocess.Popen[bytes]) -> None:
    """Wait for every pipe to reach EOF (children done), then reap them."""
    await until(lambda: stream.open_pipes == 0, desc="all pipes at EOF")
    for proc in procs:
        proc.wait(10)


# -- story 7: what a user sees ---------------------------------------------------------------

def test_stdout_line_has_prefix(tmp_path: Path) -> None:
    async def body(stream: LogStream) -> None:
        await finish(stream, spawn(stream, "ai-agent", "print('Hello World')"))
    assert run_with_file(tmp_path, body).splitlines() == ["[ai-agent][STDOUT] Hello World"]


def test_stderr_line_has_prefix_and_error_level(tmp_path: Path) -> None:
    code = "import sys; print('model not found', file=sys.stderr)"

    async def body(stream: LogStream) -> None:
        await finish(stream, spawn(stream, "ai-agent", code))
    assert run_with_file(tmp_path, body).splitlines() == ["[ai-agent][STDERR] model not found"]
    rec = json.loads(run_with_file(tmp_path, body, fmt="json"))
    assert (rec["id"], rec["stream"], rec["level"], rec["msg"]) == \
        ("ai-agent", "stderr", "error", "model not found")
    coloured = run_with_file(tmp_path, body, color=True)
    assert "\x1b[31m[STDERR]" in coloured  # colorlog's ERROR colour on the tag


FLOOD = """
    import sys
    n, width = int(sys.argv[1]), int(sys.argv[2])
    w = sys.stdout.write
    for i in range(n):
        w(f"{sys.argv[3]} {i:08d} " + "x" * (i % width) + "\\n")
    sys.stdout.flush()
"""


def flood_argv(tag: str, n: int, width: int = 80) -> list[str]:
    return [PY, "-c", textwrap.dedent(FLOOD), str(n), str(width), tag]


def test_flooding_child_not_blocked_by_stalled_output() -> None:
    """pbhost's stdout is a pipe nobody reads: the child still finishes, memory stays bounded,
    and once the pipe is read again pbhost says how many lines it dropped."""
    total, limit = 300_000, 1 << 20
    cap = Capture()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stream = LogStream(cap.w, backlog_bytes=limit)
        stream.start(loop)
        proc = spawn(stream, "flood", "", stderr=False, argv=flood_argv("flood", total))
        peak = 0

        def done() -> bool:
            nonlocal peak
            peak = max(peak, stream.backlog)
            return proc.poll() is not None and stream.open_pipes == 0
        await until(done, 60, "the flooding child to finish while nobody reads pbhost's output")
        assert proc.returncode == 0
        assert peak <= limit + MAX_LINE, "backlog must stay bounded"
        assert stream.dropped_total > 0 and stream.dropped == {"flood": stream.dropped_total}
        cap.start_reading(loop)
        await until(lambda: b"[pbhost] dropped" in cap.data and stream.backlog == 0, 20,
                    "the drop notice once output flows again")
        stream.close(5.0)
        check_flood_output(cap.lines(), {"flood": total}, stream.dropped)
        cap.close(loop)
    asyncio.run(main())


def check_flood_output(lines: list[str], totals: dict[str, int], dropped: dict[str, int]) -> None:
    """Every line is one whole line of one child; each child's numbers rise; none duplicated;
    lines seen + lines dropped = lines printed."""
    line_re = re.compile(r"\[(\w+)\]\[STDOUT\] (\w+) (\d{8}) (x*)$")
    last = {tag: -1 for tag in totals}
    seen = {tag: 0 for tag in totals}
    notices = 0
    for line in lines:
        if line.startswith("[pbhost] dropped "):
            notices += 1
            continue
        m = line_re.match(line)
        assert m and m[1] == m[2], f"mixed or broken line: {line[:200]!r}"
        num = int(m[3])
        assert num > last[m[1]] and len(m[4]) == num % 80, f"out of order/cut: {line[:200]!r}"
        last[m[1]] = num
        seen[m[1]] += 1
    for tag, total in totals.items():
        assert seen[tag] + dropped.get(tag, 0) == total, (tag, seen[tag], dropped)
        assert last[tag] == total - 1, "the newest lines are never the ones dropped"
    assert notices >= (1 if dropped else 0)


def test_two_flooding_children_never_interleave() -> None:
    """Output is a small pipe read on the same loop, so pbhost's writes are often partial."""
    totals = {"alpha": 60_000, "beta": 60_000}
    cap = Capture()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stream = LogStream(cap.w, backlog_bytes=64 << 20)  # big enough: nothing is dropped
        stream.start(loop)
        cap.start_reading(loop)
        procs = [spawn(stream, tag, "", stderr=False, argv=flood_argv(tag, n))
                 for tag, n in totals.items()]
        await finish(stream, *procs)
        await until(lambda: stream.backlog == 0, 20, "output written")
        stream.close(5.0)
        cap._read()
        assert stream.dropped_total == 0
        check_flood_output(cap.lines(), totals, {})
        cap.close(loop)
    asyncio.run(main())


# -- lines: partial, invalid, long, redrawn, escaped -------------------------------------------

def test_partial_last_line_flushed_at_exit(tmp_path: Path) -> None:
    code = "import sys; sys.stdout.write('first\\nno newline at the end')"

    async def body(stream: LogStream) -> None:
        await finish(stream, spawn(stream, "p", code))
    assert run_with_file(tmp_path, body) == "[p][STDOUT] first\n[p][STDOUT] no newline at the end\n"


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    code = r"import sys; sys.stdout.buffer.write(b'ok \xff\xfe bad\ncaf\xc3\xa9\nhalf \xe2\x82\n')"

    async def body(stream: LogStream) -> None:
        await finish(stream, spawn(stream, "u", code))
    assert run_with_file(tmp_path, body).splitlines() == [
        "[u][STDOUT] ok \ufffd\ufffd bad", "[u][STDOUT] café", "[u][STDOUT] half \ufffd"]


def test_long_line_split_with_marker(tmp_path: Path) -> None:
    # 'é' is two bytes: a cut in the middle of one would make invalid UTF-8.
    code = "import sys; sys.stdout.write('a' + 'é' * 100_000 + '\\nshort\\n')"

    async def body(stream: LogStream) -> None:
        await finish(stream, spawn(stream, "big", code))
    lines = run_with_file(tmp_path, body).splitlines()
    marker = MARKER.decode()
    assert lines[-1] == "[big][STDOUT] short"
    pieces = [ln.removeprefix("[big][STDOUT] ") for ln in lines[:-1]]
    assert len(pieces) == 4 and all(p.endswith(marker) for p in pieces[:-1])
    assert all(len(p.encode()) <= MAX_LINE + len(MARKER) for p in pieces)
    assert "".join(p.removesuffix(marker) for p in pieces) == "a" + "é" * 100_000


def test_progress_bar_redraws_are_collapsed(tmp_path: Path) -> None:
    """A tqdm-style bar: one burst of 2,000 redraws, then a slow bar over about 2 s."""
    code = """
        import sys, time
        w = sys.stdout.write
        for i in range(2001):
            w(f"\\rfast {i * 100 // 2000:3d}%|" + "#" * (i // 100))
        w("\\n")
        sys.stdout.flush()
        for i in range(41):
            w(f"\\rslow {i * 100 // 40:3d}%")
            sys.stdout.flush()
            time.sleep(0.05)
        w("\\r\\nafter the bars\\n")
    """

    async def body(stream: LogStream) -> None:
        await finish(stream, spawn(stream, "dl", code))
    lines = run_with_file(tmp_path, body).splitlines()
    fast = [ln for ln in lines if " fast " in ln]
    slow = [ln for ln in lines if " slow " in ln]
    assert fast[-1] == "[dl][STDOUT] fast 100%|" + "#" * 20
    assert len(fast) <= 3, fast
    assert slow[-1] == "[dl][STDOUT] slow 100%" and 1 <= len(slow) <= 6, slow
    assert lines[-1] == "[dl][STDOUT] after the bars"
    assert not any("\r" in ln for ln in lines)


ESCAPES = r"""
import sys
sys.stdout.write("\x1b[31mred\x1b[0m plain\n")           # SGR colour
sys.stdout.write("\x1b[2J\x1b[Hcleared\x1b[K\n")         # erase screen, cursor home, erase line
sys.stdout.write("\x1b]0;window title\x07titled\n")      # OSC title
sys.stdout.write("\x1b[1Aup\x1b(B charset\n")            # cursor up, charset designation
"""


def test_escape_sequences_stripped_except_colour_on_a_terminal(tmp_path: Path) -> None:
    async def body(stream: LogStream) -> None:
        await finish(stream, spawn(stream, "esc", ESCAPES))
    plain = run_with_file(tmp_path, body).splitlines()
    assert [ln.removeprefix("[esc][STDOUT] ") for ln in plain] == \
        ["red plain", "cleared", "titled", "up charset"]
    coloured = run_with_file(tmp_path, body, color=True)
    assert "\x1b[31mred\x1b[0m plain" in coloured
    for gone in ("\x1b[2J", "\x1b[H", "\x1b[K", "\x1b]0;", "\x1b[1A", "\x1b(B"):
        assert gone not in coloured


def test_json_format_one_object_per_line(tmp_path: Path) -> None:
    code = """
        import sys
        print('hello "quoted" \\\\ tab\\t')
        print('boom', file=sys.stderr)
    """

    async def body(stream: LogStream) -> None:
        logging_line(stream, logging.WARNING, "pbhost says")
        await finish(stream, spawn(stream, "j", code))
    records = [json.loads(ln) for ln in run_with_file(tmp_path, body, fmt="json").splitlines()]
    assert all(set(r) == {"ts", "id", "stream", "level", "msg"} for r in records)
    assert [(r["id"], r["stream"], r["level"], r["msg"]) for r in records] == [
        ("pbhost", "system", "warning", "pbhost says"),
        ("j", "stdout", "info", 'hello "quoted" \\ tab\t'),
        ("j", "stderr", "error", "boom"),
    ]


def logging_line(stream: LogStream, level: int, text: str) -> None:
    """Log through the handler the host installs on the `pbhost` logger."""
    log = logging.getLogger("pbhost.test_logstream")
    handler = LogStreamHandler(stream)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        log.log(level, text)
    finally:
        log.removeHandler(handler)
        log.propagate = True


def test_pbhost_lines_in_level_colours_and_in_order(tmp_path: Path) -> None:
    async def body(stream: LogStream) -> None:
        logging_line(stream, logging.INFO, "starting")
        await finish(stream, spawn(stream, "ai-agent", "print('hi')"))
        logging_line(stream, logging.ERROR, "crashed\nsecond line")
    assert run_with_file(tmp_path, body).splitlines() == [
        "[pbhost] starting", "[ai-agent][STDOUT] hi", "[pbhost] crashed", "[pbhost] second line"]
    coloured = run_with_file(tmp_path, body, color=True).splitlines()
    assert coloured[0] == "\x1b[32m[pbhost] starting\x1b[0m"
    assert coloured[2] == "\x1b[31m[pbhost] crashed\x1b[0m"


def test_timestamps_prefix_each_line(tmp_path: Path) -> None:
    async def body(stream: LogStream) -> None:
        await finish(stream, spawn(stream, "t", "print('a'); print('b')"))
    for line in run_with_file(tmp_path, body, timestamps=True).splitlines():
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \[t\]\[STDOUT\] [ab]", line)


# -- colour -----------------------------------------------------------------------------------

@pytest.fixture
def tty_and_pipe() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    r, w = os.pipe()
    yield slave, w
    for fd in (master, slave, r, w):
        os.close(fd)


def test_want_color(tty_and_pipe: tuple[int, int]) -> None:
    tty, pipe = tty_and_pipe
    assert want_color(tty, {}) and not want_color(pipe, {})
    assert not want_color(tty, {"NO_COLOR": "1"})
    assert want_color(tty, {"NO_COLOR": ""})              # empty means unset (no-color.org)
    assert want_color(pipe, {"FORCE_COLOR": "1"})
    assert not want_color(pipe, {"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert not want_color(tty, {"FORCE_COLOR": "1"}, flag=False)  # --no-color wins
    assert want_color(pipe, {"NO_COLOR": "1"}, flag=True)          # so does --color


def test_colour_per_id_is_stable_across_runs() -> None:
    code = ("from pbhost.logs.render import id_color; "
            "print(id_color('ai-agent'), id_color('pocketbase'))")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    outs = {subprocess.run([PY, "-c", code], env=dict(env, PYTHONHASHSEED=seed),
                           capture_output=True, text=True, check=True).stdout
            for seed in ("1", "2", "3")}
    assert outs == {f"{id_color('ai-agent')} {id_color('pocketbase')}\n"}


# -- ring buffer, subscribers, fd hygiene -------------------------------------------------------

def test_tail_keeps_last_lines_and_subscribers_follow(tmp_path: Path) -> None:
    seen: list[LogRecord] = []

    async def body(stream: LogStream) -> None:
        stop = stream.subscribe(seen.append)
        await finish(stream, spawn(stream, "r", "for i in range(5000): print(f'line {i}')"))
        stop()
        await finish(stream, spawn(stream, "r", "print('after unsubscribe')"))
        tail = stream.tail("r", 3)
        assert [(r.id, r.stream, r.text) for r in tail] == [
            ("r", "stdout", "line 4998"), ("r", "stdout", "line 4999"),
            ("r", "stdout", "after unsubscribe")]
        assert len(stream.tail("r", 100_000)) == 1000
        with pytest.raises(UnknownProcess):
            stream.tail("nobody", 5)
    run_with_file(tmp_path, body)
    assert [r.text for r in seen] == [f"line {i}" for i in range(5000)]


def test_a_cursor_walks_the_ring_without_repeating_or_skipping_a_line(tmp_path: Path) -> None:
    seen: list[LogRecord] = []

    async def body(stream: LogStream) -> None:
        stream.subscribe(seen.append)
        await finish(stream, spawn(stream, "r", "for i in range(1, 301): print(f'line {i}')"))
        # Paging by 7 from the start: every line once, in order, numbered 1..300.
        got: list[LogRecord] = []
        cursor = 0
        while page := stream.tail("r", 7, after=cursor):
            got.extend(page)
            cursor = page[-1].seq
        assert [(r.seq, r.text) for r in got] == [(i, f"line {i}") for i in range(1, 301)]
        assert stream.tail("r", 10, after=300) == []
        # A cursor from another run (above the newest line) starts over at the oldest kept.
        assert [r.seq for r in stream.tail("r", 2, after=10_000)] == [1, 2]
        # Past the ring: only the last 1000 are kept, the cursor resumes at the oldest of them.
        await finish(stream, spawn(stream, "r", "for i in range(301, 3001): print(f'line {i}')"))
        assert [r.seq for r in stream.tail("r", 3, after=300)] == [2001, 2002, 2003]
        assert [r.seq for r in stream.tail("r", 2)] == [2999, 3000]
    run_with_file(tmp_path, body)
    # Subscribers see the same numbers.
    assert [r.seq for r in seen] == list(range(1, 3001))


def test_a_subscriber_gets_only_the_lines_it_wants(tmp_path: Path) -> None:
    seen: list[LogRecord] = []
    asked: set[tuple[str, str]] = set()

    def wants(proc_id: str, stream: str, n: int) -> int:
        asked.add((proc_id, stream))
        return n if stream == "stderr" else 0

    async def body(stream: LogStream) -> None:
        stream.subscribe(seen.append, wants)
        await finish(stream, spawn(stream, "w", "import sys\nfor i in range(3):\n"
                                   "    print(f'out {i}', flush=True)\n"
                                   "    print(f'err {i}', file=sys.stderr, flush=True)"))
    run_with_file(tmp_path, body)
    assert [(r.stream, r.text) for r in seen] == [("stderr", f"err {i}") for i in range(3)]
    assert asked == {("w", "stdout"), ("w", "stderr")}


def test_a_pipe_or_terminal_output_keeps_its_flags() -> None:
    # pbhost writes non-blocking through an open file description of its own, so stderr and
    # the shell that share the caller's are never made non-blocking, not even mid-run.
    cap = Capture()
    before = fcntl.fcntl(cap.w, fcntl.F_GETFL)

    async def main() -> None:
        stream = LogStream(cap.w)
        stream.start(asyncio.get_running_loop())
        assert fcntl.fcntl(cap.w, fcntl.F_GETFL) == before
        stream.system(logging.INFO, "bye")
        stream.close(1.0)
    asyncio.run(main())
    assert fcntl.fcntl(cap.w, fcntl.F_GETFL) == before
    cap._read()
    assert cap.data == b"[pbhost] bye\n"
    os.close(cap.r)
    os.close(cap.w)


def test_a_socket_output_is_made_non_blocking_and_given_its_flags_back() -> None:
    # The journal hands pbhost a socket, which cannot be opened anew: the flag goes on it.
    ours, theirs = socket.socketpair()
    before = fcntl.fcntl(ours.fileno(), fcntl.F_GETFL)

    async def main() -> None:
        stream = LogStream(ours.fileno())
        stream.start(asyncio.get_running_loop())
        assert fcntl.fcntl(ours.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        stream.system(logging.INFO, "bye")
        stream.close(1.0)
    asyncio.run(main())
    assert fcntl.fcntl(ours.fileno(), fcntl.F_GETFL) == before
    assert b"bye" in theirs.recv(4096)
    ours.close()
    theirs.close()


# -- the splitter on its own: chunk boundaries a child cannot be made to hit reliably ------------

def feed_all(*chunks: bytes) -> list[bytes]:
    split = LineSplitter()
    out = []
    for chunk in chunks:
        block, redraw = split.feed(chunk)
        out += block.split(b"\n")[:-1]
        if redraw is not None:
            out.append(b"redraw:" + redraw)
    return out + split.finish().split(b"\n")[:-1]


def test_splitter_chunk_boundaries() -> None:
    assert feed_all(b"a\r", b"\nb\n") == [b"a", b"b"]               # \r\n split across reads
    assert feed_all(b"\rbar 1\rbar 2", b"\rbar 3\n") == [b"redraw:bar 1", b"bar 3"]
    assert feed_all(b"x" * (MAX_LINE + 10)) == [b"x" * MAX_LINE + MARKER, b"x" * 10]
    assert feed_all(b"\r\n\r\n") == [b"", b""]
    assert feed_all(b"tail\r") == [b"tail"]

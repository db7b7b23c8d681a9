"""How the log stream paces its reads of a busy pipe (issue 17): a pipe that had data rests
for a moment instead of waking pbhost on every write, and is watched again once it is found
empty. Real children, real pipes; what is checked is what reaches pbhost's output.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from pbhost.logs.stream import LogStream
from support import until

PY = sys.executable



def spawn(stream: LogStream, proc_id: str, code: str,
          stdin: int | None = None) -> subprocess.Popen[bytes]:
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    proc = subprocess.Popen([PY, "-c", textwrap.dedent(code)], stdout=out_w,
                            stdin=stdin if stdin is not None else subprocess.DEVNULL)
    os.close(out_w)
    stream.attach(proc_id, "stdout", out_r)
    return proc


def read_file(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


# One write(2) per line, in bursts with quiet spells between them: each burst finds the pipe
# watched, makes it rest, and leaves it to be found empty and watched again. The quiet spell
# lasts until the test, having seen the whole burst in pbhost's output, answers on stdin.
BURSTS = """
    import os, sys
    bursts, per = int(sys.argv[1]), int(sys.argv[2])
    for b in range(bursts):
        for i in range(per):
            os.write(1, b"line %03d %06d\\n" % (b, i))
        if b < bursts - 1 and not sys.stdin.readline():
            break
"""


def test_bursts_of_flushed_lines_arrive_whole_and_in_order(tmp_path: Path) -> None:
    out = tmp_path / "out.log"
    bursts, per = 5, 4000

    async def main() -> None:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        stream = LogStream(fd)
        stream.start(asyncio.get_running_loop())
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        proc = subprocess.Popen([PY, "-c", textwrap.dedent(BURSTS), str(bursts), str(per)],
                                stdout=out_w, stdin=in_r)
        os.close(out_w)
        os.close(in_r)
        stream.attach("b", "stdout", out_r)
        for b in range(bursts - 1):
            last = f"[b][STDOUT] line {b:03d} {per - 1:06d}\n"
            await until(lambda last=last: read_file(out).endswith(last),  # type: ignore[misc]
                        desc=f"burst {b} in the output")
            os.write(in_w, b"\n")  # all of it read and written out: the next burst
        os.close(in_w)
        await until(lambda: stream.open_pipes == 0, desc="the pipe at EOF")
        proc.wait(10)
        stream.close(5.0)
        os.close(fd)
        assert stream.dropped_total == 0

    asyncio.run(main())
    expected = [f"[b][STDOUT] line {b:03d} {i:06d}" for b in range(bursts) for i in range(per)]
    assert read_file(out).splitlines() == expected


# Prints a line, then waits for the test to answer on stdin before printing the next: each
# line is written to a pipe that has been quiet, so it must be read without a further write.
PING = """
    import os, sys
    for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 6):
        os.write(1, b"ping %d\\n" % i)
        if not sys.stdin.readline():
            break
"""


def test_a_line_on_a_quiet_pipe_is_shown_without_more_output(tmp_path: Path) -> None:
    """A rested pipe found empty is watched again: the next lone line still comes through
    (if it were not, this child would wait for its answer forever)."""
    out = tmp_path / "out.log"

    async def main() -> None:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        stream = LogStream(fd)
        stream.start(asyncio.get_running_loop())
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        proc = spawn(stream, "p", PING, stdin=in_r)
        os.close(in_r)
        for i in range(6):
            line = f"[p][STDOUT] ping {i}\n"
            await until(lambda: line in read_file(out), 10, line.strip())  # noqa: B023
            os.write(in_w, b"pong\n")
        os.close(in_w)
        await until(lambda: stream.open_pipes == 0, desc="the pipe at EOF")
        proc.wait(10)
        stream.close(5.0)
        os.close(fd)

    asyncio.run(main())
    assert read_file(out).splitlines() == [f"[p][STDOUT] ping {i}" for i in range(6)]


FLOOD = """
    import os
    while True:
        os.write(1, b"x" * 59 + b"\\n")
"""


def test_close_while_a_pipe_rests_leaves_no_callback_behind(tmp_path: Path) -> None:
    """Shutdown comes while a flooding pipe waits for its timer: close() takes what the pipe
    holds, and the loop then runs no read of a closed fd."""
    out = tmp_path / "out.log"
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        stream = LogStream(fd)
        stream.start(loop)
        proc = spawn(stream, "f", FLOOD)
        await until(lambda: out.stat().st_size > 1 << 20, desc="a flood under way")
        stream.close(5.0)
        proc.kill()
        proc.wait(10)
        await asyncio.sleep(0.05)  # any timer left behind would fire now
        os.close(fd)

    asyncio.run(main())
    assert errors == []
    lines = read_file(out).splitlines()
    assert lines and all(ln == "[f][STDOUT] " + "x" * 59 for ln in lines)


# A print() and then a line on stderr, as a traceback after a log line: with
# PYTHONUNBUFFERED=1, print() writes the text and its newline in two write(2) calls.
OUT_THEN_ERR = """
    import sys
    for i in range(8):
        print(f"out {i}")
        print(f"err {i}", file=sys.stderr)
        if not sys.stdin.readline():
            break
"""


def test_a_stderr_line_after_a_stdout_line_is_shown_after_it(tmp_path: Path) -> None:
    """The stdout pipe may be resting when the stderr line comes: it is read first."""
    out = tmp_path / "out.log"

    async def main() -> None:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        stream = LogStream(fd)
        stream.start(asyncio.get_running_loop())
        pipes = {name: os.pipe2(os.O_CLOEXEC) for name in ("in", "out", "err")}
        proc = subprocess.Popen([PY, "-c", textwrap.dedent(OUT_THEN_ERR)],
                                stdin=pipes["in"][0], stdout=pipes["out"][1],
                                stderr=pipes["err"][1], env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for fd_ in (pipes["in"][0], pipes["out"][1], pipes["err"][1]):
            os.close(fd_)
        stream.attach("p", "stdout", pipes["out"][0])
        stream.attach("p", "stderr", pipes["err"][0])
        for i in range(8):
            line = f"[p][STDERR] err {i}\n"
            await until(lambda: line in read_file(out), 10, line.strip())  # noqa: B023
            os.write(pipes["in"][1], b"next\n")
        os.close(pipes["in"][1])
        await until(lambda: stream.open_pipes == 0, desc="the pipes at EOF")
        proc.wait(10)
        stream.close(5.0)
        os.close(fd)

    asyncio.run(main())
    assert read_file(out).splitlines() == [
        f"[p][{tag}] {name} {i}" for i in range(8) for tag, name in (("STDOUT", "out"),
                                                                     ("STDERR", "err"))]

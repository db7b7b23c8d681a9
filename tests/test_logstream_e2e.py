"""The log stream through a real `pbhost serve`: real PocketBase, real sidecars (story 7)."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time
from pathlib import Path

import pexpect

from support import OUT_ERR, PY, Project, free_port, pbhost_cmd, pbhost_env, wait_for


def hello_project(project: Project) -> None:
    project.write("agent/main.py", OUT_ERR)
    project.config([{"id": "ai-agent", "script": "./agent/main.py", "cwd": "./agent",
                     "interpreter": PY,
                     "args": ["Hello World", "model file missing: /models/llama.gguf"]}])


def test_story7_stdout_line_with_prefix(project: Project) -> None:
    hello_project(project)
    run = project.serve()
    run.wait_line("[ai-agent][STDOUT] Hello World")
    assert "\x1b" not in run.output(), "no colour into a file"


def test_story7_stderr_line_with_prefix_at_error_level(project: Project) -> None:
    hello_project(project)
    run = project.serve()
    run.wait_line("[ai-agent][STDERR] model file missing: /models/llama.gguf")
    run.stop()  # one pbhost per project folder
    json_run = project.serve(pbhost_args=("--log-format", "json"))
    line = json_run.wait_line('"stream":"stderr"')
    rec = json.loads(line)
    assert (rec["id"], rec["level"], rec["msg"]) == \
        ("ai-agent", "error", "model file missing: /models/llama.gguf")
    for ln in json_run.lines():  # every line of the stream is one JSON object
        assert {"ts", "id", "stream", "level", "msg"} <= set(json.loads(ln))


FLOOD = """
import os, sys, threading, time
t0 = time.monotonic()
w = sys.stdout.write
for i in range(int(sys.argv[1])):
    w(f"flood {i:08d} " + "x" * 44 + "\\n")
sys.stdout.flush()
with open("done.tmp", "w") as f:
    f.write(f"{time.monotonic() - t0:.3f}")
os.rename("done.tmp", "done")
threading.Event().wait()
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_story7_flooding_child_not_blocked_by_stalled_output(project: Project) -> None:
    """pbhost's stdout is a pipe nobody reads: the sidecar still finishes its writes, pbhost's
    memory stays bounded, and once the pipe is read pbhost says how many lines it dropped."""
    total = 500_000  # 30 MB: hundreds of times what the pipe and the backlog can hold
    project.write("flood.py", FLOOD)
    project.config([{"id": "flood", "script": "flood.py", "args": [str(total)],
                     "interpreter": PY}])
    read_fd, write_fd = os.pipe()
    port = free_port()
    proc = subprocess.Popen(pbhost_cmd("serve", "--http", f"127.0.0.1:{port}"),
                            cwd=project.root, stdout=write_fd, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=pbhost_env())
    os.close(write_fd)
    try:
        peak = 0

        def flood_done() -> bool:
            nonlocal peak
            peak = max(peak, rss_kib(proc.pid))
            return (project.root / "done").exists()
        try:
            wait_for(flood_done, 90,
                     "the sidecar to finish its writes while pbhost's output stalls")
        except AssertionError:
            print(os.read(read_fd, 1 << 16).decode(errors="replace"))  # what pbhost said
            raise
        assert peak < 100 * 1024, f"pbhost RSS peaked at {peak} KiB"
        seen = read_until(read_fd, re.compile(rb"\[pbhost\] dropped (\d+) lines from flood"), 30)
        dropped = sum(int(n) for n in re.findall(rb"dropped (\d+) lines from flood", seen))
        kept = seen.count(b"[flood][STDOUT] flood ")
        assert dropped > 0 and kept + dropped <= total
    finally:
        proc.terminate()
        drain_quietly(read_fd, proc)


def read_until(fd: int, pattern: re.Pattern[bytes], timeout: float) -> bytes:
    """Read `fd` until `pattern` shows up, then for a little more (what was flushed with it)."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while not pattern.search(data):
        left = deadline - time.monotonic()
        assert left > 0, f"no {pattern.pattern!r} in pbhost output; tail: {bytes(data[-2000:])!r}"
        if select.select([fd], [], [], left)[0]:
            data += os.read(fd, 1 << 16)
    return bytes(data)


def drain_quietly(fd: int, proc: subprocess.Popen[bytes]) -> None:
    """Keep reading while pbhost shuts down, so its final writes never block its exit."""
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0] and not os.read(fd, 1 << 16):
            break
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    os.close(fd)


def test_colour_on_a_terminal_only(project: Project, tmp_path: Path) -> None:
    hello_project(project)
    port = free_port()
    argv = ["-m", "pbhost", "serve", "--http", f"127.0.0.1:{port}"]
    term: pexpect.spawn[bytes] = pexpect.spawn(PY, argv, cwd=str(project.root),
                                               env=pbhost_env(), timeout=30)
    try:
        # The id in its own colour, then `[STDOUT]` in plain text.
        term.expect(rb"\x1b\[[0-9;]+m\[ai-agent\]\x1b\[0m\[STDOUT\] Hello World")
        term.expect(rb"\x1b\[31m\[STDERR\]\x1b\[0m model file missing")
        term.sendcontrol("c")
        term.expect(pexpect.EOF)
    finally:
        term.close()
    assert term.exitstatus == 0
    plain: pexpect.spawn[bytes] = pexpect.spawn(PY, argv, cwd=str(project.root),
                                                env=pbhost_env(NO_COLOR="1"), timeout=30)
    try:
        plain.expect(rb"\n\[ai-agent\]\[STDOUT\] Hello World")
        assert plain.before is not None and b"\x1b" not in plain.before
        plain.sendcontrol("c")
        plain.expect(pexpect.EOF)
    finally:
        plain.close()
    forced = project.serve(env={"FORCE_COLOR": "1"})
    forced.wait_line("[ai-agent]\x1b[0m[STDOUT] Hello World")

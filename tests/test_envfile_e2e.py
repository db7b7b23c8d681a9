"""envFile with a real pbhost: real PocketBase, real sidecars, real .env files edited on disk,
the real CLI, the API, the PocketBase hook and state.json searched for secrets."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from pbhost.pocketbase.binary import find_binary
from support import (
    LISTENER,
    Api,
    PbhostRun,
    Project,
    free_port,
    http_json,
    pbhost_env,
    wait_for,
)

PY = sys.executable
EMAIL, PASSWORD = "root@example.com", "password123"

# Prints the variables named on its command line as one JSON line, then waits.
SHOW_ENV = """
    import json, os, sys, threading
    print("env=" + json.dumps({k: os.environ.get(k) for k in sys.argv[1:]}), flush=True)
    threading.Event().wait()
"""
# Proves it got its secret by printing a digest of it, on stdout and on stderr (which the
# PocketBase hook bridges into PocketBase's logs), never the value.
DIGEST = """
    import hashlib, os, sys, threading
    digest = hashlib.sha256(os.environ["OPENAI_API_KEY"].encode()).hexdigest()[:16]
    print(f"key digest {digest} token digest "
          + hashlib.sha256(os.environ["API_TOKEN"].encode()).hexdigest()[:16], flush=True)
    print(f"stderr digest {digest}", file=sys.stderr, flush=True)
    threading.Event().wait()
"""
SERVE_HTTP = """
    import http.server, os
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"web ok")
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""




def env_line(run: PbhostRun, proc_id: str, count: int = 1) -> dict[str, Any]:
    line = run.wait_line(f"[{proc_id}][STDOUT] env=", count=count)
    found: dict[str, Any] = json.loads(line.split("env=", 1)[1])
    return found


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "pbhost", *args], cwd=root, env=pbhost_env(),
                          capture_output=True, text=True, timeout=60)


def test_dotenv_values_reach_the_child_exactly_and_env_overrides_them(project: Project) -> None:
    project.write("agent/show.py", SHOW_ENV)
    project.write("agent/.env", """\
        # the agent's settings
        export EXPORTED=exported value
        QUOTED="  spaced, # not a comment  "
        SINGLE='a "quoted" word'
        EMPTY=
        OVERRIDDEN=from the file
        HOST=db.internal
        PB_URL=http://not-this-one
    """)
    project.config([{"id": "ai-agent", "script": "./agent/show.py", "cwd": "./agent",
                     "interpreter": PY, "envFile": "./agent/.env",
                     "args": ["EXPORTED", "QUOTED", "SINGLE", "EMPTY", "OVERRIDDEN", "DSN",
                              "PB_URL", "FROM_PBHOST"],
                     "env": {"OVERRIDDEN": "from env", "DSN": "postgres://${HOST}/app"}}])
    run = project.serve(env={"FROM_PBHOST": "inherited", "EMPTY": "pbhost's"})
    assert env_line(run, "ai-agent") == {
        "EXPORTED": "exported value", "QUOTED": "  spaced, # not a comment  ",
        "SINGLE": 'a "quoted" word', "EMPTY": "", "OVERRIDDEN": "from env",
        "DSN": "postgres://db.internal/app", "PB_URL": run.url, "FROM_PBHOST": "inherited"}


def test_an_edited_env_file_reaches_the_process_on_restart(project: Project) -> None:
    project.write("show.py", SHOW_ENV)
    env_file = project.write(".env", "MODEL=gpt-small\n")
    project.config([{"id": "ai-agent", "script": "show.py", "interpreter": PY,
                     "envFile": ".env", "args": ["MODEL", "ALIAS"],
                     "env": {"ALIAS": "model:${MODEL}"}}])
    run = project.serve()
    assert env_line(run, "ai-agent") == {"MODEL": "gpt-small", "ALIAS": "model:gpt-small"}
    env_file.write_text("MODEL=gpt-large\n")
    out = cli(project.root, "restart", "ai-agent")
    assert out.returncode == 0 and "ai-agent restarted (pid" in out.stdout, out
    assert env_line(run, "ai-agent", count=2) == {"MODEL": "gpt-large",
                                                  "ALIAS": "model:gpt-large"}


def test_a_malformed_line_fails_that_start_only_with_file_and_line(project: Project) -> None:
    project.write("show.py", SHOW_ENV)
    project.write("web.py", SERVE_HTTP)
    env_file = project.write("broken.env", 'A=1\n# fine so far\nTOKEN="unterminated\n')
    web_port = free_port()
    project.config([
        {"id": "broken", "script": "show.py", "interpreter": PY, "envFile": "broken.env",
         "args": ["A", "TOKEN"]},
        {"id": "web", "script": "web.py", "interpreter": PY, "env": {"PORT": str(web_port)}}])
    run = project.serve()
    reason = f"envFile {env_file}:3: the value's opening quote (\") is never closed"
    run.wait_line(f"broken: cannot start: {reason}; marked crashed")
    api = Api(run)
    broken = wait_for(lambda: (p := api.body("/api/pm/broken"))["status"] == "crashed" and p,
                      10, "broken crashed")
    assert broken["lastError"] == reason and broken["pid"] is None
    # PocketBase and the other sidecar serve on.
    answer = wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{web_port}/",
                                                     timeout=2).read(), 15, "web answers")
    assert answer == b"web ok" and run.healthy()
    assert api.body("/api/pm/web")["status"] == "running"
    assert "Traceback" not in run.output()
    # Fixed, and started again: the way out a user has without restarting pbhost.
    env_file.write_text('A=1\nTOKEN="terminated"\n')
    out = cli(project.root, "start", "broken")
    assert out.returncode == 0, out
    assert env_line(run, "broken") == {"A": "1", "TOKEN": "terminated"}
    assert api.body("/api/pm/broken")["lastError"] is None


def test_a_probe_follows_a_port_that_moved_in_the_env_file(project: Project) -> None:
    """PORT lives in .env and the probe says ${PORT}: edit .env, `pbhost restart`, and the
    probe checks the new port (the file is read at every start, so is the probe's value)."""
    first, second = free_port(), free_port()
    env_file = project.write(".env", f"PORT={first}\n")
    project.write("web.py", LISTENER)
    project.config([{"id": "web", "script": "web.py", "interpreter": PY, "envFile": ".env",
                     "livenessProbe": {"tcp": "127.0.0.1:${PORT}", "period": "200ms",
                                       "failureThreshold": 2}}])
    run = project.serve()
    run.wait_line(f"port={first}")
    env_file.write_text(f"PORT={second}\n")
    out = cli(project.root, "restart", "web")
    assert out.returncode == 0, out
    run.wait_line(f"port={second}")
    # Ten probe periods on the new port (two failures would restart it)...
    ticks = len(re.findall(r"\[web\]\[STDOUT\] tick ", run.output()))
    run.wait_line("[web][STDOUT] tick ", count=ticks + 20)
    assert "liveness fail" not in run.output()
    proc = Api(run).proc("web")
    assert proc["restartCount"] == 1 and proc["health"] is None, proc
    # ...and it is watching that port: a server that stops listening there is restarted.
    os.kill(proc["pid"], signal.SIGUSR1)
    run.wait_line("web: liveness failed 2 times (TCP 127.0.0.1:${PORT}: connection refused)")


def make_superuser(project: Project) -> None:
    pb = find_binary(None, os.environ, Path.cwd())
    subprocess.run([pb, "superuser", "upsert", EMAIL, PASSWORD, "--dir",
                    str(project.root / "pb_data")], check=True, capture_output=True, timeout=30)


def test_secrets_never_reach_the_api_the_hook_state_json_or_the_log(project: Project) -> None:
    file_secret = "sk-proj-FILE-1b2e9d7c"      # in .env
    env_secret = "tok-LITERAL-5a8f3e"           # written in pb_processes.json's env
    broken_secret = "sk-proj-BROKEN-77c1e0"     # on a malformed line of another .env
    secrets = (file_secret, env_secret, broken_secret)
    make_superuser(project)
    project.write("digest.py", DIGEST)
    project.write("show.py", SHOW_ENV)
    project.write(".env", f"OPENAI_API_KEY={file_secret}\n")
    project.write("bad.env", f"OK=1\n{broken_secret}\n")  # pasted without its name
    project.config([
        {"id": "ai-agent", "script": "digest.py", "interpreter": PY, "envFile": ".env",
         "env": {"API_TOKEN": env_secret, "UNSET_REF": "${NOT_SET_ANYWHERE}"}},
        {"id": "leaky", "script": "show.py", "interpreter": PY, "envFile": "bad.env"},
        # Probes that name secrets: their messages (lastError, health, the log) must not.
        {"id": "probed", "script": "digest.py", "interpreter": PY, "envFile": ".env",
         "env": {"API_TOKEN": env_secret},
         "readinessProbe": {"http": "http://127.0.0.1:1/ready?key=${OPENAI_API_KEY}",
                            "period": "200ms"},
         "livenessProbe": {"exec": [PY, "-c", "raise SystemExit(1)", "${API_TOKEN}"],
                           "period": "200ms", "failureThreshold": 2}}])
    run = project.serve(pbhost_args=("-v",))
    digest = hashlib.sha256(file_secret.encode()).hexdigest()[:16]
    run.wait_line(f"[ai-agent][STDOUT] key digest {digest} token digest "
                  + hashlib.sha256(env_secret.encode()).hexdigest()[:16])  # it got both
    run.wait_line(f"leaky: cannot start: envFile {project.root / 'bad.env'}:2: a name without "
                  "'='")
    run.wait_line("ai-agent: env UNSET_REF refers to ${NOT_SET_ANYWHERE}, which is not set")
    failed = run.wait_line("probed: liveness failed 2 times")
    assert "${API_TOKEN}" in failed, failed  # named as written
    api = Api(run)
    wait_for(lambda: "GET /ready?key=${OPENAI_API_KEY}: connection refused"
             in (api.proc("probed")["health"] or ""), 10, "probed's readiness as written")
    seen = [api.raw(path) for path in (
        "/api/pm/list", "/api/pm/ai-agent", "/api/pm/leaky", "/api/pm/ai-agent/logs?lines=1000",
        "/api/pm/logs?lines=1000", "/api/pm/metrics")]
    # The hook: /api/pm/* on PocketBase's own port, for a superuser.
    status, body = http_json(f"{run.url}/api/collections/_superusers/auth-with-password",
                             "POST", body={"identity": EMAIL, "password": PASSWORD})
    assert status == 200, body
    for path in ("/api/pm/list", "/api/pm/ai-agent", "/api/pm/leaky"):
        status, hook_body = http_json(run.url + path, token=body["token"])
        assert status == 200, hook_body
        seen.append(json.dumps(hook_body).encode())
    state = run.data_dir / ".pbhost" / "state.json"
    seen.append(state.read_bytes())
    assert run.stop() == 0
    # The hook's log bridge carried the child's stderr into PocketBase's logs.
    logs = b"".join(p.read_bytes() for p in run.data_dir.glob("auxiliary.db*"))
    assert f"stderr digest {digest}".encode() in logs
    seen += [logs, run.output().encode()]
    for blob in seen:
        for secret in secrets:
            assert secret.encode() not in blob, (secret, blob[:2000])

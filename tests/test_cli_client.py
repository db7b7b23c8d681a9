"""`pbhost ls|start|stop|restart|logs` as a person runs them, against a real running pbhost."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from support import (
    PY,
    TICKER,
    PbhostRun,
    Project,
    pbhost_process,
    pid_alive,
    read_control,
    wait_for,
)
from support import run_pbhost as pbhost


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PbhostRun]:
    project = Project(tmp_path_factory.mktemp("cli"))
    project.write("ticker.py", TICKER)
    project.config([{"id": "ticker", "script": "ticker.py", "interpreter": PY},
                    {"id": "later", "command": "sleep", "args": ["600"], "autostart": False}])
    run = project.serve()
    run.wait_line("control API at")
    run.wait_line("[ticker][STDOUT] tick 5")
    try:
        yield run
    finally:
        run.stop()


def api_list(run: PbhostRun) -> dict[str, dict[str, Any]]:
    res = pbhost(run.root, "ls", "--json")
    assert res.returncode == 0, res.stderr
    return {p["id"]: p for p in json.loads(res.stdout)}


def test_ls_prints_a_table(running: PbhostRun) -> None:
    res = pbhost(running.root, "ls")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["id", "pid", "status", "ready", "uptime", "restarts", "cpu",
                                "memory", "health"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:] if ln.strip()}
    procs = api_list(running)
    pb = rows["pocketbase"]
    assert pb[1] == str(procs["pocketbase"]["pid"]) and pb[2:4] == ["running", "yes"]
    assert re.fullmatch(r"\d+[smhd]", pb[4]) and re.fullmatch(r"\d+\.\d%", pb[6])
    assert pb[8] in ("KiB", "MiB", "GiB") and float(pb[7]) > 0
    assert pb[9] == "-"  # nothing to say about its health
    assert rows["ticker"][2:4] == ["running", "yes"]
    assert rows["later"][1:4] == ["-", "stopped", "-"]
    assert list(rows) == ["pocketbase", "ticker", "later"]
    assert "\x1b[" not in res.stdout  # no colour codes into a pipe


def test_ls_json_and_the_list_alias(running: PbhostRun) -> None:
    res = pbhost(running.root, "list", "--json")
    assert res.returncode == 0
    procs = json.loads(res.stdout)
    assert [p["id"] for p in procs] == ["pocketbase", "ticker", "later"]
    assert procs[1]["pid"] and procs[1]["status"] == "running"


def test_unknown_id_names_the_known_ones(running: PbhostRun) -> None:
    res = pbhost(running.root, "restart", "nope")
    assert res.returncode == 1
    assert res.stderr.strip() == ("pbhost: error: No process with id 'nope'. "
                                  "Known ids: pocketbase, ticker, later.")


def test_start_stop_restart(running: PbhostRun) -> None:
    res = pbhost(running.root, "start", "later")
    assert res.returncode == 0, res.stderr
    started = re.fullmatch(r"later started \(pid (\d+)\)\n", res.stdout)
    assert started, res.stdout
    pid = int(started.group(1))
    assert pid_alive(pid)
    res = pbhost(running.root, "restart", "later")
    restarted = re.fullmatch(r"later restarted \(pid (\d+)\)\n", res.stdout)
    assert restarted, res.stdout
    new = int(restarted.group(1))
    assert new != pid and pid_alive(new) and not pid_alive(pid)
    res = pbhost(running.root, "stop", "later")
    assert res.stdout == "later stopped\n" and not pid_alive(new)
    assert api_list(running)["later"]["status"] == "stopped"


def test_logs_shows_the_last_lines(running: PbhostRun) -> None:
    res = pbhost(running.root, "logs", "ticker", "-n", "3")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d \[ticker\]\[STDOUT\] tick \d+", ln) for ln in lines)
    res = pbhost(running.root, "logs", "-n", "1000")
    assert "[pocketbase][STDOUT] " in res.stdout and "[ticker][STDOUT] tick" in res.stdout


def test_logs_follow_prints_new_lines_until_interrupted(running: PbhostRun) -> None:
    with pbhost_process(running.root, "logs", "ticker", "-f", "-n", "1") as proc:
        assert proc.stdout and proc.stderr
        ticks: list[int] = []
        while len(ticks) < 5:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            ticks.append(int(line.rsplit(" ", 1)[1]))
        assert ticks == list(range(ticks[0], ticks[0] + 5))  # the last one, then live ones
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert "Traceback" not in proc.stderr.read()


def test_logs_follow_ends_when_pbhost_stops(project: Project) -> None:
    project.write("ticker.py", TICKER)
    project.config([{"id": "ticker", "script": "ticker.py", "interpreter": PY}])
    run = project.serve()
    run.wait_line("control API at")
    with pbhost_process(project.root, "logs", "-f") as proc:
        assert proc.stdout and proc.stderr
        while "[ticker][STDOUT] tick" not in (line := proc.stdout.readline()):
            assert line, proc.stderr.read()  # all processes, merged: PocketBase's lines too
        run.stop()
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0
        assert "the log stream ended (pbhost stopped)" in err


def test_nothing_running_and_stale_control_file(tmp_path: Path) -> None:
    res = pbhost(tmp_path, "ls")
    assert res.returncode == 1
    assert res.stderr.startswith("pbhost: error: no pbhost is running for ./pb_data "
                                 "(no .pbhost/control.json); start one with `pbhost serve`")
    dead = subprocess.Popen(["true"])
    dead.wait()
    control = tmp_path / "pb_data" / ".pbhost" / "control.json"
    control.parent.mkdir(parents=True)
    control.write_text(json.dumps({"url": "http://127.0.0.1:9", "token": "t", "pid": dead.pid}))
    res = pbhost(tmp_path, "logs")
    assert res.returncode == 1
    assert f"(pid {dead.pid}) is no longer running (stale {control})" in res.stderr
    control.write_text("{not json")
    res = pbhost(tmp_path, "ls")
    assert res.returncode == 1 and "is not a pbhost control file" in res.stderr
    assert "Traceback" not in res.stderr


def test_dir_option_and_env_override_with_a_unix_socket(project: Project) -> None:
    sock = project.root / "pm.sock"
    run = project.serve("--dir", "data2", pbhost_args=("--api", f"unix:{sock}"))
    info = read_control(project.root / "data2")
    assert info["url"] == f"unix:{sock}"
    res = pbhost(project.root, "ls", "--dir", "data2")
    assert res.returncode == 0 and "pocketbase" in res.stdout
    assert "no pbhost is running for ./pb_data" in pbhost(project.root, "ls").stderr
    env = {"PBHOST_API_URL": f"unix:{sock}", "PBHOST_API_TOKEN": info["token"]}
    res = pbhost(project.root / "data2", "ls", env=env)
    assert res.returncode == 0 and "pocketbase" in res.stdout
    res = pbhost(project.root, "ls", env={**env, "PBHOST_API_TOKEN": "wrong"})
    assert res.returncode == 1
    assert res.stderr.startswith("pbhost: error: the control API refused the token (401)")
    run.stop()


def test_a_pbhost_running_with_api_off_is_not_called_absent(project: Project) -> None:
    run = project.serve(pbhost_args=("--api", "off"))
    def ls_if_it_knows() -> subprocess.CompletedProcess[str] | None:
        res = pbhost(project.root, "ls")  # state.json names pbhost once PocketBase is spawned
        return res if "has no control API" in res.stderr else None

    res = wait_for(ls_if_it_knows, 15, "the --api off message")
    assert res.returncode == 1
    assert res.stderr == (f"pbhost: error: the pbhost running for ./pb_data (pid {run.proc.pid})"
                          " has no control API (started with --api off?)\n")
    run.stop()
    assert "no pbhost is running for ./pb_data" in pbhost(project.root, "ls").stderr


def test_unreachable_api_is_one_line(tmp_path: Path) -> None:
    env = {"PBHOST_API_URL": "http://127.0.0.1:9", "PBHOST_API_TOKEN": "t"}
    res = pbhost(tmp_path, "ls", env=env)
    assert res.returncode == 1
    assert res.stderr.startswith("pbhost: error: cannot reach pbhost's control API at "
                                 "http://127.0.0.1:9: ")
    assert len(res.stderr.splitlines()) == 1

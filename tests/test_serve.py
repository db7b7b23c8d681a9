"""`pbhost serve` end to end: real PocketBase, real sidecars, real signals (stories 1, 2, 3, 5)."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pexpect

from support import (
    FAMILY,
    IDLE,
    PY,
    STUBBORN,
    PbhostRun,
    Project,
    free_port,
    ints,
    pbhost_env,
    pid_alive,
    printed_pids,
    started_pid,
)


def spawn_times(run: PbhostRun) -> list[float]:
    return [float(m.group(1)) for m in re.finditer(r"t=([\d.]+)", run.output())]


def test_sidecar_starts_with_pocketbase_and_its_pid_is_known(project: Project) -> None:
    project.write("agent/main.py", FAMILY)
    project.config([{"id": "ai-agent", "script": "./agent/main.py", "cwd": "./agent",
                     "interpreter": PY}])
    run = project.serve()
    line = run.wait_line("[ai-agent][STDOUT] pid=")
    pid = ints(line, "pid")[0]
    assert pid_alive(pid)
    assert f"ai-agent: started (pid {pid}, {PY})" in run.output()
    # PocketBase came first: its start line precedes the sidecar's.
    out = run.output()
    assert out.index("pocketbase: started") < out.index("ai-agent: started")


def test_sigterm_leaves_no_survivor_grandchildren_included(project: Project) -> None:
    project.write("a.py", FAMILY)
    project.write("b.py", FAMILY)
    project.config([{"id": "a", "script": "a.py", "interpreter": PY},
                    {"id": "b", "script": "b.py", "interpreter": PY}])
    run = project.serve()
    found = [run.wait_line(f"[{i}][STDOUT] pid=") for i in "ab"]
    family = [pid for ln in found for pid in ints(ln)]
    family.append(started_pid(run.output()))
    assert all(pid_alive(p) for p in family)
    run.signal(signal.SIGTERM)
    assert run.wait_exit() == 0
    assert [p for p in family if pid_alive(p)] == []


def test_crashed_sidecar_is_restarted(project: Project) -> None:
    project.write("s.py", IDLE)
    project.config([{"id": "s", "script": "s.py", "interpreter": PY}])
    run = project.serve()
    run.wait_line("[s][STDOUT] pid=")
    first = printed_pids(run, "s")[0]
    os.kill(first, signal.SIGKILL)
    run.wait_line("[s][STDOUT] pid=", count=2)
    second = printed_pids(run, "s")[1]
    assert second != first and pid_alive(second) and not pid_alive(first)
    assert "killed by SIGKILL" in run.output()


def test_quick_exits_back_off_1_2_4_then_give_up(project: Project) -> None:
    project.write("q.py", "import time\nprint(f't={time.time()}', flush=True)\n"
                          "raise SystemExit(3)\n")
    project.config([{"id": "q", "script": "q.py", "interpreter": PY, "maxRetries": 4}])
    run = project.serve()
    run.wait_line("q: giving up after 4 quick failures", timeout=20)
    times = spawn_times(run)
    assert len(times) == 4
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] < gaps[1] < gaps[2]
    for gap, want in zip(gaps, (1.0, 2.0, 4.0), strict=True):
        assert want - 0.05 <= gap <= want + 1.5, gaps
    assert "exited with code 3" in run.output()
    assert run.healthy()  # PocketBase is unaffected


def test_healthy_run_restarts_at_once_and_resets_the_count(project: Project) -> None:
    # Runs past the (test-sized) healthy threshold, then fails: no backoff wait.
    project.write("h.py", "import time\nprint(f't={time.time()}', flush=True)\n"
                          "time.sleep(1.2)\nraise SystemExit(1)\n")
    project.config([{"id": "h", "script": "h.py", "interpreter": PY, "maxRetries": 1}])
    run = project.serve(env={"PBHOST_HEALTHY_SECONDS": "1"})
    run.wait_line("[h][STDOUT] t=", count=3, timeout=20)
    times = spawn_times(run)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(g < 1.2 + 0.8 for g in gaps), gaps  # never a backoff second on top
    # maxRetries 1 would have crashed it at the first failure: the count was reset each time.
    assert "giving up" not in run.output()
    assert "restarting in" not in run.output()


def test_config_missing_runs_pocketbase_alone(project: Project) -> None:
    run = project.serve()
    run.wait_line("running PocketBase alone")
    assert run.healthy()


def test_broken_config_logs_the_error_and_pocketbase_still_serves(project: Project) -> None:
    project.write("pb_processes.json", '[{"id": "x", "script": "a.py",}]')
    run = project.serve()
    line = run.wait_line("pb_processes.json")
    assert "line 1" in line and "column" in line
    run.wait_line("starting PocketBase without sidecars")
    assert run.healthy()


def test_strict_makes_a_broken_config_fatal(project: Project) -> None:
    project.write("pb_processes.json", "[{")
    port = free_port()
    run = project.serve(pbhost_args=("--strict",), port=port, wait_healthy=False)
    assert run.wait_exit() == 2
    assert "pb_processes.json" in run.output() and "Traceback" not in run.output()
    assert "pocketbase: started" not in run.output()


def test_child_ignoring_sigterm_is_killed_after_stop_timeout(project: Project) -> None:
    project.write("stubborn.py", STUBBORN)
    project.config([{"id": "stubborn", "script": "stubborn.py", "interpreter": PY,
                     "args": ["SIGTERM"], "stopTimeout": "1s"}])
    run = project.serve()
    run.wait_line("[stubborn][STDOUT] pid=")
    pid = printed_pids(run, "stubborn")[0]
    started = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait_exit() == 0
    took = time.monotonic() - started
    assert not pid_alive(pid)
    assert 0.9 <= took < 6, took
    assert "stubborn: still running 1s after SIGTERM; sending SIGKILL" in run.output()


def test_missing_command_ends_crashed_while_pocketbase_serves(project: Project) -> None:
    # Default maxRetries (unlimited): a command that cannot be started at all still ends
    # crashed at once, with the reason, instead of retrying the same exec forever.
    project.config([{"id": "ghost", "command": "no-such-binary-pbhost"}])
    run = project.serve()
    run.wait_line("ghost: cannot start: command not found: no-such-binary-pbhost; marked crashed")
    assert "restarting in" not in run.output()
    assert run.healthy()


def test_a_command_that_is_not_executable_ends_crashed_with_the_reason(project: Project) -> None:
    project.write("tool", "#!/bin/sh\necho hi\n", mode=0o644)
    project.config([{"id": "tool", "command": "./tool"}])
    run = project.serve()
    run.wait_line("tool: cannot start: permission denied")
    assert "restarting in" not in run.output()


def test_sidecar_environment_is_injected(project: Project) -> None:
    project.write("env.py", """
        import os
        for k in ("PB_URL", "PB_PORT", "PB_DATA_DIR", "DB_DSN", "PBHOST_PROCESS_ID",
                  "PYTHONUNBUFFERED", "MINE", "FROM_HOST"):
            print(f"{k}={os.environ.get(k)}")
    """)
    project.config([{"id": "envy", "script": "env.py", "interpreter": PY, "maxRetries": 0,
                     "env": {"MINE": "${HOST_VALUE:-fallback}", "FROM_HOST": "${HOST_VALUE}"}}])
    run = project.serve(env={"HOST_VALUE": "hv"})
    run.wait_line("[envy][STDOUT] FROM_HOST=")
    data = (project.root / "pb_data").resolve()
    out = run.output()
    assert f"[envy][STDOUT] PB_URL=http://127.0.0.1:{run.port}" in out
    assert f"[envy][STDOUT] PB_PORT={run.port}" in out
    assert f"[envy][STDOUT] PB_DATA_DIR={data}" in out
    assert f"[envy][STDOUT] DB_DSN=sqlite:///{data}/data.db" in out
    assert "[envy][STDOUT] PBHOST_PROCESS_ID=envy" in out
    assert "[envy][STDOUT] PYTHONUNBUFFERED=1" in out
    assert "[envy][STDOUT] MINE=hv" in out and "[envy][STDOUT] FROM_HOST=hv" in out


def test_dot_venv_python_is_used_when_present(project: Project) -> None:
    # A venv python stand-in that announces itself, then runs the real interpreter.
    project.write("agent/.venv/bin/python", f"#!/bin/sh\necho from-dot-venv\nexec {PY} \"$@\"\n",
                  mode=0o755)
    project.write("agent/main.py", "print('agent ran')\n")
    project.config([{"id": "v", "script": "./agent/main.py", "cwd": "./agent", "maxRetries": 0}])
    run = project.serve()
    run.wait_line("[v][STDOUT] agent ran")
    assert "[v][STDOUT] from-dot-venv" in run.output()


def test_pocketbase_port_in_use_gives_up_and_exits_non_zero(project: Project) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        run = project.serve(port=port, wait_healthy=False)
        assert run.wait_exit(timeout=30) == 1
    out = run.output()
    assert "address already in use" in out
    assert "PocketBase gave up; stopping everything" in out


def test_a_pbhost_option_after_serve_is_explained(project: Project) -> None:
    """Everything after `serve` goes to PocketBase, which only says "unknown flag"."""
    run = project.serve("--no-color", wait_healthy=False)
    assert run.wait_exit(timeout=30) == 1
    out = run.output()
    assert "unknown flag: --no-color" in out  # PocketBase's own word, unchanged
    assert ("[pbhost] --no-color comes after `serve`, so it goes to PocketBase; pbhost's own "
            "options go before `serve`: pbhost --no-color serve ...") in out


def test_missing_pocketbase_binary_is_a_clear_message(project: Project) -> None:
    run = project.serve(pbhost_args=("--pocketbase", "./nope"), wait_healthy=False)
    assert run.wait_exit() == 127
    assert "pbhost: error: --pocketbase names './nope'" in run.output()
    assert "Traceback" not in run.output()


def test_second_sigint_kills_everything_at_once(project: Project) -> None:
    project.write("stubborn.py", STUBBORN)
    project.config([{"id": "stubborn", "script": "stubborn.py", "interpreter": PY,
                     "args": ["SIGTERM", "SIGINT"], "stopTimeout": "60s"}])
    run = project.serve()
    run.wait_line("[stubborn][STDOUT] pid=")
    pid = printed_pids(run, "stubborn")[0]
    run.signal(signal.SIGINT)
    run.wait_line("SIGINT received")
    run.signal(signal.SIGINT)
    assert run.wait_exit(timeout=10) == 130
    assert not pid_alive(pid)


def test_ctrl_c_in_a_terminal_stops_everything(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.write("s.py", FAMILY)
    project.config([{"id": "s", "script": "s.py", "interpreter": PY}])
    port = free_port()
    child: pexpect.spawn[bytes] = pexpect.spawn(
        PY, ["-m", "pbhost", "serve", "--http", f"127.0.0.1:{port}"], cwd=str(tmp_path),
        env=pbhost_env(), timeout=20)
    try:
        # On a terminal the id is coloured: `\x1b[..m[s]\x1b[0m[STDOUT] ...`.
        child.expect(r"\[s\](?:\x1b\[0m)?\[STDOUT\] pid=(\d+) kid=(\d+)")
        assert isinstance(child.match, re.Match)
        pids = [int(child.match.group(1)), int(child.match.group(2))]
        child.sendcontrol("c")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    assert [p for p in pids if pid_alive(p)] == []

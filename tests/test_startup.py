"""The fast start path: PocketBase is spawned before click and asyncio are imported, and every
way out of start-up still leaves no PocketBase behind."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pbhost.cli.commands import cli
from pbhost.options import OPTIONS, Options, by_name
from pbhost.startup import prespawn
from support import (
    PY,
    Project,
    free_port,
    pbhost_process,
    pid_alive,
    pids_running,
    proc_environ,
    run_pbhost,
    started_pid,
    upsert_superuser,
    wait_for,
)

# Stands in for the pocketbase binary where a test must know its pid at once: it records its
# pid, starts a child in its group, and waits (exec keeps the pid) until signalled.
FAKE_PB = """\
#!/bin/sh
sleep 600 &
echo "$$ $!" > "$0.pids"
exec sleep 600
"""


def fake_pocketbase(project: Project) -> Path:
    return project.write("fakepb", FAKE_PB, mode=0o755)


def recorded_pids(fake: Path) -> list[int]:
    pids_file = Path(f"{fake}.pids")
    return [int(p) for p in pids_file.read_text().split()] if pids_file.exists() else []


def test_option_click_refuses_after_the_early_spawn_stops_that_pocketbase(
        project: Project) -> None:
    fake = fake_pocketbase(project)
    res = run_pbhost(project.root, "--pocketbase", str(fake), "--log-format", "xml", "serve")
    assert res.returncode == 2
    assert "Invalid value for '--log-format'" in res.stderr
    assert "Traceback" not in res.stderr
    pids = recorded_pids(fake)
    assert pids, "the fast path did not spawn PocketBase before click ran"
    wait_for(lambda: not any(pid_alive(p) for p in pids), 5, "the early PocketBase group gone")


def test_refused_option_leaves_no_real_pocketbase(project: Project) -> None:
    data = project.root / "refused_option_data"
    res = run_pbhost(project.root, "--log-format", "xml", "serve", "--http",
                     f"127.0.0.1:{free_port()}", "--dir", str(data))
    assert res.returncode == 2
    assert "Invalid value for '--log-format'" in res.stderr
    wait_for(lambda: not pids_running(str(data)), 5, "no pocketbase left")


def test_strict_refuses_a_broken_file_before_pocketbase_starts(project: Project) -> None:
    fake = fake_pocketbase(project)
    project.write("pb_processes.json", '[{"id": "a", "scrpit": "a.py"}]')
    res = run_pbhost(project.root, "--strict", "--pocketbase", str(fake), "serve")
    assert res.returncode == 2
    assert "pb_processes.json" in res.stderr and "scrpit" in res.stderr
    assert "Traceback" not in res.stderr
    assert recorded_pids(fake) == [], "PocketBase was started despite --strict"


def test_strict_from_the_environment_also_checks_first(project: Project) -> None:
    fake = fake_pocketbase(project)
    project.write("pb_processes.json", "[{")
    res = run_pbhost(project.root, "--pocketbase", str(fake), "serve", env={"PBHOST_STRICT": "yes"})
    assert res.returncode == 2
    assert recorded_pids(fake) == []


def test_sigterm_during_startup_stops_pocketbase_and_exits_0(project: Project) -> None:
    fake = fake_pocketbase(project)
    with pbhost_process(project.root, "--pocketbase", str(fake), "serve",
                        stdout=subprocess.DEVNULL) as proc:
        pids = wait_for(lambda: recorded_pids(fake), 10, "the early PocketBase's pid file")
        proc.send_signal(signal.SIGTERM)  # most likely while pbhost is still importing
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    wait_for(lambda: not any(pid_alive(p) for p in pids), 5, "the PocketBase group gone")


# A PocketBase that takes its time to stop: it notes the SIGTERM and keeps running.
SLOW_STOP_PB = """\
#!/bin/sh
echo "$$" > "$0.pids"
trap 'echo term > "$0.term"' TERM
while :; do sleep 0.1; done
"""


def test_second_ctrl_c_during_startup_kills_at_once_without_traceback(project: Project) -> None:
    fake = project.write("fakepb", SLOW_STOP_PB, mode=0o755)
    with pbhost_process(project.root, "--pocketbase", str(fake), "serve",
                        stdout=subprocess.DEVNULL) as proc:
        pids = wait_for(lambda: recorded_pids(fake), 10, "the early PocketBase's pid file")
        proc.send_signal(signal.SIGINT)  # most likely while pbhost is still importing
        wait_for(Path(f"{fake}.term").exists, 10, "PocketBase asked to stop")
        proc.send_signal(signal.SIGINT)  # while pbhost waits for it to stop
        _, err = proc.communicate(timeout=4)  # well before the 5 s stop timeout
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    wait_for(lambda: not any(pid_alive(p) for p in pids), 5, "the PocketBase group gone")


def test_served_pocketbase_is_the_early_one(project: Project) -> None:
    """The host adopts the child the fast path spawned instead of starting a second one."""
    upsert_superuser(project.root)  # else PocketBase's xdg-open also names the port
    run = project.serve(pbhost_args=("-v",))
    run.wait_line("PocketBase was spawned before click and asyncio were imported")
    pid = started_pid(run.wait_line("pocketbase: started (pid"))
    assert pid_alive(pid)
    assert run.output().count("pocketbase: started") == 1
    assert len(pids_running(f"127.0.0.1:{run.port}")) == 2  # pbhost and PocketBase


# -- the quick reading of argv ------------------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["serve"], (None, None, False, [])),
    (["serve", "--http", "0.0.0.0:80", "--dir", "/d"], (None, None, False,
                                                        ["--http", "0.0.0.0:80", "--dir", "/d"])),
    (["-c", "x.yaml", "--pocketbase", "./pb", "serve"], ("x.yaml", "./pb", False, [])),
    (["--config=x.json", "--strict", "-v", "--no-color", "serve", "-v"],
     ("x.json", None, True, ["-v"])),
    (["--api", "off", "--log-format", "json", "--timestamps", "serve"], (None, None, False, [])),
])
def test_parse_early_reads_what_decides_the_spawn(
        argv: list[str], expected: tuple[str | None, str | None, bool, list[str]]) -> None:
    parsed = prespawn.parse_early(argv, {})
    assert parsed is not None
    opts, serve_args = parsed
    assert (opts.config, opts.pocketbase, opts.strict, serve_args) == expected


@pytest.mark.parametrize("argv", [
    [], ["--version"], ["--help"], ["check"], ["list"], ["serve", "--help"], ["serve", "-h"],
    ["-vc", "x.json", "serve"], ["--config"], ["--strict=1", "serve"], ["--bogus", "serve"],
])
def test_parse_early_steps_aside_for_anything_else(argv: list[str]) -> None:
    assert prespawn.parse_early(argv, {}) is None


def test_parse_early_reads_the_environment_like_click() -> None:
    env = {"PBHOST_CONFIG": "e.json", "PBHOST_POCKETBASE": "/e/pb", "PBHOST_STRICT": "On"}
    opts, _ = prespawn.parse_early(["serve"], env) or (None, None)
    assert opts is not None and (opts.config, opts.pocketbase, opts.strict) == \
        ("e.json", "/e/pb", True)
    opts, _ = prespawn.parse_early(["-c", "o.json", "serve"], env) or (None, None)
    assert opts is not None and opts.config == "o.json"  # the option wins, as in click
    assert prespawn.parse_early(["serve"], {"PBHOST_STRICT": "maybe"}) is None


@pytest.mark.parametrize("argv, env, expected", [
    (["serve"], {}, True),
    (["--no-pb-hooks", "serve"], {}, False),
    (["serve"], {"PBHOST_PB_HOOKS": "0"}, False),
    (["serve"], {"PBHOST_PB_HOOKS": " Off "}, False),
    (["serve"], {"PBHOST_PB_HOOKS": ""}, True),  # empty is unset for click
    (["--pb-hooks", "serve"], {"PBHOST_PB_HOOKS": "0"}, True),  # the option wins
])
def test_parse_early_reads_pb_hooks_like_click(argv: list[str], env: dict[str, str],
                                               expected: bool) -> None:
    opts, _ = prespawn.parse_early(argv, env) or (None, None)
    assert opts is not None and opts.pb_hooks is expected
    assert prespawn.parse_early(["serve"], {"PBHOST_PB_HOOKS": "perhaps"}) is None


def test_early_option_table_matches_the_click_options() -> None:
    declared: dict[str, bool] = {}  # option string -> is a flag
    for param in cli.params:
        if param.name in ("version",):
            continue  # eager and exits: the fast path must not know it
        for name in [*param.opts, *getattr(param, "secondary_opts", [])]:
            declared[name] = bool(getattr(param, "is_flag", False))
    known = {name: opt.flag for name, (opt, _) in by_name().items()}
    assert known == declared


def test_options_value_class_has_a_field_per_declared_option() -> None:
    """Options.__init__ spells out each field with its type: it must agree with the table."""
    import inspect
    params = inspect.signature(Options.__init__).parameters
    assert set(params) - {"self"} == {opt.field for opt in OPTIONS} == set(Options.__slots__)
    assert {name: p.default for name, p in params.items() if name != "self"} == \
        {opt.field: opt.default for opt in OPTIONS}
    defaults: dict[str, Any] = {opt.field: opt.default for opt in OPTIONS}  # each its own type
    assert Options() == Options(**defaults)


def test_early_pocketbase_gets_the_runs_environment(project: Project) -> None:
    """Spawned before notify.py and leftovers.py are loaded, PocketBase still carries the run
    id the next run looks for, and not pbhost's own NOTIFY_SOCKET."""
    project.write("env.py", """
        import os, threading, time
        print("run=" + os.environ["PBHOST_RUN_ID"], flush=True)
        threading.Event().wait()
    """)
    project.config([{"id": "env", "script": "env.py", "interpreter": PY}])
    run = project.serve(env={"NOTIFY_SOCKET": "@pbhost-test-none"})
    run_id = run.wait_line("[env][STDOUT] run=").rsplit("=", 1)[1]
    pb_env = proc_environ(started_pid(run.wait_line("pocketbase: started (pid")))
    assert pb_env.get("PBHOST_RUN_ID") == run_id
    assert "NOTIFY_SOCKET" not in pb_env
    assert pb_env.get("PBHOST_API_URL") == f"http://127.0.0.1:{run.port + 1}"
    assert len(pb_env.get("PBHOST_API_TOKEN_INTERNAL", "")) >= 32

"""Reloading pb_processes.json while everything runs (issue 15): real pbhost, real PocketBase,
real edits of the real file, `pbhost reload`, POST /api/pm/reload, real SIGHUP (and a real
terminal through pexpect), a dev-mode save.

Each sidecar prints `pid=N colour=C` when it starts, so every start shows in the stream with
its pid and the environment it got; /proc says which processes are still there.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import pexpect
import pytest

from support import (
    PY,
    STUBBORN,
    Api,
    PbhostRun,
    Project,
    free_port,
    http_json,
    login,
    pbhost_env,
    pid_alive,
    pids_running,
    printed_pids,
    proc_environ,
    run_pbhost,
    upsert_superuser,
    user_token,
    wait_for,
)

SIDE = """\
import os, threading
print(f"pid={os.getpid()} colour={os.environ.get('COLOUR', '-')}", flush=True)
threading.Event().wait()
"""
# Leaves a process outside its group (a new session), says its pid, and waits; the escapee
# ignores SIGTERM when asked to, so only a SIGKILL ends it.
ESCAPER = """\
import os, subprocess, sys, threading
code = ("import signal, sys, threading\\n"
        "if sys.argv[1] == 'stubborn': signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
        "threading.Event().wait()")
kid = subprocess.Popen([sys.executable, "-c", code, sys.argv[1]], start_new_session=True)
print(f"pid={os.getpid()} kid={kid.pid}", flush=True)
threading.Event().wait()
"""


def side(proc_id: str, colour: str = "red", **extra: Any) -> dict[str, Any]:
    return {"id": proc_id, "script": "side.py", "interpreter": PY,
            "env": {"COLOUR": colour}, **extra}


def start(project: Project, processes: list[dict[str, Any]], **serve: Any) -> PbhostRun:
    project.write("side.py", SIDE)
    project.config(processes)
    run = project.serve(**serve)
    for proc in processes:
        if proc.get("autostart", True):
            run.wait_line(f"[{proc['id']}][STDOUT] pid=")
    return run


def pids(api: Api) -> dict[str, int | None]:
    return {p["id"]: p["pid"] for p in api.body("/api/pm/list")}


def reload(project: Project) -> tuple[int, str, str]:
    done = run_pbhost(project.root, "reload")
    return done.returncode, done.stdout, done.stderr


def reload_ok(project: Project) -> str:
    code, out, err = reload(project)
    assert code == 0, (out, err)
    return out


def stays(pred: Any, seconds: float = 1.5, desc: str = "condition") -> None:
    """A bounded wait for a negative: `pred` holds all along for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert pred(), desc
        time.sleep(0.05)


# -- one edit: add, remove, change -----------------------------------------------------------
def test_one_edit_adds_removes_and_changes_and_leaves_the_rest_alone(project: Project) -> None:
    run = start(project, [side("keep"), side("change"), side("drop")])
    api = Api(run)
    before = pids(api)
    project.config([side("keep"), side("change", "blue"), side("new", "green")])

    out = reload_ok(project)
    assert "1 added, 1 removed, 1 restarted, 1 unchanged" in out.splitlines()[0], out
    assert re.search(r"restarted\s+change\s+pid \d+\s+\(env changed\)", out), out

    after = pids(api)
    assert list(after) == ["pocketbase", "keep", "change", "new"]
    assert after["pocketbase"] == before["pocketbase"]  # PocketBase is never touched
    assert after["keep"] == before["keep"]
    changed = after["change"]
    assert changed is not None and changed != before["change"]
    assert proc_environ(changed)["COLOUR"] == "blue"
    assert run.wait_line(f"[change][STDOUT] pid={changed} colour=blue")
    dropped = before["drop"]
    assert dropped is not None and not pid_alive(dropped)
    old_change = before["change"]
    assert old_change is not None and not pid_alive(old_change)
    new = after["new"]
    assert new is not None and proc_environ(new)["COLOUR"] == "green"
    assert api.get("/api/pm/drop")[0] == 404
    # The log says the same, one line per process.
    for line in ("reload: keep: unchanged", "reload: change: restarted (env changed)",
                 "reload: drop: removed", "reload: new: added"):
        run.wait_line(line)
    assert printed_pids(run, "keep") == [before["keep"]]


def test_a_reload_with_no_change_touches_nothing(project: Project) -> None:
    run = start(project, [side("a"), side("b")])
    api = Api(run)
    before = pids(api)
    status, body = api.post("/api/pm/reload")
    assert status == 200, body
    assert (body["unchanged"], body["restarted"], body["added"], body["removed"]) == (
        ["a", "b"], [], [], [])
    assert [p["id"] for p in body["processes"]] == ["pocketbase", "a", "b"]
    assert pids(api) == before


# -- broken edits change nothing ---------------------------------------------------------------
def test_a_broken_edit_changes_nothing_and_says_why(project: Project) -> None:
    run = start(project, [side("a"), side("b")])
    api = Api(run)
    before = pids(api)
    path = project.root / "pb_processes.json"
    good = path.read_text()

    path.write_text(good.replace('"id": "b",', '"id": "b",,'))  # a JSON syntax error
    code, out, err = reload(project)
    assert code == 2, (out, err)
    assert re.search(rf"pbhost: error: {re.escape(str(path))}: JSON syntax error at line "
                     r"\d+, column \d+: ", err), err
    run.wait_line("JSON syntax error at line")

    path.write_text(good.replace('"interpreter"', '"interpeter"'))  # an unknown key
    code, out, err = reload(project)
    assert code == 2
    assert (f'pbhost: error: {path}: process "a": unknown key "interpeter" '
            '(did you mean "interpreter"?)') in err, err

    project.config([side("a", dependsOn={"b": "started"}), side("b", dependsOn={"a": "ready"}),
                    side("c")])  # a dependsOn cycle (and a new process: it must not start)
    code, out, err = reload(project)
    assert code == 2
    assert 'process "a": "dependsOn" forms a cycle: a -> b -> a' in err, err
    run.wait_line("forms a cycle: a -> b -> a")

    assert pids(api) == before
    assert "[c][STDOUT]" not in run.output()
    # Once fixed, the next reload applies it.
    project.config([side("a"), side("b"), side("c")])
    assert "1 added" in reload_ok(project)
    run.wait_line("[c][STDOUT] pid=")
    assert {k: v for k, v in pids(api).items() if k != "c"} == before


def test_a_file_broken_at_start_is_fixed_by_a_reload(project: Project) -> None:
    """PocketBase started alone on a broken file; once it is fixed, no restart is needed."""
    project.write("side.py", SIDE)
    (project.root / "pb_processes.json").write_text('[{"id": "a", "scirpt": "side.py"}]')
    run = project.serve()
    run.wait_line("the process file is broken")
    pb = pids(Api(run))["pocketbase"]
    project.config([side("a")])
    assert "1 added" in reload_ok(project)
    run.wait_line("[a][STDOUT] pid=")
    assert pids(Api(run))["pocketbase"] == pb


def test_an_envfile_that_cannot_be_read_is_an_error_too(project: Project) -> None:
    run = start(project, [side("a")])
    api = Api(run)
    before = pids(api)
    project.config([side("a", envFile="./missing.env")])
    code, _, err = reload(project)
    assert code == 2
    assert 'process "a": "envFile" ' in err and "missing.env" in err, err
    assert pids(api) == before


# -- SIGHUP ------------------------------------------------------------------------------------
def test_sighup_with_stdin_not_a_terminal_reloads(project: Project) -> None:
    run = start(project, [side("a")])  # Project.serve: stdin /dev/null, output to a file
    api = Api(run)
    before = pids(api)
    project.config([side("a"), side("b", "green")])
    run.signal(signal.SIGHUP)
    run.wait_line("reloading ")
    run.wait_line("[b][STDOUT] pid=")
    run.wait_line("reloaded ")
    assert run.proc.poll() is None
    after = pids(api)
    assert (after["pocketbase"], after["a"]) == (before["pocketbase"], before["a"])
    assert "SIGHUP received: stopping" not in run.output()


@pytest.mark.parametrize("how", ["SIGHUP", "hang-up"])
def test_sighup_on_a_terminal_shuts_down(tmp_path: Path, how: str) -> None:
    """Under a pty pbhost is on a terminal: a hang-up means the terminal is gone."""
    project = Project(tmp_path)
    project.write("side.py", SIDE)
    project.config([side("a")])
    port = free_port()
    term: pexpect.spawn[bytes] = pexpect.spawn(
        PY, ["-m", "pbhost", "--no-color", "serve", "--http", f"127.0.0.1:{port}"],
        cwd=str(tmp_path), env=pbhost_env(), timeout=20)
    try:
        term.expect(r"\[a\]\[STDOUT\] pid=(\d+)")
        assert isinstance(term.match, re.Match)
        sidecar = int(term.match.group(1))
        if how == "SIGHUP":
            term.kill(signal.SIGHUP)
            term.expect("SIGHUP received: stopping all processes")
            term.expect(pexpect.EOF)
            term.wait()
            assert term.exitstatus == 0, term.before
        else:  # the terminal itself goes: the kernel hangs up pbhost's session
            pty = cast(Any, term).ptyproc  # not in the stubs: pexpect's own PtyProcess
            pty.fileobj.close()  # the terminal's master side
            wait_for(lambda: not pty.isalive(), 20, "pbhost gone after the hang-up")
            assert pty.exitstatus == 0
    finally:
        term.close(force=True)
    assert not pid_alive(sidecar)


# -- dev mode: saving the file reloads it --------------------------------------------------------
def test_a_dev_mode_save_reloads_by_itself(project: Project) -> None:
    # `dev` watches the project folder (its cwd), where pb_processes.json is: saving the file is
    # a reload, not a change of dev's code.
    run = start(project, [side("dev", devMode=True), side("b")])
    api = Api(run)
    before = pids(api)
    project.config([side("dev", devMode=True), side("b"), side("c", "green")])
    run.wait_line("reloading ")
    run.wait_line("[c][STDOUT] pid=")
    assert "pb_processes.json changed" in run.wait_line("reloading ")
    after = pids(api)
    assert (after["pocketbase"], after["dev"], after["b"]) == (
        before["pocketbase"], before["dev"], before["b"])

    # A broken save leaves everything running and says why.
    (project.root / "pb_processes.json").write_text("[{\"id\": \"dev\",")
    run.wait_line("has errors; nothing changed")
    run.wait_line("JSON syntax error at line 1")
    stays(lambda: pids(api) == after, 1.0, "nothing restarted")

    # Dev-mode watching changes apply without a restart: dev mode off for `dev`, on for `b`.
    project.config([side("dev"), side("b", devMode=True), side("c", "green")])
    run.wait_line("reload: dev: updated in place (devMode changed)")
    run.wait_line("reload: b: updated in place (devMode changed)")
    assert pids(api) == after
    (project.root / "side.py").write_text(SIDE + "# v2\n")  # b's code (and dev's, c's) changed
    run.wait_line("b: restarting (side.py changed)")
    run.wait_line("[b][STDOUT] pid=", count=2)
    stays(lambda: pids(api)["dev"] == after["dev"] and pids(api)["c"] == after["c"], 1.5,
          "only the dev-mode sidecar restarts")


# -- removing a process whose children escaped its group -------------------------------------
def test_removing_a_process_ends_what_escaped_its_group(project: Project) -> None:
    project.write("escaper.py", ESCAPER)
    escaper = [{"id": "esc", "script": "escaper.py", "interpreter": PY, "args": ["plain"]},
               {"id": "mule", "script": "escaper.py", "interpreter": PY, "args": ["stubborn"],
                "stopTimeout": "1s"}]
    run = start(project, [side("a"), *escaper])
    api = Api(run)
    kids = {proc_id: int(re.findall(r"kid=(\d+)", run.wait_line(f"[{proc_id}][STDOUT]"))[0])
            for proc_id in ("esc", "mule")}
    assert all(pid_alive(k) for k in kids.values())
    a = pids(api)["a"]

    project.config([side("a")])
    out = reload_ok(project)
    assert "2 removed" in out
    # Gone when the answer comes, the one that ignores SIGTERM too (SIGKILL at its stopTimeout).
    assert [k for k in kids.values() if pid_alive(k)] == []
    assert pids(api) == {"pocketbase": pids(api)["pocketbase"], "a": a}
    run.wait_line("left outside its group; mule was removed")

    # Removed and back at once (inside the 100 ms after its exit when pbhost sweeps what an
    # exited run left): what the new run leaves outside its group is its own, no leftover.
    project.config([side("a"), escaper[0]])
    assert api.post("/api/pm/reload")[0] == 200
    second = int(re.findall(r"kid=(\d+)", run.wait_line("[esc][STDOUT]", count=2))[0])
    project.config([side("a")])
    assert api.post("/api/pm/reload")[0] == 200
    assert not pid_alive(second)
    project.config([side("a"), escaper[0]])
    assert api.post("/api/pm/reload")[0] == 200
    kid = int(re.findall(r"kid=(\d+)", run.wait_line("[esc][STDOUT]", count=3))[0])
    stays(lambda: pid_alive(kid), 1.5, "the re-added process's escapee lives")


# -- concurrency -------------------------------------------------------------------------------
def test_twenty_reloads_at_once_end_with_one_consistent_set(project: Project) -> None:
    run = start(project, [side("a"), side("b"), side("c")])
    api = Api(run)
    before = pids(api)
    final = [side("a"), side("b", "blue"), side("d"), side("e")]
    project.config(final)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: api.post("/api/pm/reload", timeout=60), range(20)))
    assert [status for status, _ in answers] == [200] * 20, answers
    # The first one applied the edit; those that came while it ran share the next one, which
    # found nothing left to do.
    assert {json.dumps(body["restarted"]) for _, body in answers} <= {'["b"]', "[]"}
    wait_for(lambda: all(p["status"] == "running" for p in api.body("/api/pm/list")), 15,
             "every process running")
    after = pids(api)
    assert list(after) == ["pocketbase", "a", "b", "d", "e"]
    assert (after["pocketbase"], after["a"]) == (before["pocketbase"], before["a"])
    run.wait_line("[b][STDOUT] pid=", count=2)
    run.wait_line("[d][STDOUT] pid=")
    run.wait_line("[e][STDOUT] pid=")
    assert len(printed_pids(run, "b")) == 2  # restarted once, not once per request
    assert [len(printed_pids(run, i)) for i in ("d", "e")] == [1, 1]
    # One live process per id, and none of the removed one's.
    script = str(project.root / "side.py")
    live = [proc_environ(pid).get("PBHOST_PROCESS_ID", "?") for pid in pids_running(script)]
    assert sorted(live) == ["a", "b", "d", "e"], live


def test_a_reload_during_shutdown_is_refused(project: Project) -> None:
    project.write("slow.py", STUBBORN)
    project.config([{"id": "slow", "script": "slow.py", "interpreter": PY,
                     "stopTimeout": "5s"}])
    run = project.serve()
    run.wait_line("[slow][STDOUT] pid=")
    api = Api(run)
    run.signal(signal.SIGTERM)
    run.wait_line("SIGTERM received")
    status, body = api.post("/api/pm/reload")
    assert (status, body["message"]) == (503, "pbhost is shutting down."), body
    assert run.wait_exit() == 0


# -- what a reload keeps ----------------------------------------------------------------------
def test_a_process_stopped_on_request_stays_stopped_unless_its_spec_changed(
        project: Project) -> None:
    run = start(project, [side("a"), side("b")])
    api = Api(run)
    assert api.post("/api/pm/a/stop")[0] == 200
    project.config([side("a"), side("b", "blue")])
    reload_ok(project)
    run.wait_line("[b][STDOUT] pid=", count=2)
    assert api.proc("a")["status"] == "stopped"
    assert len(printed_pids(run, "a")) == 1
    # A new spec for it is a new definition: it starts with it.
    project.config([side("a", "green"), side("b", "blue")])
    out = reload_ok(project)
    assert re.search(r"restarted\s+a\s+pid \d+", out), out
    run.wait_line("[a][STDOUT] pid=", count=2)
    assert "colour=green" in run.wait_line("[a][STDOUT] pid=", count=2)


def test_dependents_of_a_restarted_process_wait_until_it_is_ready_again(
        project: Project) -> None:
    project.write("db.py", """\
        import os, threading, time
        print(f"pid={os.getpid()} warming up", flush=True)
        time.sleep(float(os.environ["WARM"]))
        print("db is ready", flush=True)
        threading.Event().wait()
    """)
    db = {"id": "db", "script": "db.py", "interpreter": PY, "env": {"WARM": "0.2"},
          "readinessProbe": {"logLine": "db is ready"}}
    app = side("app", dependsOn={"db": "ready"})
    run = start(project, [db, app])
    project.config([{**db, "env": {"WARM": "1.5"}}, {**app, "env": {"COLOUR": "blue"}}])
    reload_ok(project)
    run.wait_line("[app][STDOUT] pid=", count=2, timeout=20)
    out = run.output()
    second_ready = [m.start() for m in re.finditer(r"\[db\]\[STDOUT\] db is ready", out)][1]
    second_app = [m.start() for m in re.finditer(r"\[app\]\[STDOUT\] pid=", out)][1]
    assert second_ready < second_app, out[-3000:]


def test_a_reload_that_sets_the_first_memory_limit_gets_it_watched(project: Project) -> None:
    run = start(project, [side("a")])
    project.config([side("a", maxMemory="1M", maxMemoryFor="0.2s", maxRetries=1)])
    reload_ok(project)
    run.wait_line("over maxMemory 1 MiB for 0.2s; restarting", timeout=20)


def test_pocketbase_hook_reloads_for_superusers(project: Project) -> None:
    upsert_superuser(project.root)
    run = start(project, [side("a")])
    run.wait_line("PocketBase hook answers", timeout=20)
    su = login(run)
    user = user_token(run, su)
    project.config([side("a"), side("b")])
    url = f"{run.url}/api/pm/reload"
    assert http_json(url, "POST")[0] == 401
    assert http_json(url, "POST", user)[0] == 403
    status, body = http_json(url, "POST", su, timeout=60)
    assert status == 200, body
    assert (body["added"], body["unchanged"]) == (["b"], ["a"])
    run.wait_line("[b][STDOUT] pid=")
    (project.root / "pb_processes.json").write_text("[")
    status, body = http_json(url, "POST", su, timeout=60)
    assert status == 422 and "JSON syntax error" in body["data"]["errors"][0], body


def test_envfile_contents_count_and_equal_values_do_not(project: Project) -> None:
    """Compared fully resolved: a new value in the .env restarts; `${A}` rewritten as an equal
    `${B}` does not."""
    project.write(".env", "COLOUR=red\n")
    env_side = side("e", "${COLOUR}", envFile="./.env")
    same_side = side("s", "${A}")
    run = start(project, [env_side, same_side], env={"A": "teal", "B": "teal"})
    api = Api(run)
    before = pids(api)
    assert "colour=red" in run.wait_line("[e][STDOUT] pid=")
    project.write(".env", "COLOUR=blue\n")
    project.config([env_side, side("s", "${B}")])
    out = reload_ok(project)
    assert re.search(r"restarted\s+e\s+pid \d+\s+\(environment changed\)", out), out
    assert re.search(r"unchanged\s+s\s+pid", out), out
    assert "colour=blue" in run.wait_line("[e][STDOUT] pid=", count=2)
    assert pids(api)["s"] == before["s"]


def test_a_pblogs_change_applies_without_a_restart(project: Project) -> None:
    upsert_superuser(project.root)
    # One stderr line per SIGUSR1, then quiet: PocketBase writes its log batch once the
    # lines stop (a steady stream would wait for a batch of 200).
    project.write("tick.py", """\
        import os, signal, sys
        signal.signal(signal.SIGUSR1, lambda *_: print("oops", file=sys.stderr, flush=True))
        print(f"pid={os.getpid()}", flush=True)
        while True:
            signal.pause()
    """)
    tick = {"id": "tick", "script": "tick.py", "interpreter": PY, "pbLogs": "none"}
    project.config([tick])
    run = project.serve()
    run.wait_line("PocketBase hook answers", timeout=20)
    pid = printed_pids(run, "tick")[0]
    su = login(run)
    project.config([{**tick, "pbLogs": "stderr"}])  # the bridge had nothing to carry until now
    reload_ok(project)
    run.wait_line("reload: tick: updated in place (pbLogs changed)")
    os.kill(pid, signal.SIGUSR1)
    run.wait_line("[tick][STDERR] oops")

    def bridged() -> int:
        status, body = http_json(f"{run.url}/api/logs?perPage=1&filter="
                                 + quote('data.process = "tick"'), token=su)
        assert status == 200, body
        return int(body["totalItems"])
    wait_for(bridged, 20, "tick's lines in PocketBase's logs", interval=0.5)
    assert printed_pids(run, "tick") == [pid] and pid_alive(pid)

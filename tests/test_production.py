"""Production duty: PID 1 in a PID namespace, subreaper, kill -9 of pbhost, state.json,
systemd notify / journal / unit file (issue 6). Real processes, real namespaces, real sockets."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from support import (
    IDLE,
    OUT_ERR,
    PY,
    ROOT,
    PbhostRun,
    Project,
    ints,
    pid_alive,
    ppid,
    printed_pids,
    proc_stat,
    run_pbhost,
    started_pid,
    upsert_superuser,
    wait_for,
)

EXAMPLE = ROOT / "examples" / "docker"

# A process that records the SIGTERM it gets (so we know pbhost ended it, not the kernel).
GRAND = """
    import os, signal, sys, threading, time
    def on_term(*_):
        with open(os.environ["MARKER"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    print(f"grand={os.getpid()}", flush=True)
    threading.Event().wait()
"""

# A sidecar with one grandchild in its own group and one that escapes with setsid().
ESCAPER = """
    import os, subprocess, sys, threading, time
    here = os.path.dirname(os.path.abspath(__file__))
    inner = subprocess.Popen([sys.executable, os.path.join(here, "grand.py")])
    escaped = subprocess.Popen([sys.executable, os.path.join(here, "grand.py")],
                               start_new_session=True)
    print(f"pid={os.getpid()} inner={inner.pid} escaped={escaped.pid}", flush=True)
    threading.Event().wait()
"""

# The spec's GPU worker: three multiprocessing workers, the third in a session of its own.
GPU = """
    import multiprocessing, os, threading, time
    def work(i):
        if i == 2:
            os.setsid()
        threading.Event().wait()
    if __name__ == "__main__":
        workers = [multiprocessing.Process(target=work, args=(i,)) for i in range(3)]
        for w in workers:
            w.start()
        print("pid=%d workers=%s" % (os.getpid(), ",".join(str(w.pid) for w in workers)),
              flush=True)
        threading.Event().wait()
"""

# Daemonizes the textbook way: fork, setsid, fork again, the middle one exits at once.
DOUBLE_FORK = """
    import os, sys, threading, time
    def daemon(name):
        pid = os.fork()
        if pid:
            os.waitpid(pid, 0)  # the middle process exits at once: the daemon is orphaned
            return
        os.setsid()
        if os.fork():
            os._exit(0)
        os.execv(sys.executable, [sys.executable, os.path.join(os.path.dirname(
            os.path.abspath(__file__)), "grand.py"), name])
    daemon("a")
    daemon("b")
    print(f"pid={os.getpid()}", flush=True)
    threading.Event().wait()
"""


def pb_pid(run: PbhostRun) -> int:
    return started_pid(run.output())


def markers(path: Path) -> set[int]:
    return {int(x) for x in path.read_text().split()} if path.exists() else set()


def wait_grands(run: PbhostRun, n: int = 2) -> None:
    """Grandchildren print `grand=` once their SIGTERM handler is in place. Unbuffered print()
    writes the text and the newline separately, so two of them can share a line: count words."""
    wait_for(lambda: run.output().count("grand=") >= n, 15, f"{n} x grand= in pbhost output")


def escaper_project(project: Project, proc_id: str = "s") -> Path:
    # A superuser first, as the other tests make one: without it PocketBase starts `xdg-open`
    # on its installer URL and never waits for it, a zombie of PocketBase's own (not an orphan
    # for pbhost to reap) wherever xdg-utils is installed (chromium brings it).
    upsert_superuser(project.root)
    marker = project.root / "terminated.txt"
    project.write("grand.py", GRAND)
    project.write("escaper.py", ESCAPER)
    project.config([{"id": proc_id, "script": "escaper.py", "interpreter": PY,
                     "env": {"MARKER": str(marker)}, "stopTimeout": "3s"}])
    return marker


# -- subreaper --------------------------------------------------------------------------------
def test_setsid_grandchild_is_ended_at_shutdown(project: Project) -> None:
    marker = escaper_project(project)
    run = project.serve()
    line = run.wait_line("[s][STDOUT] pid=")
    escaped, inner = ints(line, "escaped")[0], ints(line, "inner")[0]
    wait_grands(run)
    assert os.getsid(escaped) != os.getsid(ints(line, "pid")[0])  # it really left the session
    run.signal(signal.SIGTERM)
    assert run.wait_exit() == 0
    assert not pid_alive(escaped) and not pid_alive(inner)
    assert escaped in markers(marker)  # SIGTERM from pbhost, not a SIGKILL from anyone
    assert f"ending pid {escaped}" in run.output()


def test_escaped_grandchild_ends_when_its_sidecar_restarts(project: Project) -> None:
    escaper_project(project)
    run = project.serve()
    first = run.wait_line("[s][STDOUT] pid=")
    os.kill(ints(first, "pid")[0], signal.SIGKILL)
    second = run.wait_line("[s][STDOUT] pid=", count=2)
    old, new = ints(first, "escaped")[0], ints(second, "escaped")[0]
    wait_for(lambda: not pid_alive(old), 10, f"old escapee {old} gone")
    assert pid_alive(new) and pid_alive(ints(second, "pid")[0])
    assert f"s: ending pid {old}" in run.output()


def test_restart_sweep_spares_what_the_replacement_left_outside_its_group(
        project: Project) -> None:
    # sh starts in a millisecond: the replacement's escapee exists before the sweep of the
    # exited run looks at /proc (100 ms after the exit).
    project.write("quick.sh", """
        (setsid sleep 600 & echo "escaped=$!")
        echo "pid=$$"
        exec sleep 600
    """)
    project.config([{"id": "q", "script": "quick.sh", "interpreter": "sh"}])
    run = project.serve(env={"PBHOST_HEALTHY_SECONDS": "0"})  # any exit restarts at once
    pid = ints(run.wait_line("[q][STDOUT] pid="), "pid")[0]
    old = ints(run.wait_line("[q][STDOUT] escaped="), "escaped")[0]
    os.kill(pid, signal.SIGKILL)
    new = ints(run.wait_line("[q][STDOUT] escaped=", count=2), "escaped")[0]
    run.wait_line(f"q: ending pid {old}")
    wait_for(lambda: not pid_alive(old), 10, f"old escapee {old} gone")
    assert pid_alive(new), run.output()[-2000:]
    assert f"ending pid {new}" not in run.output()


def test_gpu_workers_all_gone_after_stop(project: Project) -> None:
    project.write("gpu.py", GPU)
    project.config([{"id": "gpu", "script": "gpu.py", "interpreter": PY}])
    run = project.serve()
    line = run.wait_line("[gpu][STDOUT] pid=")
    family = ints(line, "pid") + ints(line, "workers")
    assert len(family) == 4 and all(pid_alive(p) for p in family)
    run.signal(signal.SIGTERM)
    assert run.wait_exit() == 0
    assert [p for p in family if pid_alive(p)] == []


# -- pbhost killed outright -------------------------------------------------------------------
def test_kill_9_children_die_and_the_next_run_ends_only_the_leftovers(project: Project) -> None:
    escaper_project(project)
    (project.root / "pb_data" / ".pbhost").mkdir(parents=True)
    other = project.write("pb_data/.pbhost/notes.json", "{}")  # a file the sweep must not touch
    run = project.serve()
    line = run.wait_line("[s][STDOUT] pid=")
    sidecar, inner, escaped = (ints(line, k)[0] for k in ("pid", "inner", "escaped"))
    pocketbase = pb_pid(run)
    wait_grands(run)  # they print once: after pbhost is gone, that write would end them

    state = json.loads((run.data_dir / ".pbhost" / "state.json").read_text())
    recorded = {c["id"]: c for c in state["children"]}
    assert recorded["s"]["pid"] == recorded["s"]["pgid"] == sidecar
    assert recorded["pocketbase"]["pid"] == pocketbase
    assert recorded["s"]["start"] > 0 and state["pbhost"]["pid"] == run.proc.pid
    assert stat.S_IMODE((run.data_dir / ".pbhost").stat().st_mode) == 0o700

    # A bystander that looks like a sidecar of this project but is not of that run.
    decoy = subprocess.Popen([PY, "-c", "import threading; threading.Event().wait()"],
                             start_new_session=True, env={**os.environ, "PBHOST_PROCESS_ID": "s",
                                  "PB_DATA_DIR": str(run.data_dir)})
    try:
        run.proc.kill()
        run.wait_exit()
        wait_for(lambda: not pid_alive(sidecar) and not pid_alive(pocketbase), 1.0,
                 "direct children gone within 1 s of pbhost's SIGKILL")
        assert pid_alive(inner) and pid_alive(escaped)  # grandchildren are left behind...

        second = project.serve()  # ...until the next run in the same data dir
        out = second.output()
        assert f"pid {inner}" in out and f"pid {escaped}" in out and "leftover" in out
        assert not pid_alive(inner) and not pid_alive(escaped)
        assert pid_alive(decoy.pid) and f"pid {decoy.pid}" not in out
        assert other.read_text() == "{}"
        second.signal(signal.SIGTERM)
        assert second.wait_exit() == 0
        assert not (run.data_dir / ".pbhost" / "state.json").exists()  # clean exit: nothing left
    finally:
        decoy.kill()
        decoy.wait()


def test_a_second_pbhost_on_a_live_data_dir_is_refused(project: Project) -> None:
    first = project.serve()
    second = project.serve(wait_healthy=False)
    assert second.wait_exit() == 1
    assert f"another pbhost (pid {first.proc.pid}) is running" in second.output()
    assert first.healthy()


def test_pocketbase_after_its_hook_reexec_is_ended_by_the_next_run(project: Project) -> None:
    """PocketBase re-execs itself from one of its Go threads when a hook changes; the kernel
    keeps the parent-death signal on the thread that set it, so the re-exec'd PocketBase does
    not die with a SIGKILLed pbhost. state.json (same pid, same start time after an exec) lets
    the next run end it, and the port it held is free for the new PocketBase."""
    project.write("pb_hooks/a.pb.js", "// nothing yet\n")
    run = project.serve()
    pid = pb_pid(run)
    project.write("pb_hooks/a.pb.js", "// changed\n")
    run.wait_line("restarting")
    run.wait_healthy()
    assert pid_alive(pid)  # re-exec'd in place: same pid
    run.proc.kill()
    run.wait_exit()
    second = project.serve(port=run.port, wait_healthy=False)  # the old one answers health
    second.wait_line("PocketBase is healthy")
    assert not pid_alive(pid) and pb_pid(second) != pid
    second.signal(signal.SIGTERM)
    assert second.wait_exit() == 0


# -- PID 1 ------------------------------------------------------------------------------------
def _pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def namespace_members(ns: str) -> list[tuple[int, str]]:
    """(host pid, state) of every process in the PID namespace `ns`, read from the host's /proc."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _pid_ns(int(name)) == ns:
            try:
                out.append((int(name), proc_stat(name)[0]))
            except OSError:
                pass
    return out


def children_of(parent: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and ppid(int(name)) == parent:
                out.append(int(name))
        except OSError:
            pass
    return out


def host_pid(ns: str, ns_pid: int) -> int | None:
    for pid, _ in namespace_members(ns):
        with open(f"/proc/{pid}/status") as f:
            nspid = next(ln for ln in f if ln.startswith("NSpid:")).split()
        if int(nspid[-1]) == ns_pid:
            return pid
    return None


def test_pid1_in_a_pid_namespace_reaps_orphans_and_empties_it(project: Project) -> None:
    """The Docker example's set-up (same config, agent with its venv, same entrypoint args),
    run under `unshare --pid --fork --mount-proc` because there is no Docker engine here."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a PID namespace")
    shutil.copytree(EXAMPLE / "app", project.root, dirs_exist_ok=True)
    subprocess.run([PY, "-m", "venv", "--without-pip", str(project.root / "agent" / ".venv")],
                   check=True)
    marker = project.root / "terminated.txt"
    project.write("grand.py", GRAND)
    project.write("daemonizer.py", DOUBLE_FORK)
    config = json.loads((project.root / "pb_processes.json").read_text())
    config.append({"id": "daemonizer", "script": "daemonizer.py", "interpreter": PY,
                   "env": {"MARKER": str(marker)}})
    project.config(config)
    # Without a superuser PocketBase runs xdg-open (where there is one) for its installer and
    # reaps it when it likes: a zombie of PocketBase's own, not an orphan PID 1 failed to reap.
    upsert_superuser(project.root)

    run = project.serve("--dir", str(project.root / "pb_data"), pbhost_args=("-v",),
                        wrapper=("unshare", "--pid", "--fork", "--mount-proc"))
    pbhost = wait_for(lambda: children_of(run.proc.pid), 10, "pbhost under unshare")[0]
    ns = _pid_ns(pbhost)
    try:
        assert ns is not None and ns != _pid_ns(os.getpid())
        assert "pocketbase: started (pid 2)" in run.output()  # pbhost itself is PID 1
        run.wait_line("[ai-agent][STDOUT] agent up")
        assert "/agent/.venv/bin/python" in run.output()  # the sidecar's own venv
        daemons = wait_for(lambda: len(ints(run.output(), "grand")) == 2
                           and ints(run.output(), "grand"), 10, "two daemons")
        a = host_pid(ns, daemons[0])
        assert a is not None and ppid(a) == pbhost  # orphaned, re-parented to PID 1: pbhost
        os.kill(a, signal.SIGTERM)  # the orphan exits: PID 1 must reap it
        wait_for(lambda: a not in [p for p, _ in namespace_members(ns)], 10,
                 "the exited orphan reaped (no zombie left)")
        # None of pbhost's: PocketBase's own unreaped child (the xdg-open it spawns when it
        # has no superuser, where xdg-utils is installed) is PocketBase's to reap, not an orphan.
        assert [p for p, st in namespace_members(ns) if st == "Z" and ppid(p) == pbhost] == []
        run.wait_line(f"reaped pid {daemons[0]}")

        os.kill(pbhost, signal.SIGTERM)
        assert run.wait_exit() == 0  # unshare passes on pbhost's exit code
        assert namespace_members(ns) == []
        assert daemons[1] in markers(marker)  # ended by pbhost's SIGTERM, not the kernel's kill
        assert "agent stopping" in run.output()
    finally:
        if run.proc.poll() is None:
            os.kill(pbhost, signal.SIGKILL)
            run.proc.wait(10)


# -- systemd ----------------------------------------------------------------------------------
class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, tmp: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"pbhost-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.sock.bind(str(tmp / "notify.sock"))
            self.env = str(tmp / "notify.sock")
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def wait(self, needle: str, timeout: float = 15.0) -> int:
        """Index of the first message containing `needle`."""
        def found() -> int | None:
            hits = [i for i, m in enumerate(self.poll()) if needle in m]
            return hits[0] + 1 if hits else None
        return wait_for(found, timeout, f"{needle!r} among {self.messages}") - 1


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_ready_after_health_then_stopping(project: Project, abstract: bool) -> None:
    project.write("s.py", """
        import os, threading, time
        print("notify=" + os.environ.get("NOTIFY_SOCKET", "unset"), flush=True)
        threading.Event().wait()
    """)
    project.config([{"id": "s", "script": "s.py", "interpreter": PY}])
    listener = NotifyListener(project.root, abstract)
    try:
        env = {"NOTIFY_SOCKET": listener.env}
        if abstract:
            env["WATCHDOG_USEC"] = "200000"
        run = project.serve(env=env, wait_healthy=False)
        ready = listener.wait("READY=1")
        assert run.healthy()  # health came first
        # pbhost's own lines reach its stdout a moment after READY=1 is sent: wait for them.
        run.wait_line("s: started")
        out = run.output()
        assert out.index("PocketBase is healthy") < out.index("s: started")
        assert "STATUS=pocketbase running; 1/1 sidecars running" in listener.messages[ready]
        # The sidecars cannot speak for the service: each has a NOTIFY_SOCKET of its own.
        own = run.wait_line("notify=@pbhost-")
        assert listener.env not in own
        if abstract:  # WATCHDOG_USEC=200ms: a ping every 100ms
            wait_for(lambda: sum(m == "WATCHDOG=1" for m in listener.poll()) >= 3, 10,
                     "three watchdog pings")
        run.signal(signal.SIGTERM)
        assert run.wait_exit() == 0
        stopping = listener.wait("STOPPING=1")
        assert stopping > ready
    finally:
        listener.sock.close()


def test_sd_notify_status_names_a_sidecar_that_runs_but_is_not_ready(project: Project) -> None:
    project.write("s.py", IDLE)
    marker = project.root / "warm"
    project.config([
        {"id": "s", "script": "s.py", "interpreter": PY},
        {"id": "warming", "script": "s.py", "interpreter": PY,
         "readinessProbe": {"exec": [PY, "-c", f"import os; os.stat({str(marker)!r})"],
                            "period": "200ms"}}])
    listener = NotifyListener(project.root, abstract=True)
    try:
        project.serve(env={"NOTIFY_SOCKET": listener.env})
        listener.wait("STATUS=pocketbase running; 2/2 sidecars running (warming not ready)")
        marker.touch()
        wait_for(lambda: any(m.endswith("STATUS=pocketbase running; 2/2 sidecars running")
                             for m in listener.poll()), 15,
                 lambda: f"a STATUS with everything ready among {listener.messages}")
    finally:
        listener.sock.close()


def test_systemctl_reload_is_a_sighup_that_reloads(project: Project) -> None:
    """What `ExecReload=/bin/kill -HUP $MAINPID` does: under systemd stdin is not a terminal,
    so pbhost reloads the process file (RELOADING=1, then READY=1), PocketBase untouched."""
    project.write("s.py", IDLE)
    project.config([{"id": "s", "script": "s.py", "interpreter": PY}])
    listener = NotifyListener(project.root, abstract=True)
    try:
        run = project.serve(env={"NOTIFY_SOCKET": listener.env})
        ready = listener.wait("READY=1")
        run.wait_line("[s][STDOUT] pid=")
        pb = started_pid(run.output())
        project.config([{"id": "s", "script": "s.py", "interpreter": PY},
                        {"id": "t", "script": "s.py", "interpreter": PY}])
        subprocess.run(["/bin/kill", "-HUP", str(run.proc.pid)], check=True)
        reloading = listener.wait("RELOADING=1")
        assert reloading > ready and "MONOTONIC_USEC=" in listener.messages[reloading]
        wait_for(lambda: any("READY=1" in m for m in listener.poll()[reloading + 1:]), 15,
                 "READY=1 after the reload")
        run.wait_line("[t][STDOUT] pid=")
        assert len(printed_pids(run, "s")) == 1 and pid_alive(pb)
        assert run.proc.poll() is None
    finally:
        listener.sock.close()


def test_journal_stream_gets_syslog_priority_prefixes(project: Project) -> None:
    project.write("s.py", OUT_ERR)
    project.config([{"id": "s", "script": "s.py", "interpreter": PY,
                     "args": ["to stdout", "to stderr"]}])
    out = project.root / "pbhost-0.out"  # where project.serve() sends this run's output
    out.touch()
    st = out.stat()
    run = project.serve(env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    run.wait_line("to stderr")
    lines = run.lines()
    assert "<6>[s][STDOUT] to stdout" in lines
    assert "<3>[s][STDERR] to stderr" in lines
    assert any(ln.startswith("<6>[pocketbase][STDOUT] ") for ln in lines)
    assert any(ln.startswith("<6>[pbhost] ") for ln in lines)
    assert all(re.match(r"<\d>\[", ln) for ln in lines)


def test_no_prefixes_when_stdout_is_not_the_journal(project: Project) -> None:
    run = project.serve(env={"JOURNAL_STREAM": "1:1"})
    run.wait_line("PocketBase is healthy")
    assert not any(ln.startswith("<") for ln in run.lines())


def test_systemd_unit_verifies(project: Project, tmp_path: Path) -> None:
    project.config([{"id": "slow", "command": "sleep", "args": ["600"], "stopTimeout": "12s"}])
    made = run_pbhost(project.root, "--strict", "systemd-unit", "--http", "0.0.0.0:8090")
    assert made.returncode == 0, made.stderr
    unit = made.stdout
    keys = dict(ln.split("=", 1) for ln in unit.splitlines() if "=" in ln and ln[0] != "#")
    assert keys["Type"] == "notify" and keys["KillMode"] == "mixed"
    assert keys["Restart"] == "on-failure" and keys["NotifyAccess"] == "main"
    assert int(keys["TimeoutStopSec"]) > 12 + 5  # the longest stopTimeout, then PocketBase's
    # `systemctl reload`: SIGHUP to pbhost, which reloads pb_processes.json (not a terminal).
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert keys["WorkingDirectory"] == str(project.root)
    command = keys["ExecStart"].split()
    assert Path(command[0]).is_absolute() and Path(command[0]).exists()
    assert command[-4:] == ["--strict", "serve", "--http", "0.0.0.0:8090"][-4:]
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit's text was checked, not verified")
    path = tmp_path / "pbhost-test.service"
    path.write_text(unit)
    verified = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                              text=True)
    assert verified.returncode == 0, verified.stderr
    assert "pbhost-test.service" not in verified.stderr, verified.stderr  # no warnings about it


def test_systemd_unit_spells_out_every_option_given(project: Project) -> None:
    """Options given as flags or PBHOST_* variables reach the unit, the off-switches too."""
    project.config([], name="procs.json")
    made = run_pbhost(project.root, "--color", "--api", "127.0.0.1:9999", "-c", "procs.json",
                      "systemd-unit", env={"PBHOST_PB_HOOKS": "0", "PBHOST_TIMESTAMPS": "1"})
    assert made.returncode == 0, made.stderr
    exec_start = next(ln for ln in made.stdout.splitlines() if ln.startswith("ExecStart="))
    args = exec_start.split()
    assert {"--color", "--no-pb-hooks", "--timestamps"} <= set(args)
    assert args[args.index("--api") + 1] == "127.0.0.1:9999"
    assert args[args.index("--config") + 1] == str(project.root / "procs.json")
    assert args[-1] == "serve"

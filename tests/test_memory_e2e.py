"""maxMemory with a real pbhost: real workers allocating real memory, one of them escaped from
the group with setsid(), real SIGTERMs timed by the children themselves (CLOCK_MONOTONIC is one
clock for every process, so their stamps compare).

The policy alone, with a fake clock: test_memlimit.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from support import Api, PbhostRun, Project, pbhost_env, pid_alive, wait_for

PY = sys.executable
MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")

# A leader and its workers; worker 0 leaves the group with setsid(), so only the tree (not
# the group) holds its memory. What each allocates, when and for how long comes from argv.
WORKERS = """
    import json, os, signal, sys, threading, time
    cfg = json.loads(sys.argv[1])
    def say(msg):
        print(f"{msg} t={time.monotonic():.3f}", flush=True)
    def hold(mib, seconds):
        blob = b"x" * (mib << 20)  # written, so resident
        say(f"holding {mib} MiB pid={os.getpid()}")
        if seconds is None:
            threading.Event().wait()
        time.sleep(seconds)
        del blob
        say(f"freed {mib} MiB")
    first = cfg.get("always") or not os.path.exists(cfg["marker"])
    open(cfg["marker"], "a").close()
    kids = []
    for i, mib in enumerate(cfg["workers"]):
        pid = os.fork()
        if pid == 0:
            if i == 0:
                os.setsid()
            say(f"worker {i} pid={os.getpid()} pgid={os.getpgid(0)}")
            if first and mib:
                time.sleep(cfg["after"])
                say(f"worker {i} allocating")
                hold(mib, None)
            threading.Event().wait()
        kids.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: (say(f"term pid={os.getpid()}"), os._exit(0)))
    say(f"leader pid={os.getpid()} first={first} workers={kids}")
    for step in cfg.get("steps", []) if first else []:
        time.sleep(step["after"])
        say(step["say"])
        if step.get("mib"):
            hold(step["mib"], step.get("hold"))
    threading.Event().wait()
"""




def stamp(run: PbhostRun, needle: str, count: int = 1) -> float:
    """The CLOCK_MONOTONIC stamp a child put on the line (`... t=1234.567`)."""
    line = run.wait_line(needle, timeout=30, count=count)
    match = re.search(r" t=([\d.]+)", line)
    assert match is not None, line
    return float(match.group(1))


def pid_in(line: str, who: str) -> int:
    match = re.search(who + r" pid=(\d+)", line)
    assert match is not None, line
    return int(match.group(1))


def numbers(run: PbhostRun, pattern: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(pattern, run.output())]


def sidecar(project: Project, cfg: dict[str, Any], **keys: Any) -> None:
    project.write("workers.py", WORKERS)
    cfg = {"marker": str(project.root / "ran-once"), "workers": [], "after": 0.0, **cfg}
    project.config([{"id": "ai-agent", "script": "workers.py", "interpreter": PY,
                     "args": [json.dumps(cfg)], **keys}])


def test_workers_over_the_limit_are_restarted_after_the_window_and_not_before(
        project: Project) -> None:
    # 4 workers; the one that escaped the group by setsid() holds what crosses the limit:
    # the group alone stays far under 150 MiB, the tree goes well over it.
    sidecar(project, {"workers": [200, 5, 5, 5], "after": 1.5},
            maxMemory="150M", maxMemoryFor="3s")
    # A run of 1 s is healthy here, so a breach at 1.5 s is no quick failure: no backoff.
    run = project.serve(env={"PBHOST_HEALTHY_SECONDS": "1"})
    first_leader = pid_in(run.wait_line("first=True"), "leader")
    crossed = stamp(run, "[ai-agent][STDOUT] worker 0 allocating")
    line = run.wait_line("ai-agent: memory ", timeout=30)
    assert re.search(r"\[pbhost\] ai-agent: memory \d+ MiB over maxMemory 150 MiB for 3s; "
                     r"restarting$", line), line
    termed = stamp(run, f"term pid={first_leader}")
    assert termed - crossed >= 3.0, (crossed, termed)   # not before the sustain window
    second = pid_in(run.wait_line("first=False"), "leader")
    old = [first_leader, *numbers(run, r"worker \d pid=(\d+)")[:4]]
    assert len(old) == 5 and second not in old
    wait_for(lambda: not any(pid_alive(p) for p in old), 15, "the whole first tree gone, "
             "the escaped worker included")
    proc = Api(run).proc("ai-agent")
    assert proc["pid"] == second and proc["status"] == "running" and proc["restartCount"] == 1
    assert re.fullmatch(r"memory \d+ MiB over maxMemory 150 MiB for 3s",
                        proc["lastError"]), proc
    assert proc["memoryLimit"] == 150 * MIB
    assert "restarting in" not in run.output()  # not a crash: restarted at once


def test_a_spike_shorter_than_the_window_is_left_alone(project: Project) -> None:
    sidecar(project, {"steps": [
        {"after": 1.5, "say": "spike", "mib": 200, "hold": 1.0},   # 1 s over a 4 s window
        {"after": 5.0, "say": "survived the window"},
        {"after": 0.0, "say": "sustained", "mib": 200}]},
        maxMemory="100M", maxMemoryFor="4s")
    run = project.serve(env={"PBHOST_HEALTHY_SECONDS": "1"})
    stamp(run, "[ai-agent][STDOUT] freed 200 MiB")
    sustained = stamp(run, "[ai-agent][STDOUT] sustained")
    out = run.output()
    assert "over maxMemory" not in out[:out.index("survived the window")]
    assert "term pid=" not in out
    # The sampler was watching all along: the sustained breach is acted on, after the window.
    termed = stamp(run, "term pid=")
    assert termed - sustained >= 4.0
    assert len(re.findall(r"over maxMemory 100 MiB for 4s; restarting", run.output())) == 1


def test_repeated_breaches_right_after_start_back_off_then_give_up(project: Project) -> None:
    # Every run is over the limit from its start; a run is healthy only after 10 s here.
    sidecar(project, {"always": True, "steps": [{"after": 0.0, "say": "greedy", "mib": 200}]},
            maxMemory="100M", maxMemoryFor="1s", backoff="300ms", maxRetries=3)
    run = project.serve()
    run.wait_line("ai-agent: restarting in 300ms (failure 1)", timeout=30)
    run.wait_line("ai-agent: restarting in 600ms (failure 2)", timeout=30)
    run.wait_line("ai-agent: giving up after 3 quick failures in a row", timeout=30)
    proc = wait_for(lambda: (p := Api(run).proc("ai-agent"))["status"] == "crashed" and p, 10,
                    "crashed")
    assert re.fullmatch(r"memory \d+ MiB over maxMemory 100 MiB for 1s",
                        proc["lastError"]), proc
    assert len(re.findall(r"\[ai-agent\]\[STDOUT\] leader pid=", run.output())) == 3
    assert run.healthy()


def test_the_api_ls_and_metrics_show_tree_memory_and_the_limit(project: Project) -> None:
    sidecar(project, {"workers": [80, 0, 0, 0]}, maxMemory="1G")
    run = project.serve()
    run.wait_line("holding 80 MiB")
    leader = pid_in(run.wait_line("leader pid="), "leader")
    api = Api(run)
    group_only = _group_rss(leader)
    proc = wait_for(lambda: (p := api.proc("ai-agent"))["memory"] > group_only + 70 * MIB and p,
                    10, "memory counting the escaped worker's 80 MiB")
    assert proc["memoryLimit"] == 1 << 30
    assert api.proc("pocketbase")["memoryLimit"] is None
    ls = subprocess.run([PY, "-m", "pbhost", "ls"], cwd=project.root, env=pbhost_env(),
                        capture_output=True, text=True, timeout=30)
    # The memory column, then the health column ("-": no probes here).
    assert re.search(r"^ai-agent .* \d+\.\d MiB / 1 GiB +-$", ls.stdout, re.M), ls.stdout
    assert re.search(r"^pocketbase .* \d+\.\d MiB +-$", ls.stdout, re.M), ls.stdout
    req = urllib.request.Request(f"{api.url}/api/pm/metrics",
                                 headers={"Authorization": f"Bearer {api.token}"})
    metrics = urllib.request.urlopen(req, timeout=5).read().decode()
    assert 'pbhost_process_memory_limit_bytes{id="ai-agent"} 1073741824' in metrics
    assert 'pbhost_process_memory_limit_bytes{id="pocketbase"}' not in metrics


def _group_rss(pgid: int) -> int:
    """Resident bytes of one process group, as the test reads /proc itself."""
    total = 0
    for name in Path("/proc").iterdir():
        if not name.name.isdigit():
            continue
        try:
            fields = (name / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[21]) * PAGE
    return total

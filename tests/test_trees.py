"""orphans/trees.py on real process trees: a group with members, a member that left the group
with setsid() and its child, a daemon whose parents have exited (re-parented to the scanner's
process, a child subreaper like pbhost), and processes that belong to no tree.

The scan runs in a helper process that is a subreaper itself, so that orphans come to it, as
they come to pbhost; it prints what it found as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

from support import ROOT, pbhost_env

HELPER = textwrap.dedent("""
    import json, os, signal, subprocess, sys
    from pbhost.orphans import trees
    from pbhost.orphans.trees import TreeScanner
    from pbhost.process.procctl import set_child_subreaper
    assert set_child_subreaper()

    def spawn(code, process_id):
        env = dict(os.environ, PBHOST_PROCESS_ID=process_id)
        return subprocess.Popen([sys.executable, "-c", code], env=env,
                                start_new_session=True, stdout=subprocess.PIPE, text=True)

    # agent: a leader with a member, and a member that escapes with setsid() and forks.
    AGENT = '''
    import os, signal, subprocess, sys
    member = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        kid = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
        os.write(w, f"{os.getpid()} {kid.pid}\\\\n".encode())
        signal.pause()
    print(member.pid, os.read(r, 100).decode().strip(), flush=True)
    signal.pause()
    '''
    # daemon: double-forks and exits, so its grandchild is re-parented to this helper.
    DAEMON = '''
    import os, signal, sys
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            print(os.getpid(), flush=True)
            signal.pause()
        os._exit(0)
    os.wait()
    '''
    agent = spawn(AGENT, "agent")
    member, escapee, escapee_kid = map(int, agent.stdout.readline().split())
    daemon_parent = spawn(DAEMON, "daemon")
    daemon = int(daemon_parent.stdout.readline())
    daemon_parent.wait()
    other = spawn("import signal; print('up', flush=True); signal.pause()", "unrelated")
    other.stdout.readline()  # it runs: its /proc entry is there for the scans
    scanner = TreeScanner()
    result = {}

    def scan(name, roots, with_scanner=scanner):
        found = with_scanner.scan(roots)
        result[name] = {k: sorted(p.pid for p in v) for k, v in found.items()}

    both = {"agent": agent.pid, "daemon": daemon_parent.pid}
    scan("first", both)
    scan("again", both)  # from what the first pass remembered
    scan("agent only", {"agent": agent.pid})
    # A tree that appears after the first pass: all its pids are new to the scanner.
    late = spawn(AGENT, "late")
    late_tree = [late.pid, *map(int, late.stdout.readline().split())]
    scan("with late", {**both, "late": late.pid})
    trees.RECHECK = 0.0  # passes "far apart": every pid classified afresh, same answer
    scan("afresh", {**both, "late": late.pid})
    print(json.dumps({"scans": result, "agent": sorted([agent.pid, member, escapee, escapee_kid]),
                      "daemon": [daemon], "late": sorted(late_tree), "other": other.pid}))
    for pid in (agent.pid, member, escapee, escapee_kid, daemon, other.pid, *late_tree):
        os.kill(pid, signal.SIGKILL)
""")


def test_a_scan_finds_each_tree_escapees_included_and_nothing_else() -> None:
    out = subprocess.run([sys.executable, "-c", HELPER], cwd=ROOT, env=pbhost_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    expected = {"agent": data["agent"], "daemon": data["daemon"]}
    scans = data["scans"]
    assert scans["first"] == expected
    assert scans["again"] == expected
    assert scans["agent only"] == {"agent": data["agent"]}
    assert scans["with late"] == scans["afresh"] == {**expected, "late": data["late"]}
    assert len(data["late"]) == 4
    assert data["other"] not in sum(scans["with late"].values(), [])

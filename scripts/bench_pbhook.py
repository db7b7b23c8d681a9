#!/usr/bin/env python3
"""Figures for the PocketBase hook: installer check, log-bridge cost per line, /api/pm latency.

    PYTHONPATH=. python scripts/bench_pbhook.py [--calls 200] [--lines 500000]

Prints figures only; nothing is asserted. Run on a quiet machine for numbers worth comparing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_logs import _drive, flood_cmd  # noqa: E402
from conftest import Project, http_json  # noqa: E402
from pbhost.logstream import LogRecord, LogStream  # noqa: E402
from pbhost.pbbridge import LogBridge  # noqa: E402
from pbhost.pbhooks import install_hook  # noqa: E402
from pbhost.pocketbase import describe, find_binary  # noqa: E402


def per_call_us(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def bench_install() -> None:
    hooks = Path(tempfile.mkdtemp()) / "pb_hooks"
    start = time.perf_counter()
    install_hook(hooks)
    first = (time.perf_counter() - start) * 1e3
    current = per_call_us(lambda: install_hook(hooks), 2000)
    print(f"install_hook: first write {first:.2f} ms; already current {current:.1f} µs/call")


def bench_offer() -> None:
    bridge = LogBridge(describe([], Path.cwd()), "t", {"p": "all"})
    rec = LogRecord(0.0, "p", "stdout", "x" * 80)
    cost = per_call_us(lambda: bridge.offer(rec), 200_000)
    print(f"LogBridge.offer, a line over the rate limit (counted as skipped): {cost:.2f} µs")


def bench_stream(n: int) -> None:
    """Log stream throughput, 2 children flooding stdout, with and without the bridge."""
    def flood(modes: dict[str, str] | None) -> float:
        def setup(stream: LogStream) -> None:
            if modes is not None:
                LogBridge(describe([], Path.cwd()), "t", modes).attach(stream)
        with tempfile.TemporaryDirectory() as tmp:
            fd = os.open(Path(tmp) / "out", os.O_WRONLY | os.O_CREAT)
            try:
                _, elapsed, _ = asyncio.run(_drive(fd, {i: flood_cmd(n) for i in ("a", "b")},
                                                   setup=setup))
            finally:
                os.close(fd)
        return 2 * n / elapsed / 1e6

    for label, modes in (("no bridge", None),
                         ("bridge, pbLogs stderr (default)", {"a": "stderr", "b": "stderr"}),
                         ("bridge, pbLogs all (rate-limited)", {"a": "all", "b": "all"})):
        runs = sorted(flood(modes) for _ in range(3))
        print(f"log stream, stdout flood of 2x{n} lines, {label}: {runs[1]:.2f} M lines/s "
              f"(median of 3; {runs[0]:.2f}-{runs[2]:.2f})")


def pctl(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def timed_get(url: str, token: str | None) -> float:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", token)
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()
    return (time.perf_counter() - start) * 1e3


def bench_forwarding(calls: int) -> None:
    """GET /api/pm/list through PocketBase's hook vs. straight to pbhost's control API."""
    with tempfile.TemporaryDirectory() as tmp:
        project = Project(Path(tmp))
        binary = find_binary(None, os.environ, Path.cwd())
        subprocess.run([binary, "superuser", "upsert", "b@example.com", "password123", "--dir",
                        str(project.root / "pb_data")], check=True, capture_output=True)
        project.config([{"id": "idle", "command": sys.executable,
                         "args": ["-c", "import time; time.sleep(600)"]}])
        run = project.serve()
        try:
            run.wait_line("PocketBase hook answers", timeout=20)
            _, body = http_json(f"{run.url}/api/collections/_superusers/auth-with-password",
                                "POST", body={"identity": "b@example.com",
                                              "password": "password123"})
            token = body["token"]
            via = [timed_get(f"{run.url}/api/pm/list", token) for _ in range(calls)]
            api = f"http://127.0.0.1:{run.port + 1}/api/pm/list"
            timed_get(api, token)  # the API checks a superuser token once, then caches it
            direct = [timed_get(api, token) for _ in range(calls)]
            for label, xs in (("via PocketBase's hook", via),
                              ("direct to the control API", direct)):
                print(f"GET /api/pm/list {label} ({calls} calls): p50 {pctl(xs, .5):.2f} ms, "
                      f"p99 {pctl(xs, .99):.2f} ms")
        finally:
            run.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--lines", type=int, default=500_000, help="lines per flooding child")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs (figures are noisy on a "
          "busy machine)")
    bench_install()
    bench_offer()
    bench_stream(args.lines)
    bench_forwarding(args.calls)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Figures for the PocketBase hook: installer check, log-bridge cost per line, /api/pm latency.

    PYTHONPATH=. python scripts/bench_pbhook.py [--quick]
    (also a section of scripts/bench.py: `run(quick) -> {"rows": [...]}`)

Prints figures only; nothing is asserted. Run on a quiet machine for numbers worth comparing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_logs import _drive, flood_cmd  # noqa: E402
from pbhost.logs.stream import LogStream  # noqa: E402
from pbhost.pocketbase.binary import describe  # noqa: E402
from pbhost.pocketbase.bridge import LogBridge  # noqa: E402
from pbhost.pocketbase.hookfile import install_hook  # noqa: E402
from support import Project, login, upsert_superuser  # noqa: E402


def per_call_us(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def bench_install() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        hooks = Path(tmp) / "pb_hooks"
        start = time.perf_counter()
        install_hook(hooks)
        first = (time.perf_counter() - start) * 1e3
        current = per_call_us(lambda: install_hook(hooks), 2000)
    return [dict(figure="hook install, first write", value=round(first, 2), unit="ms"),
            dict(figure="hook install, already current (on the path to PocketBase's spawn)",
                 value=round(current, 1), unit="µs", n=2000)]


def bench_offer() -> list[dict[str, Any]]:
    """What the bridge costs the stream per chunk once its rate limit is reached."""
    bridge = LogBridge(describe([], Path.cwd()), "t", {"p": "all"})
    while bridge.wants("p", "stdout", 1000):
        pass  # spend the burst
    n = 200_000
    cost = per_call_us(lambda: bridge.wants("p", "stdout", 1000), n)
    return [dict(figure="log bridge: a 1,000-line chunk over the rate limit (skipped, "
                        "counted)", value=round(cost, 2), unit="µs", n=n)]


def bench_stream(n: int, runs: int = 3) -> list[dict[str, Any]]:
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
        return 2 * n / elapsed

    rows = []
    base = 0.0
    for label, modes in (("no bridge", None),
                         ("bridge, pbLogs stderr (default)", {"a": "stderr", "b": "stderr"}),
                         ("bridge, pbLogs all (rate-limited)", {"a": "all", "b": "all"})):
        xs = sorted(flood(modes) for _ in range(runs))
        median = statistics.median(xs)
        base = base or median
        rows.append(dict(figure=f"log stream in-process, stdout flood 2x{n:,}, {label}",
                         value=round(median), unit="lines/s", spread=f"{xs[0]:,.0f}-{xs[-1]:,.0f}",
                         n=runs, baseline="" if modes is None else "no bridge",
                         vs="" if modes is None else f"{median / base:.2f}x"))
    return rows


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


def bench_forwarding(calls: int) -> list[dict[str, Any]]:
    """GET /api/pm/list through PocketBase's hook vs. straight to pbhost's control API."""
    with tempfile.TemporaryDirectory() as tmp:
        project = Project(Path(tmp))
        upsert_superuser(project.root)
        project.config([{"id": "idle", "command": sys.executable,
                         "args": ["-c", "import time; time.sleep(600)"]}])
        run = project.serve()
        try:
            run.wait_line("PocketBase hook answers", timeout=20)
            token = login(run)
            via = [timed_get(f"{run.url}/api/pm/list", token) for _ in range(calls)]
            api = f"http://127.0.0.1:{run.port + 1}/api/pm/list"
            timed_get(api, token)  # the API checks a superuser token once, then caches it
            direct = [timed_get(api, token) for _ in range(calls)]
        finally:
            run.stop()
    rows = []
    for q in (0.5, 0.99):
        name = f"p{int(q * 100)}"
        rows.append(dict(figure=f"GET /api/pm/list via PocketBase's hook, {name}",
                         value=round(pctl(via, q), 2), unit="ms", n=calls,
                         baseline=f"direct to the control API: {pctl(direct, q):.2f} ms",
                         vs=f"+{pctl(via, q) - pctl(direct, q):.2f} ms"))
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    """The figures as rows for scripts/bench.py."""
    rows = [*bench_install(), *bench_offer(),
            *bench_stream(200_000 if quick else 500_000, 1 if quick else 3),
            *bench_forwarding(100 if quick else 300)]
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer lines and calls, one run each")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs (figures are noisy on a "
          "busy machine)")
    for row in run(args.quick)["rows"]:
        extra = ", ".join(x for x in (row.get("spread", ""), row.get("baseline", ""),
                                      row.get("vs", "")) if x)
        print(f"{row['figure']}: {row['value']:,} {row['unit']}" + (f" ({extra})" if extra else ""))


if __name__ == "__main__":
    main()

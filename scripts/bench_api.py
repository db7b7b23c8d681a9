"""Control API benchmark, through a real `pbhost serve` with real PocketBase.

1. GET /api/pm/list with 10 processes (PocketBase + 9 idle Python sidecars): 2,000 sequential
   requests (500 with --quick) on loopback over one keep-alive connection; p50, p99, max.
   Goal: p50 <= 2 ms, p99 <= 10 ms. The client (http.client) is in the figure too.
2. POST /api/pm/{id}/restart: time from the old process being gone (polled in /proc every
   0.5 ms by a thread) to the answer carrying the new pid. Goal: <= 50 ms. The whole request
   (SIGTERM, exit, reap, spawn) is shown as well.
3. The /proc scan behind cpu/memory (the trees of all 10 processes among every pid on this
   machine, done at most once a second).

    python scripts/bench_api.py [--quick] [--json FILE]

`run(quick) -> dict` is what scripts/bench.py calls.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pbhost.orphans.trees import TreeScanner  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from benchkit import api_call, free_port, until  # noqa: E402
from benchreport import helper_main  # noqa: E402

SIDECARS = 9
IDLE = "import os, time\nprint(f'pid={os.getpid()}', flush=True)\ntime.sleep(3600)\n"


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] == b"Z"
    except OSError:
        return True


class Pbhost:
    def __init__(self, workdir: Path, wrapper: tuple[str, ...] = ()) -> None:
        for i in range(SIDECARS):
            (workdir / f"s{i}.py").write_text(IDLE)
        procs = [{"id": f"side-{i}", "script": f"s{i}.py", "interpreter": sys.executable}
                 for i in range(SIDECARS)]
        (workdir / "pb_processes.json").write_text(json.dumps(procs))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.port = free_port()
        self.out = open(workdir / "pbhost.out", "wb")
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "pbhost", "serve", "--http",
             f"127.0.0.1:{self.port}"],
            cwd=workdir, env=env, stdout=self.out, stderr=subprocess.STDOUT)
        control = workdir / "pb_data" / ".pbhost" / "control.json"
        info = until(lambda: json.loads(control.read_text()), "control.json")
        self.token = info["token"]
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port + 1, timeout=30)
        until(lambda: all(p["status"] == "running" for p in self.call("GET", "/api/pm/list"))
              and len(self.call("GET", "/api/pm/list")) == SIDECARS + 1, "10 processes running")

    def call(self, method: str, path: str) -> Any:
        return api_call(self.conn, method, path, self.token)

    def close(self) -> None:
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(30)
        self.out.close()


def _stats(values_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(values_ms)
    return {"median_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
            "min_ms": round(ordered[0], 3), "max_ms": round(ordered[-1], 3), "n": len(ordered)}


def bench_list(host: Pbhost, n: int) -> dict[str, Any]:
    for _ in range(100):  # warm-up
        host.call("GET", "/api/pm/list")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        host.call("GET", "/api/pm/list")
        times.append((time.perf_counter() - t0) * 1000)
    return _stats(times)


def bench_restart(host: Pbhost, runs: int) -> dict[str, Any]:
    after_gone, total = [], []
    for _ in range(runs):
        old = host.call("GET", "/api/pm/side-0")["pid"]
        gone_at: list[float] = []

        def watch(old: int, gone_at: list[float]) -> None:
            while not _pid_gone(old):
                time.sleep(0.0005)
            gone_at.append(time.perf_counter())
        watcher = threading.Thread(target=watch, args=(old, gone_at))
        watcher.start()
        t0 = time.perf_counter()
        new = host.call("POST", "/api/pm/side-0/restart")["pid"]
        t1 = time.perf_counter()
        watcher.join(10)
        assert new != old and gone_at, "restart did not replace the process"
        after_gone.append(max(0.0, (t1 - gone_at[0]) * 1000))
        total.append((t1 - t0) * 1000)
    return {"after_gone": _stats(after_gone), "total": _stats(total)}


def bench_scan(roots: dict[str, int], pbhost_pid: int, n: int = 200) -> dict[str, Any]:
    times = []
    scanner = TreeScanner(me=pbhost_pid)
    for _ in range(n):
        t0 = time.perf_counter()
        scanner.scan(roots)
        times.append((time.perf_counter() - t0) * 1000)
    return {**_stats(times), "pids": sum(1 for x in os.listdir("/proc") if x.isdigit())}


def run(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pbhost-bench-api-") as tmp:
        host = Pbhost(Path(tmp))
        try:
            lst = bench_list(host, 500 if quick else 2000)
            restart = bench_restart(host, 5 if quick else 11)
            roots = {p["id"]: p["pid"] for p in host.call("GET", "/api/pm/list")}
            scan = bench_scan(roots, host.proc.pid)
        finally:
            host.close()
    rows = [
        dict(figure="API list, 10 processes, p50", value=lst["median_ms"],
             spread=f"{lst['min_ms']:g}-{lst['max_ms']:g}", n=lst["n"], goal="<= 2 ms",
             ok=lst["median_ms"] <= 2),
        dict(figure="API list, 10 processes, p99", value=lst["p99_ms"], n=lst["n"],
             goal="<= 10 ms", ok=lst["p99_ms"] <= 10),
        dict(figure="API restart: answer after old group gone", value=restart["after_gone"]
             ["median_ms"], spread=f"{restart['after_gone']['min_ms']:g}-"
             f"{restart['after_gone']['max_ms']:g}", n=restart["after_gone"]["n"],
             goal="<= 50 ms", ok=restart["after_gone"]["max_ms"] <= 50),
        dict(figure="API restart: whole request", value=restart["total"]["median_ms"],
             spread=f"{restart['total']['min_ms']:g}-{restart['total']['max_ms']:g}",
             n=restart["total"]["n"]),
        dict(figure=f"/proc scan for cpu/memory ({scan['pids']} pids, <= 1/s)",
             value=scan["median_ms"], spread=f"{scan['min_ms']:g}-{scan['max_ms']:g}",
             n=scan["n"]),
    ]
    return {"rows": rows, "list": lst, "restart": restart, "scan": scan}


def main() -> int:
    return helper_main(__doc__ or "", run, "control API")


if __name__ == "__main__":
    sys.exit(main())

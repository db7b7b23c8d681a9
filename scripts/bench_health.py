"""Health probes benchmark, through real `pbhost serve` runs with real PocketBase.

1. Probe CPU: two pbhosts side by side over one window (30 s; 10 s with --quick), each with 10
   sidecars that serve HTTP; one probes every sidecar over HTTP every 1 s (a livenessProbe),
   the other has no probes at all. pbhost's own CPU (its threads' schedstat, ns resolution),
   not the sidecars'. Goals: with probes < 1 % of one core; without probes the same as idle
   (<= 0.01 s per 30 s): probes cost nothing unless configured.
2. Liveness reaction: a sidecar whose HTTP server stops answering (it keeps running) at a
   random moment; the time from that moment to the SIGTERM pbhost sends it, both stamped with
   CLOCK_MONOTONIC by the sidecar itself. Probe: period 500 ms, timeout 200 ms,
   failureThreshold 3. Goal: median <= period x failureThreshold + timeout + 100 ms = 1.8 s.

    python scripts/bench_health.py [--quick] [--json FILE]

`run(quick) -> dict` is what scripts/bench.py calls.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import PY, Proc, bench_env, cpu_seconds, free_port, launch, pbhost_command  # noqa: E402
from benchreport import helper_main  # noqa: E402

SIDECARS = 10
PROBE_PERIOD = 1.0
REACT = {"period": 0.5, "timeout": 0.2, "failureThreshold": 3}
BOUND = REACT["period"] * REACT["failureThreshold"] + REACT["timeout"] + 0.1

# Serves GET /; with HANG=1 it answers only until a random moment 1-1.5 s into its run, then
# never again: the request in hand blocks the single-threaded server, later connections queue
# unanswered in the backlog. It says when it stopped answering and when SIGTERM arrived.
SERVER = """\
import http.server, os, random, signal, threading, time
hung = threading.Event()
def term(*_):
    print(f"term {time.monotonic():.6f}", flush=True)
    os._exit(0)
def hang():
    hung.set()
    print(f"hang {time.monotonic():.6f}", flush=True)
if os.environ.get("HANG") == "1":
    signal.signal(signal.SIGTERM, term)
    threading.Timer(1.0 + random.random() * 0.5, hang).start()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        while hung.is_set():
            time.sleep(3600)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
print("serving", flush=True)
server.serve_forever()
"""


def _project(folder: Path, processes: list[dict[str, Any]], scripts: dict[str, str]) -> Path:
    folder.mkdir()
    for name, code in scripts.items():
        (folder / name).write_text(code)
    (folder / "pb_processes.json").write_text(json.dumps(processes))
    return folder


def _serve(root: Path, folder: Path, **env: str) -> Proc:
    return launch([*pbhost_command(root), "serve", "--http", f"127.0.0.1:{free_port()}",
                   "--dir", str(folder / "pb_data")], folder, bench_env(**env))


def probe_cpu(root: Path, window: float) -> dict[str, Any]:
    hosts: dict[str, Proc] = {}
    for probed in (True, False):
        procs = []
        for i in range(SIDECARS):
            spec: dict[str, Any] = {"id": f"s{i}", "script": "server.py", "interpreter": PY,
                                    "env": {"PORT": str(free_port())}}
            if probed:
                spec["livenessProbe"] = {"http": "http://127.0.0.1:${PORT}/",
                                         "period": f"{PROBE_PERIOD}s"}
            procs.append(spec)
        name = "probed" if probed else "plain"
        hosts[name] = _serve(root, _project(root / name, procs, {"server.py": SERVER}))
    try:
        for host in hosts.values():
            assert host.out is not None
            for i in range(SIDECARS):
                host.out.wait(rf"^\[s{i}\]\[STDOUT\] serving", since=0)
        time.sleep(2.0)  # start-up work settles; the first probes have run
        cpu0 = {name: cpu_seconds(h.pid) for name, h in hosts.items()}
        end = time.monotonic() + window
        while time.monotonic() < end:  # keep the pipes drained
            for host in hosts.values():
                assert host.out is not None
                host.out.pump(0.05)
        cpu = {name: cpu_seconds(h.pid) - cpu0[name] for name, h in hosts.items()}
        failures = sum("liveness" in t for h in hosts.values() if h.out for _, t in h.out.lines)
    finally:
        for host in hosts.values():
            host.stop()
    return {"window_s": window, "probed_cpu_s": cpu["probed"], "plain_cpu_s": cpu["plain"],
            "probed_percent": cpu["probed"] / window * 100,
            "plain_percent": cpu["plain"] / window * 100, "probes": int(window * SIDECARS),
            "probe_failures": failures}


def reaction(root: Path, runs: int) -> dict[str, Any]:
    spec = {"id": "web", "script": "server.py", "interpreter": PY,
            "env": {"PORT": str(free_port()), "HANG": "1"},
            "livenessProbe": {"http": "http://127.0.0.1:${PORT}/", "period": "500ms",
                              "timeout": "200ms", "failureThreshold": 3}}
    folder = _project(root / "react", [spec], {"server.py": SERVER})
    # A run that passed its probe 0.5 s in counts as healthy: restarted at once, no backoff.
    host = _serve(root, folder, PBHOST_HEALTHY_SECONDS="0.5")
    times: list[float] = []
    try:
        assert host.out is not None
        for _ in range(runs):
            hang = float(host.out.wait(r"\[web\]\[STDOUT\] hang ([\d.]+)", 30)[1].group(1))
            term = float(host.out.wait(r"\[web\]\[STDOUT\] term ([\d.]+)", 30)[1].group(1))
            times.append((term - hang) * 1000)
    finally:
        host.stop()
    ordered = sorted(times)
    return {"median_ms": round(statistics.median(ordered), 1), "min_ms": round(ordered[0], 1),
            "max_ms": round(ordered[-1], 1), "n": len(ordered), "bound_ms": BOUND * 1000}


def run(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pbhost-bench-health-") as tmp:
        root = Path(tmp)
        cpu = probe_cpu(root, 10.0 if quick else 30.0)
        react = reaction(root, 3 if quick else 9)
    per30 = 30.0 / cpu["window_s"]
    how = f"over {cpu['window_s']:g} s" + (", scaled to 30 s" if per30 != 1 else "")
    rows = [
        dict(figure=f"probe CPU: {SIDECARS} sidecars, HTTP probe every {PROBE_PERIOD:g} s",
             value=round(cpu["probed_percent"], 3), unit="%",
             note=f"of one core; {cpu['probed_cpu_s']:.3f} s {how.split(',')[0]}",
             baseline=f"same sidecars, no probes: {cpu['plain_percent']:.3f} %",
             vs=f"+{cpu['probed_percent'] - cpu['plain_percent']:.3f} %",
             goal="< 1 % of one core", ok=cpu["probed_percent"] < 1.0),
        dict(figure=f"probe CPU: {SIDECARS} sidecars, no probes configured",
             value=round(cpu["plain_cpu_s"] * per30, 4), unit="s", note=f"per 30 s ({how})",
             goal="<= 0.01 s (idle)", ok=cpu["plain_cpu_s"] * per30 <= 0.01),
        dict(figure="liveness failure -> SIGTERM (period 500 ms x 3 + timeout 200 ms)",
             value=react["median_ms"], spread=f"{react['min_ms']:g}-{react['max_ms']:g}",
             n=react["n"], goal=f"<= {BOUND * 1000:.0f} ms",
             ok=react["median_ms"] <= BOUND * 1000),
    ]
    return {"rows": rows, "cpu": cpu, "reaction": react}


def main() -> int:
    return helper_main(__doc__ or "", run, "health probes")


if __name__ == "__main__":
    sys.exit(main())

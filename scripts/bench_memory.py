"""maxMemory benchmark, through real `pbhost serve`s with real PocketBase and real sidecars.

1. Sampling cost: two pbhosts side by side over one window (30 s; 10 s with --quick), each
   running 10 sidecars that each fork 4 workers (50 processes per pbhost), all idle. One sets
   `maxMemory` (never reached) on every sidecar, the other none: pbhost's own CPU time over the
   window (schedstat, ns) as a percentage of one core. Goal: < 0.5 % with the limit; without
   it, zero (no sampling at all). The cost grows with the number of pids on the machine (one
   getpgid each per second), so that number is shown.
2. Reaction time: a sidecar under a 100M limit (1 s window) goes over it at a random moment
   (so the sampler's phase varies) with one 40 MiB allocation, and stamps that allocation and
   the SIGTERM it gets (CLOCK_MONOTONIC, one clock for all processes). Figure: SIGTERM -
   crossing - window, the time from "over for the whole window" to the SIGTERM, the crossing
   taken as the allocation's midpoint (its duration, shown, bounds the error both ways).
   Goal: < 1.5 s.

    python scripts/bench_memory.py [--quick] [--json FILE]

`run(quick) -> dict` is what scripts/bench.py calls.
"""

from __future__ import annotations

import json
import os
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
WORKERS = 4
WINDOW_S = 1.0  # maxMemoryFor of the reaction figure

IDLE_FAMILY = f"""\
import os, signal, time
for _ in range({WORKERS}):
    if os.fork() == 0:
        signal.pause()
print("ready", flush=True)
signal.pause()
"""
# Under the 100M limit with 70 MiB (python itself is ~10 MiB), then over it with 40 MiB more:
# the crossing falls within that last allocation, taken as its midpoint.
GREEDY = """\
import os, random, signal, time
signal.signal(signal.SIGTERM, lambda *_: (print(f"term {time.monotonic():.6f}", flush=True),
                                          os._exit(0)))
base = b"x" * (70 << 20)
time.sleep(0.6 + random.random())  # a random phase against the sampler's ticks
t0 = time.monotonic()
more = b"y" * (40 << 20)
t1 = time.monotonic()
print(f"over {(t0 + t1) / 2:.6f} took {t1 - t0:.6f}", flush=True)
signal.pause()
"""


def _project(root: Path, name: str, sidecars: dict[str, str], **keys: Any) -> Path:
    folder = root / name
    folder.mkdir()
    procs = []
    for proc_id, code in sidecars.items():
        (folder / f"{proc_id}.py").write_text(code)
        procs.append({"id": proc_id, "script": f"{proc_id}.py", "interpreter": PY, **keys})
    (folder / "pb_processes.json").write_text(json.dumps(procs))
    return folder


def _serve(root: Path, folder: Path, **env: str) -> Proc:
    return launch([*pbhost_command(root), "serve", "--http", f"127.0.0.1:{free_port()}",
                   "--dir", str(folder / "pb_data")], folder, bench_env(**env))


def sampling_cost(root: Path, window: float) -> dict[str, Any]:
    family = {f"side{i}": IDLE_FAMILY for i in range(SIDECARS)}
    limited = _serve(root, _project(root, "limited", family, maxMemory="1G"))
    unlimited = _serve(root, _project(root, "unlimited", family))
    try:
        for proc in (limited, unlimited):
            assert proc.out is not None
            for i in range(SIDECARS):
                proc.out.wait(rf"^\[side{i}\]\[STDOUT\] ready", since=0)
        time.sleep(2.0)  # start-up work (API start, first scans) settles
        start = cpu_seconds(limited.pid), cpu_seconds(unlimited.pid)
        end = time.monotonic() + window
        while time.monotonic() < end:  # keep both pipes drained
            for proc in (limited, unlimited):
                assert proc.out is not None
                proc.out.pump(0.05)
        used = cpu_seconds(limited.pid) - start[0], cpu_seconds(unlimited.pid) - start[1]
        pids = sum(1 for name in os.listdir("/proc") if name.isdigit())
    finally:
        for proc in (limited, unlimited):
            proc.stop()
    return {"window_s": window, "pids": pids,
            "limited_pct": 100.0 * used[0] / window, "unlimited_pct": 100.0 * used[1] / window}


def reaction(root: Path, runs: int) -> dict[str, Any]:
    folder = _project(root, "greedy", {"greedy": GREEDY}, maxMemory="100M",
                      maxMemoryFor=f"{WINDOW_S:g}s")
    # A run of 0.5 s is healthy: each breach (after >= 0.6 s) restarts at once, no backoff.
    proc = _serve(root, folder, PBHOST_HEALTHY_SECONDS="0.5")
    late, alloc = [], []
    try:
        assert proc.out is not None
        for _ in range(runs):
            _, over = proc.out.wait(r"^\[greedy\]\[STDOUT\] over ([\d.]+) took ([\d.]+)",
                                    timeout=30)
            _, term = proc.out.wait(r"^\[greedy\]\[STDOUT\] term ([\d.]+)", timeout=30)
            late.append((float(term.group(1)) - float(over.group(1)) - WINDOW_S) * 1000)
            alloc.append(float(over.group(2)) * 1000)
    finally:
        proc.stop()
    ordered = sorted(late)
    return {"median_ms": round(statistics.median(ordered), 1), "min_ms": round(ordered[0], 1),
            "max_ms": round(ordered[-1], 1), "n": len(ordered),
            "alloc_median_ms": round(statistics.median(alloc), 1)}


def run(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pbhost-bench-memory-") as tmp:
        root = Path(tmp)
        cost = sampling_cost(root, 10.0 if quick else 30.0)
        react = reaction(root, 5 if quick else 11)
    rows = [
        dict(figure=f"maxMemory sampling, {SIDECARS} sidecars x {WORKERS} workers: pbhost CPU",
             value=round(cost["limited_pct"], 3), unit="%",
             note=f"of one core over {cost['window_s']:g} s, {cost['pids']} pids on the machine",
             baseline=f"no maxMemory: {cost['unlimited_pct']:.3f} %",
             vs=f"+{cost['limited_pct'] - cost['unlimited_pct']:.3f} %", goal="< 0.5 %",
             ok=cost["limited_pct"] < 0.5),
        # "Without it, zero": the same sidecars with no maxMemory cost an idle pbhost's nothing
        # (0.01 s per 30 s is the idle goal of the whole bench).
        dict(figure=f"maxMemory unset, {SIDECARS} sidecars x {WORKERS} workers: pbhost CPU",
             value=round(cost["unlimited_pct"], 3), unit="%",
             note=f"of one core over {cost['window_s']:g} s (no sampling at all)",
             goal="<= 0.033 % (0.01 s per 30 s)", ok=cost["unlimited_pct"] <= 0.0334),
        dict(figure="maxMemory: over the limit for the whole window -> SIGTERM",
             value=react["median_ms"], spread=f"{react['min_ms']:g}-{react['max_ms']:g}",
             n=react["n"], note=f"(1 s samples, {WINDOW_S:g} s window; the crossing "
                                f"allocation took {react['alloc_median_ms']:g} ms)",
             goal="< 1500 ms", ok=react["max_ms"] < 1500),
    ]
    return {"rows": rows, "sampling": cost, "reaction": react}


def main() -> int:
    return helper_main(__doc__ or "", run, "maxMemory")


if __name__ == "__main__":
    sys.exit(main())

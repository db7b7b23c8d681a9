"""Reloading pb_processes.json, through a real `pbhost serve` with real PocketBase and 9 idle
Python sidecars (the same set-up as bench_api.py).

1. POST /api/pm/reload with nothing changed: the file read and checked, every process
   resolved (argv, environment, cwd) and compared; nothing stopped or started. Baseline in the
   same run: GET /api/pm/list on the same keep-alive connection (an API round trip that also
   describes every process).
2. POST /api/pm/reload with one sidecar's `env` changed (each run toggles it): that sidecar is
   stopped and started again, the 8 others are left alone. Baseline in the same run: POST
   /api/pm/{id}/restart of the same sidecar (the same stop and spawn, without the file).
   The reload must not cost much more than the restart it contains.

Both check what a reload promises: after every run, the untouched sidecars (and PocketBase)
have the pids they started with.

    python scripts/bench_configreload.py [--quick] [--json FILE]

`run(quick) -> dict` is what scripts/bench.py calls.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import SIDECARS, Pbhost, _stats  # noqa: E402
from benchreport import helper_main  # noqa: E402


def _config(workdir: Path, colour: str) -> None:
    procs = [{"id": f"side-{i}", "script": f"s{i}.py", "interpreter": sys.executable,
              **({"env": {"COLOUR": colour}} if i == 0 else {})} for i in range(SIDECARS)]
    (workdir / "pb_processes.json").write_text(json.dumps(procs))


def _pids(host: Pbhost) -> dict[str, int]:
    return {p["id"]: p["pid"] for p in host.call("GET", "/api/pm/list")}


def _timed(host: Pbhost, method: str, path: str) -> tuple[float, Any]:
    t0 = time.perf_counter()
    body = host.call(method, path)
    return (time.perf_counter() - t0) * 1000, body


def bench(workdir: Path, host: Pbhost, runs: int) -> dict[str, Any]:
    _config(workdir, "red")
    host.call("POST", "/api/pm/reload")  # side-0 gets its env: the runs start from here
    start = _pids(host)
    kept = {k: v for k, v in start.items() if k != "side-0"}
    listing, same, changed, restart = [], [], [], []
    for i in range(runs):
        listing.append(_timed(host, "GET", "/api/pm/list")[0])
        ms, body = _timed(host, "POST", "/api/pm/reload")
        assert body["restarted"] == [] and len(body["unchanged"]) == SIDECARS, body
        same.append(ms)
        _config(workdir, "blue" if i % 2 == 0 else "red")
        ms, body = _timed(host, "POST", "/api/pm/reload")
        assert body["restarted"] == ["side-0"], body
        changed.append(ms)
        restart.append(_timed(host, "POST", "/api/pm/side-0/restart")[0])
        now = _pids(host)
        assert {k: now[k] for k in kept} == kept, "a reload touched an unchanged process"
    return {"list": _stats(listing), "unchanged": _stats(same), "one_changed": _stats(changed),
            "restart": _stats(restart)}


def run(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pbhost-bench-reload-") as tmp:
        host = Pbhost(Path(tmp))
        try:
            r = bench(Path(tmp), host, 10 if quick else 40)
        finally:
            host.close()
    same, one, lst, rst = r["unchanged"], r["one_changed"], r["list"], r["restart"]
    rows = [
        dict(figure="reload, nothing changed (10 processes)", value=same["median_ms"],
             spread=f"{same['min_ms']:g}-{same['max_ms']:g}", n=same["n"],
             baseline=f"GET /api/pm/list {lst['median_ms']:g} ms",
             vs=f"+{same['median_ms'] - lst['median_ms']:.1f} ms"),
        dict(figure="reload, 1 of 9 sidecars changed", value=one["median_ms"],
             spread=f"{one['min_ms']:g}-{one['max_ms']:g}", n=one["n"],
             baseline=f"POST restart of it {rst['median_ms']:g} ms",
             vs=f"+{one['median_ms'] - rst['median_ms']:.1f} ms", goal="<= restart + 20 ms",
             ok=one["median_ms"] <= rst["median_ms"] + 20),
    ]
    return {"rows": rows, **r}


def main() -> int:
    return helper_main(__doc__ or "", run, "config reload")


if __name__ == "__main__":
    sys.exit(main())

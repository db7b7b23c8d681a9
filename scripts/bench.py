"""Every performance figure of pbhost in one table, against baselines measured in the same run.

    python scripts/bench.py [--quick] [--json FILE] [--only NAME ...] [--runs N]
    make bench [QUICK=1] [JSON=FILE]

Each figure runs real processes (real PocketBase, real Python sidecars, the `pbhost` console
script) several times and shows the median, the spread (min-max) and, where a baseline exists,
the difference or ratio against that baseline measured in the same run. Absolute numbers vary
by machine; the differences and ratios are what carry over.

Figures from other parts of pbhost come from their own scripts, each exposing
`run(quick) -> dict`: scripts/bench_logs.py (log stream), scripts/bench_pipe.py (one child at
the pipe limit vs cat and supervisord), scripts/bench_reload.py (hot reload),
scripts/bench_api.py (control API), scripts/bench_limits.py (what clients holding the API
cost), scripts/bench_pbhook.py (PocketBase hook), scripts/bench_memory.py (maxMemory),
scripts/bench_health.py (probes), scripts/bench_scale.py (cost curves in the number of
sidecars, watched files, followers). A script that is not there yet shows "n/a (pending)".
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import traceback
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchcore  # noqa: E402
import benchreport  # noqa: E402
from benchreport import Row  # noqa: E402

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
SCALE_PLOT = SCRIPTS.parent / "docs" / "performance-scale.png"

# name -> (function(quick, runs) -> rows)
FIGURES: dict[str, Callable[[bool, int], list[Row]]] = {
    "startup": benchcore.startup,
    "shutdown": benchcore.shutdown,
    "restart": benchcore.restart,
    "idle": benchcore.idle_and_crash_loop,
    "logs": lambda quick, runs: log_rows(quick),
    "pipe": lambda quick, runs: helper_rows("bench_pipe", "log path at the pipe limit", quick),
    "scale": lambda quick, runs: scale_rows(quick),
    "reload": lambda quick, runs: reload_rows(quick),
    "api": lambda quick, runs: helper_rows("bench_api", "control API", quick),
    "limits": lambda quick, runs: helper_rows("bench_limits", "control API limits", quick),
    "pbhook": lambda quick, runs: helper_rows("bench_pbhook", "PocketBase hook", quick),
    "memory": lambda quick, runs: helper_rows("bench_memory", "maxMemory", quick),
    "health": lambda quick, runs: helper_rows("bench_health", "health probes", quick),
    "configreload": lambda quick, runs: helper_rows("bench_configreload", "config reload",
                                                    quick),
}


def helper_rows(module: str, label: str, quick: bool) -> list[Row]:
    """Figures of a helper script's `run(quick)`, or one "n/a (pending)" row if it is absent."""
    if not (SCRIPTS / f"{module}.py").exists():
        return [Row(label, None, note=f"n/a (pending: scripts/{module}.py)")]
    result = importlib.import_module(module).run(quick)
    return benchreport.rows_from_helper(label, result)


def log_rows(quick: bool) -> list[Row]:
    if not (SCRIPTS / "bench_logs.py").exists():
        return helper_rows("bench_logs", "log stream", quick)
    r = importlib.import_module("bench_logs").run(quick)
    rows = [Row(f"log throughput, {k} child{'ren' if k > 1 else ''} (pbhost serve)",
                round(r[f"serve_{k}child_lines_per_s"]), "lines/s",
                f"{r[f'serve_{k}child_min']:,.0f}-{r[f'serve_{k}child_max']:,.0f}",
                note=f"peak RSS {r[f'serve_{k}child_peak_rss_mib']:.0f} MiB",
                goal=">= 1,000,000 lines/s, RSS < 64 MiB",
                ok=r[f"serve_{k}child_lines_per_s"] >= 1e6
                and r[f"serve_{k}child_peak_rss_mib"] < 64)
            for k in (1, 4)]
    ratio = r["serve_py_writer_ratio"]
    rows.append(Row("Python writer's speed through pbhost, relative to into `cat > file`",
                    round(ratio, 2), "x",
                    f"{r['serve_py_writer_ratio_min']:.2f}-{r['serve_py_writer_ratio_max']:.2f}",
                    baseline="cat > file = 1.00", goal=">= 0.9x", ok=ratio >= 0.9))
    return rows


def scale_rows(quick: bool) -> list[Row]:
    """The cost curves; their plot goes to docs/ when matplotlib is importable."""
    if not (SCRIPTS / "bench_scale.py").exists():
        return helper_rows("bench_scale", "cost curves", quick)
    scale = importlib.import_module("bench_scale")
    result = scale.run(quick)
    if not scale.plot(result["curves"], SCALE_PLOT):
        print("matplotlib is not importable: the cost curves are not plotted "
              f"({SCALE_PLOT.relative_to(SCRIPTS.parent)} is left as it was)", file=sys.stderr)
    return benchreport.rows_from_helper("cost curves", result)


def reload_rows(quick: bool) -> list[Row]:
    if not (SCRIPTS / "bench_reload.py").exists():
        return helper_rows("bench_reload", "reload", quick)
    result = importlib.import_module("bench_reload").run(quick)
    lat, idle = result["latency"], result["idle"]
    return [
        Row("reload: edit to new process's first line (500 ms debounce)", lat["median_ms"], "ms",
            f"{lat['min_ms']:g}-{lat['max_ms']:g}", lat["runs"], goal="<= 700 ms",
            ok=lat["median_ms"] <= 700, note=f"({result['mode']})"),
        Row(f"reload: idle CPU watching {idle['files']} files", idle["cpu_s"], "s",
            note=f"over {idle['window_s']:g} s"),
    ]


def byte_compile(package: Path) -> None:
    """Compile a pbhost package's modules once, as `pip install` does: without it, where
    PYTHONDONTWRITEBYTECODE is set (as in some sandboxes and containers), every pbhost start
    compiles ~70 modules from source and the start-up figures measure the compiler."""
    import compileall
    compileall.compile_dir(str(package), quiet=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, 10 s CPU windows "
                        "(under 2 minutes)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure here")
    parser.add_argument("--only", nargs="+", choices=sorted(FIGURES), metavar="NAME",
                        help="only these figures: " + ", ".join(FIGURES))
    parser.add_argument("--runs", type=int, help="runs per timed figure (default 11, quick 5)")
    parser.add_argument("--no-honcho", action="store_true",
                        help="do not install honcho (into ~/.cache/pbhost-bench) to measure it "
                             "as a baseline; show the issue's numbers for it instead")
    args = parser.parse_args()
    byte_compile(ROOT / "pbhost")
    if args.no_honcho:
        os.environ["BENCH_HONCHO"] = "off"
    elif not benchcore.install_honcho():
        print("honcho could not be installed: showing the issue's numbers for it",
              file=sys.stderr)
    runs = args.runs or (5 if args.quick else 11)
    rows: list[Row] = []
    started = datetime.datetime.now()
    for name in args.only or FIGURES:
        print(f"... {name}", file=sys.stderr, flush=True)
        try:
            rows.extend(FIGURES[name](args.quick, runs))
        except Exception as exc:  # one broken figure must not hide the others
            traceback.print_exc()
            rows.append(Row(name, None, note=f"failed: {exc}"))
    machine = {"date": started.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
               "python": platform.python_version(), "kernel": platform.release(),
               "quick": args.quick, "runs": runs,
               "seconds": round((datetime.datetime.now() - started).total_seconds(), 1)}
    print(benchreport.table(rows, machine))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": machine, "rows": [r.as_dict() for r in rows]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

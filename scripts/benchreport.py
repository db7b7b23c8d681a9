"""The table of scripts/bench.py: one Row per figure, rendered as Markdown (it goes into the
docs as is), plus the reference numbers of other process managers quoted from the issue."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

# Measured by the author on this kind of machine; not re-measured by this script.
REFERENCES = (
    "first child's first line: honcho 0.27 s, circus 0.35 s, PM2 0.8 s, supervisord 1.3 s",
    "restart latency: PM2 60-90 ms, supervisord ~1.1 s, circus ~3 s (defaults)",
    "idle CPU over 30 s: supervisord and circus 0.01 s, PM2 0.10 s",
    "RSS: supervisord 24 MiB, circus 31 MiB, PM2 55 MiB",
)


@dataclass
class Row:
    figure: str
    value: float | None          # the median (or the single measurement)
    unit: str = "ms"
    spread: str = ""             # "min-max" of the runs
    n: int = 1
    baseline: str = ""           # what it is compared with, measured in the same run
    vs: str = ""                 # difference or ratio against that baseline
    goal: str = ""
    ok: bool | None = None       # goal met? None: no goal
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def timed_row(figure: str, stats: Mapping[str, Any], **kw: Any) -> Row:
    """A Row from benchkit.summary() output (ms)."""
    return Row(figure, stats["median"], "ms", f"{stats['min']:g}-{stats['max']:g}", stats["n"],
               **kw)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.4f} s" if value < 0.1 else f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit in ("lines/s",):
        return f"{value:,.0f} {unit}"
    return f"{value:g} {unit}".strip()


def rows_table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| figure | median | spread (runs) | baseline, same run | vs baseline | goal | met |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        met = "" if r.ok is None else ("yes" if r.ok else "**no**")
        spread = f"{r.spread} ({r.n})" if r.spread else (f"({r.n})" if r.value is not None else "")
        value = _fmt(r.value, r.unit) if r.value is not None else r.note
        note = f" {r.note}" if r.note and r.value is not None else ""
        lines.append(f"| {r.figure} | {value}{note} | {spread} | {r.baseline} | {r.vs} | "
                     f"{r.goal} | {met} |")
    return "\n".join(lines)


def table(rows: list[Row], machine: Mapping[str, Any]) -> str:
    """The rows, then the machine and the reference numbers quoted from the issue."""
    mode = "quick" if machine.get("quick") else "full"
    return "\n".join([
        rows_table(rows), "",
        f"{machine['date']}, {machine['cpus']} CPUs, Linux {machine['kernel']}, Python "
        f"{machine['python']}, {mode} mode ({machine['runs']} runs per timed figure), "
        f"{machine['seconds']} s in all.",
        "Reference numbers quoted from the issue (other machines' runs, not measured here): "
        + "; ".join(REFERENCES) + "."])


def rows_from_helper(label: str, result: Mapping[str, Any]) -> list[Row]:
    """A helper's `run(quick)` result as rows.

    A helper may return `{"rows": [Row fields...]}` to control its rows; otherwise every
    sub-dict with a `median_ms` becomes a timed row and every other number a plain one.
    """
    if "rows" in result:
        return [Row(**r) for r in result["rows"]]
    rows: list[Row] = []
    _walk(label, result, rows)
    return rows or [Row(label, None, note="no figures returned")]


def _walk(label: str, value: Any, rows: list[Row]) -> None:
    if isinstance(value, Mapping):
        if "median_ms" in value:
            lo, hi = value.get("min_ms"), value.get("max_ms")
            rows.append(Row(label, value["median_ms"], "ms",
                            f"{lo:g}-{hi:g}" if lo is not None and hi is not None else "",
                            value.get("runs", value.get("n", 1)), goal=value.get("goal", "")))
            return
        for key, sub in value.items():
            if key not in ("mode", "goal"):
                _walk(f"{label} {key}", sub, rows)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        rows.append(Row(label, value, ""))


def helper_main(doc: str, run: Callable[[bool], Mapping[str, Any]], label: str) -> int:
    """`python scripts/bench_X.py [--quick] [--json FILE]`: one helper's figures, by hand."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, shorter windows")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    result = run(args.quick)
    print(rows_table(rows_from_helper(label, result)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0

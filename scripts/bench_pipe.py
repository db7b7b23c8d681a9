#!/usr/bin/env python3
"""The log path at the pipe limit: one child writing 60-byte lines as fast as it can, through
pbhost and through two baselines, interleaved in the same run (issue 17).

Two kinds of child, both a Python loop over numbered 60-byte lines:
  - "per line": a write and a flush per line, 200,000 lines: what a Python sidecar does with
    the PYTHONUNBUFFERED=1 pbhost sets (one write(2) of 60 bytes per line);
  - "8 KiB": the same lines through an 8 KiB buffer, 1,000,000 lines (136 lines per write).
Three destinations, each run in turn so the machine's load falls on all of them alike:
  - `cat > file` through a plain pipe (the reference: a reader that does nothing);
  - supervisord 4.x, unprefixed stdout log file (installed into ~/.cache/pbhost-bench once);
  - `pbhost serve` (with PocketBase), stdout to a file.
Figure: lines/s from the child's first write (a CLOCK_MONOTONIC stamp it takes itself) to the
last line being in the destination file (polled every 0.5 ms); the median of the runs. Every
destination file is checked afterwards: each line once, in order, whole.

A third row: the latency of single lines on an otherwise idle pbhost (a line every 20 ms,
child's stamp to the line's arrival on pbhost's stdout pipe), against the same child writing
straight into the bench's pipe.

    python scripts/bench_pipe.py [--quick] [--json FILE]
    from bench_pipe import run; run(quick=True) -> {"rows": [...], ...}
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
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_logs import verify  # noqa: E402
from benchcore import install_tool  # noqa: E402
from benchkit import (  # noqa: E402
    PY,
    Output,
    bench_env,
    cpu_seconds,
    free_port,
    launch,
    pbhost_command,
    pocketbase_binary,
)

SUPERVISOR_VENV = Path.home() / ".cache" / "pbhost-bench" / "supervisor-venv"
SUPERVISOR = "supervisor==4.3.0"

# argv: lines, "line" | "8k", stamp file. Numbered lines, as bench_logs.verify expects.
CHILD = """\
import os, sys, time
n, kind, stamp = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = open(1, "wb", buffering=8192, closefd=False)
w, flush = out.write, out.flush
t0 = time.monotonic()
if kind == "line":
    for i in range(1, n + 1):
        w(b"%059d\\n" % i)
        flush()
else:
    for i in range(1, n + 1):
        w(b"%059d\\n" % i)
    flush()
t1 = time.monotonic()
with open(stamp, "w") as f:
    f.write(f"{t0} {t1}")
time.sleep(3600)  # exiting would make pbhost restart it (and supervisord log it)
"""

# A line every 20 ms, each carrying the child's CLOCK_MONOTONIC stamp.
TICKER = """\
import sys, time
out = open(1, "wb", buffering=0, closefd=False)
for _ in range(int(sys.argv[1])):
    time.sleep(0.02)
    out.write(b"tick %.6f\\n" % time.monotonic())
time.sleep(3600)
"""

SUPERVISORD_CONF = """\
[supervisord]
nodaemon=true
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
childlogdir={dir}

[program:w]
command={argv}
directory={dir}
autorestart=false
startsecs=0
stopwaitsecs=5
stdout_logfile={dir}/w.out
stdout_logfile_maxbytes=0
stdout_logfile_backups=0
stderr_logfile={dir}/w.err
stderr_logfile_maxbytes=0
stderr_logfile_backups=0
"""

PREFIX = b"[w][STDOUT] "


def supervisord_binary() -> str | None:
    if os.environ.get("BENCH_SUPERVISORD") == "off":
        return None
    return os.environ.get("BENCH_SUPERVISORD") or install_tool(SUPERVISOR_VENV, SUPERVISOR,
                                                               "supervisord")


class Case:
    """One child kind: its line count, argv and the files of one run."""

    def __init__(self, root: Path, kind: str, lines: int) -> None:
        self.root, self.kind, self.lines = root, kind, lines
        (root / "child.py").write_text(CHILD)
        self.stamp = root / f"stamp.{kind}"

    def argv(self) -> list[str]:
        return [PY, str(self.root / "child.py"), str(self.lines), self.kind, str(self.stamp)]

    def first_write(self, deadline: float) -> float:
        _wait(lambda: self.stamp.exists() and bool(self.stamp.read_text()), deadline, "stamp")
        return float(self.stamp.read_text().split()[0])

    def fresh(self) -> None:
        self.stamp.unlink(missing_ok=True)


def _wait(pred: Callable[[], bool], deadline: float, what: str, poll: float = 0.0005) -> float:
    """Poll `pred` until it holds; the monotonic time it first did."""
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll)
    return time.monotonic()


def _ends_with(path: Path, min_size: int, needle: bytes) -> Callable[[], bool]:
    """A cheap check for the poll loop: a stat, and a read of the tail only once the file is
    big enough to hold every line."""
    def check() -> bool:
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return False
        if size < min_size:
            return False
        with open(path, "rb") as f:
            f.seek(max(0, size - 65536))
            return needle in f.read()
    return check


def _expected_plain(n: int) -> bytes:
    return b"".join(b"%059d\n" % i for i in range(1, n + 1))


def _contains(path: Path, needle: bytes) -> Callable[[], bool]:
    """The first MiB of `path` holds `needle` (the child's first line, near the start)."""
    def check() -> bool:
        try:
            with open(path, "rb") as f:
                return needle in f.read(1 << 20)
        except FileNotFoundError:
            return False
    return check


class Figure:
    """One run's result: lines/s, and the reader's CPU seconds per million lines."""

    def __init__(self, rate: float, cpu_per_m: float) -> None:
        self.rate, self.cpu_per_m = rate, cpu_per_m


def _measure(case: Case, out: Path, prefix: bytes, reader_pid: int) -> Figure:
    """Wait for the child's first line in `out` (the reader's CPU then), then for its last
    (the time then, and the reader's CPU again)."""
    deadline = time.monotonic() + 120
    _wait(_contains(out, prefix + b"%059d\n" % 1), deadline, f"first line in {out.name}")
    cpu0 = cpu_seconds(reader_pid)
    done = _wait(_ends_with(out, case.lines * (60 + len(prefix)), prefix + b"%059d\n" %
                            case.lines), deadline, f"last line in {out.name}")
    cpu = cpu_seconds(reader_pid) - cpu0
    t0 = case.first_write(deadline)
    return Figure(case.lines / (done - t0), cpu / case.lines * 1e6)


def into_cat(case: Case) -> Figure:
    out = case.root / "cat.out"
    case.fresh()
    with open(out, "wb") as f:
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=f)
    assert cat.stdin is not None
    child = subprocess.Popen(case.argv(), stdout=cat.stdin, stdin=subprocess.DEVNULL)
    cat.stdin.close()
    try:
        fig = _measure(case, out, b"", cat.pid)
    finally:
        child.kill()
        child.wait()
        cat.wait()
    if out.read_bytes() != _expected_plain(case.lines):
        raise AssertionError("cat's file is not the child's lines")
    return fig


def into_supervisord(case: Case, binary: str) -> Figure:
    run_dir = case.root / "sv"
    run_dir.mkdir(exist_ok=True)
    out = run_dir / "w.out"
    out.unlink(missing_ok=True)
    case.fresh()
    conf = run_dir / "supervisord.conf"
    conf.write_text(SUPERVISORD_CONF.format(dir=run_dir, argv=" ".join(case.argv())))
    sv = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        fig = _measure(case, out, b"", sv.pid)
    finally:
        sv.send_signal(signal.SIGTERM)
        sv.wait(30)
    if out.read_bytes() != _expected_plain(case.lines):
        raise AssertionError("supervisord's log is not the child's lines")
    return fig


class PbhostProject:
    """A project whose one sidecar is the child; pbhost serve on a prepared data dir."""

    def __init__(self, root: Path, source: Path | None = None) -> None:
        self.root = root
        self.command = pbhost_command(root)
        self.data = root / "pb_data"
        # Another checkout's pbhost package (--before): first on PYTHONPATH, so it wins over
        # this one's.
        self.env = bench_env()
        if source is not None:
            self.env["PYTHONPATH"] = f"{source}{os.pathsep}{self.env['PYTHONPATH']}"
        if self.data.exists():
            return
        subprocess.run([pocketbase_binary(), "superuser", "upsert", "bench@example.com",
                        "benchpass123", "--dir", str(self.data)], check=True,
                       capture_output=True)

    def configure(self, argv: list[str]) -> None:
        (self.root / "pb_processes.json").write_text(json.dumps(
            [{"id": "w", "command": argv[0], "args": argv[1:]}]))

    def serve_argv(self) -> list[str]:
        return [*self.command, "serve", "--http", f"127.0.0.1:{free_port()}",
                "--dir", str(self.data)]


def into_pbhost(case: Case, project: PbhostProject) -> Figure:
    out = case.root / "pbhost.out"
    case.fresh()
    project.configure(case.argv())
    with open(out, "wb") as f:
        proc = subprocess.Popen(project.serve_argv(), cwd=project.root, stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=project.env)
    try:
        fig = _measure(case, out, PREFIX, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    verify(out, ["w"], case.lines)
    return fig


def line_latency(root: Path, project: PbhostProject, lines: int) -> dict[str, list[float]]:
    """ms from a child's stamp to its line arriving here: straight, and through pbhost."""
    ticker = root / "ticker.py"
    ticker.write_text(TICKER)
    argv = [PY, str(ticker), str(lines)]
    res: dict[str, list[float]] = {}
    direct = launch(argv, root, bench_env())
    res["direct"] = _ticks(direct.out, lines, r"^tick (\S+)")
    direct.stop()
    project.configure(argv)
    through = launch(project.serve_argv(), project.root, project.env)
    try:
        res["pbhost"] = _ticks(through.out, lines, r"^\[w\]\[STDOUT\] tick (\S+)")
    finally:
        through.stop()
    return res


def _ticks(out: Output | None, lines: int, rx: str) -> list[float]:
    assert out is not None
    lat = []
    for _ in range(lines):
        seen, m = out.wait(rx, timeout=30)
        lat.append((seen - float(m.group(1))) * 1000)
    return lat[2:]  # the first lines ride on the child's and pbhost's start-up


def _spread(vals: list[float]) -> str:
    return f"{min(vals):,.0f}-{max(vals):,.0f}"


def run(quick: bool = False, runs: int | None = None,
        before: Path | None = None) -> dict[str, Any]:
    """`before`: a folder holding another pbhost package (an older commit's `pbhost/`),
    measured as one more destination in the same interleaved runs (default: the
    BENCH_PBHOST_BEFORE environment variable, if set)."""
    runs = runs or (3 if quick else 7)
    if before is None and os.environ.get("BENCH_PBHOST_BEFORE"):
        before = Path(os.environ["BENCH_PBHOST_BEFORE"])
    if before is not None:
        import compileall  # as for this pbhost (bench.py): measure code, not the compiler
        compileall.compile_dir(str(before), quiet=1)
    sv_binary = supervisord_binary()
    kinds = {"line": 200_000, "8k": 1_000_000}
    dests = ["cat", "supervisord", "pbhost"] + (["before"] if before else [])
    figs: dict[str, dict[str, list[Figure]]] = {k: {d: [] for d in dests} for k in kinds}
    with tempfile.TemporaryDirectory(prefix="pbhost-bench-pipe-") as tmp:
        root = Path(tmp)
        project = PbhostProject(root)
        old = PbhostProject(root, before) if before else None
        cases = {k: Case(root, k, n) for k, n in kinds.items()}
        for _ in range(runs):  # interleaved: load spikes hit every destination alike
            for kind, case in cases.items():
                figs[kind]["cat"].append(into_cat(case))
                if sv_binary:
                    figs[kind]["supervisord"].append(into_supervisord(case, sv_binary))
                figs[kind]["pbhost"].append(into_pbhost(case, project))
                if old:
                    figs[kind]["before"].append(into_pbhost(case, old))
        latency = line_latency(root, project, 30 if quick else 100)
        if old:
            latency["before"] = line_latency(root, old, 30 if quick else 100)["pbhost"]
    rates = {k: {d: [f.rate for f in v] for d, v in per.items()} for k, per in figs.items()}
    cpu = {k: {d: [f.cpu_per_m for f in v] for d, v in per.items()} for k, per in figs.items()}
    return {"rows": _rows(rates, cpu, kinds, latency), "rates": rates, "cpu_per_m_lines": cpu,
            "latency": latency}


LABEL = {"line": "flush per line", "8k": "8 KiB buffered"}


def _rows(rates: dict[str, dict[str, list[float]]], cpu: dict[str, dict[str, list[float]]],
          kinds: dict[str, int], latency: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind, n in kinds.items():
        med = {dest: statistics.median(v) for dest, v in rates[kind].items() if v}
        cat, host, sv = med["cat"], med["pbhost"], med.get("supervisord")
        base = f"cat > file {cat:,.0f}"
        vs = f"{host / cat:.2f}x cat"
        if sv:
            base += f"; supervisord {sv:,.0f} ({sv / cat:.2f}x cat)"
            vs += f", {host / sv:.2f}x supervisord"
        if "before" in med:
            base += f"; pbhost before {med['before']:,.0f} ({med['before'] / cat:.2f}x cat)"
        if kind == "line":
            goal, ok = ">= supervisord", (host >= sv if sv else None)
        else:
            goal, ok = ">= 0.9x cat", host >= 0.9 * cat
        rows.append(dict(figure=f"child at the pipe limit, {LABEL[kind]} ({n:,} x 60 B lines),"
                         " first write to last line in the file", value=round(host),
                         unit="lines/s", spread=_spread(rates[kind]["pbhost"]),
                         n=len(rates[kind]["pbhost"]), baseline=base, vs=vs, goal=goal, ok=ok))
        c = {dest: statistics.median(v) for dest, v in cpu[kind].items() if v}
        base = f"cat {c['cat']:.3f} s" + "".join(
            f"; {d} {c[d]:.3f} s" for d in ("supervisord", "before") if d in c)
        rows.append(dict(figure=f"reader's CPU per million lines, {LABEL[kind]}",
                         value=round(c["pbhost"], 3), unit="s",
                         spread=f"{min(cpu[kind]['pbhost']):.3f}-{max(cpu[kind]['pbhost']):.3f}",
                         n=len(cpu[kind]["pbhost"]), baseline=base,
                         note="(pbhost prefixes, keeps a ring, writes; cat only copies)"))
    p, d = latency["pbhost"], latency["direct"]
    p99 = sorted(p)[min(len(p) - 1, int(len(p) * 0.99))]
    rows.append(dict(figure="single line, idle: child's write to the line on pbhost's stdout",
                     value=round(statistics.median(p), 2), unit="ms",
                     spread=f"{min(p):.2f}-{max(p):.2f}", n=len(p), note=f"p99 {p99:.2f} ms",
                     baseline=f"child straight into a pipe {statistics.median(d):.2f} ms",
                     vs=f"+{statistics.median(p) - statistics.median(d):.2f} ms" + (
                         f" (before: {statistics.median(latency['before']):.2f} ms)"
                         if "before" in latency else ""),
                     goal="<= 5 ms", ok=statistics.median(p) <= 5 and p99 <= 5))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 runs instead of 7")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--before", type=Path, metavar="DIR",
                    help="also measure the pbhost package in DIR (e.g. `git archive` of an older "
                         "commit), interleaved with this one")
    args = ap.parse_args()
    res = run(args.quick, args.runs, args.before)
    for row in res["rows"]:
        print(f"{row['figure']}\n    {row['value']:,} {row['unit']}  ({row['spread']})  "
              f"{row.get('baseline', '')}  -> {row.get('vs', '')}  goal {row.get('goal', '-')}: "
              f"{row.get('ok', '-')}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

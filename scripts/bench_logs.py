#!/usr/bin/env python3
"""Log stream benchmark: throughput, order, child slowdown, memory (issue 3).

Floods are `seq -f %059.0f 1 N`: 60-byte lines like `yes` output, but numbered, so the check
"every line present exactly once, in order" means something. Two ways to run them:
  - in-process: LogStream alone on an event loop in this process, output to a file;
  - serve: a real `python -m pbhost serve` (PocketBase alongside) whose sidecars flood.
The serve figures are the ones that count. Each figure is the median of `runs` runs, with
the min and max beside it.

    python scripts/bench_logs.py [--quick] [--json FILE]
    from bench_logs import run; run(quick=True) -> {"name": value, ...}
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pbhost.logs.stream import LogStream  # noqa: E402

PY = sys.executable
WRITER = """
import sys, time
n = int(sys.argv[1]); w = sys.stdout.write
t0 = time.perf_counter()
for i in range(n):
    w(f"request {i:09d} handled in 12.5 ms by worker 3 status=200 ok\\n")
sys.stdout.flush()
sys.stderr.write(f"{time.perf_counter() - t0:.6f}\\n")
"""


def flood_cmd(n: int) -> list[str]:
    return ["seq", "-f", "%059.0f", "1", str(n)]


def child_pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        import fcntl
        fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, 1 << 20)  # as spawn.py does
    except OSError:
        pass
    os.set_blocking(r, False)
    return r, w


async def _drive(out_fd: int, argvs: dict[str, list[str]], close_timeout: float = 30.0,
                 setup: Callable[[LogStream], object] | None = None,
                 ) -> tuple[float, float, LogStream]:
    """Run the children through a LogStream: (seconds to the last EOF, to output flushed).
    `setup` gets the started stream first (to subscribe to it, say)."""
    stream = LogStream(out_fd)
    stream.start(asyncio.get_running_loop())
    if setup is not None:
        setup(stream)
    t0 = time.perf_counter()
    procs = []
    for pid, argv in argvs.items():
        r, w = child_pipe()
        procs.append(subprocess.Popen(argv, stdout=w, stdin=subprocess.DEVNULL))
        os.close(w)
        stream.attach(pid, "stdout", r)
    while stream.open_pipes:
        await asyncio.sleep(0.002)
    at_eof = time.perf_counter() - t0
    stream.close(close_timeout)
    elapsed = time.perf_counter() - t0
    for proc in procs:
        proc.wait()
    return at_eof, elapsed, stream


def verify(path: Path, ids: list[str], n: int) -> None:
    """Each id's lines are exactly 1..n, in order, each whole (streamed, not all in memory)."""
    prefixes = {f"[{i}][STDOUT] ".encode(): i for i in ids}
    nxt = dict.fromkeys(ids, 1)
    with open(path, "rb") as f:
        for line in f:
            head, _, num = line.rpartition(b"] ")
            pid = prefixes.get(head + b"] ")
            if pid is None:
                continue  # PocketBase's and pbhost's own lines
            if len(num) != 60 or int(num) != nxt[pid]:
                raise AssertionError(f"{pid}: expected line {nxt[pid]}, got {line[:80]!r}")
            nxt[pid] += 1
    missing = {i: n + 1 - v for i, v in nxt.items() if v != n + 1}
    if missing:
        raise AssertionError(f"lines missing at the end: {missing}")


def inproc_flood(tmp: Path, children: int, n: int) -> float:
    out = tmp / "flood.out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    ids = [f"f{i}" for i in range(children)]
    _, elapsed, _ = asyncio.run(_drive(fd, {i: flood_cmd(n) for i in ids}))
    os.close(fd)
    verify(out, ids, n)
    out.unlink()
    return children * n / elapsed


def writer_time(n: int, stdout: int) -> float:
    proc = subprocess.run([PY, "-c", WRITER, str(n)], stdout=stdout, stderr=subprocess.PIPE,
                          check=True)
    return float(proc.stderr)


def writer_into_cat(tmp: Path, n: int) -> float:
    """The writer's own time with its stdout piped into `cat > file` (the reference)."""
    with open(tmp / "cat.out", "wb") as f:
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=f)
        assert cat.stdin is not None
        took = writer_time(n, cat.stdin.fileno())
        cat.stdin.close()
        cat.wait()
    return took


def writer_ratio(tmp: Path, n: int) -> float:
    """Child's own write time into `cat > file` / with LogStream in between (>= 0.9 wanted)."""
    direct = writer_into_cat(tmp, n)
    fd = os.open(tmp / "ls.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    res = tmp / "t"
    code = WRITER.replace("sys.stderr.write(", f"open({str(res)!r}, 'w').write(")
    asyncio.run(_drive(fd, {"py": [PY, "-c", code, str(n)]}))
    os.close(fd)
    return direct / float(res.read_text())


def inproc_stalled(n: int) -> dict[str, float]:
    """Output is a pipe nobody reads: the child's run time and what pbhost dropped."""
    r, w = os.pipe()
    at_eof, _, stream = asyncio.run(_drive(w, {"f": flood_cmd(n)}, close_timeout=0.1))
    os.close(r)
    os.close(w)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"stalled_child_lines_per_s": n / at_eof, "stalled_dropped": stream.dropped_total,
            "stalled_peak_rss_mib": rss}


# -- through a real pbhost serve ---------------------------------------------------------------

def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_project(tmp: Path, ids: list[str], n: int) -> Path:
    proj = Path(tempfile.mkdtemp(dir=tmp))
    script = (f"date +%s.%N > t0.$PBHOST_PROCESS_ID; seq -f %059.0f 1 {n}; "
              "date +%s.%N > t1.$PBHOST_PROCESS_ID; exec sleep 3600")
    (proj / "pb_processes.json").write_text(json.dumps(
        [{"id": i, "command": "sh", "args": ["-c", script]} for i in ids]))
    return proj


def _serve(proj: Path, stdout: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NO_COLOR", None)
    return subprocess.Popen([PY, "-m", "pbhost", "serve", "--http", f"127.0.0.1:{free_port()}"],
                            cwd=proj, stdout=stdout, stderr=subprocess.STDOUT, env=env)


def serve_flood(tmp: Path, children: int, n: int) -> dict[str, float]:
    """pbhost serve with `children` flooding sidecars, stdout to a file: lines/s from the
    first sidecar start to the last line in the file, and pbhost's peak RSS."""
    ids = [f"f{i}" for i in range(children)]
    proj = _serve_project(tmp, ids, n)
    out = proj / "out.log"
    with open(out, "wb") as f:
        proc = _serve(proj, f.fileno())
    try:
        lasts = {f"[{i}][STDOUT] {n:059d}\n".encode() for i in ids}
        peak, t_end = _watch_until(out, lasts, proc.pid, 300)
        t0 = min(float((proj / f"t0.{i}").read_text()) for i in ids)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    verify(out, ids, n)
    shutil.rmtree(proj, ignore_errors=True)
    return {"lines_per_s": children * n / (t_end - t0), "peak_rss_mib": peak / 1024}


def serve_writer_ratio(tmp: Path, n: int) -> float:
    """The Python writer as a sidecar of pbhost serve vs. into `cat > file`, same run."""
    proj = Path(tempfile.mkdtemp(dir=tmp))
    (proj / "w.py").write_text(WRITER.replace("sys.stderr.write(", "open('took', 'w').write("))
    (proj / "pb_processes.json").write_text(json.dumps(
        [{"id": "py", "command": PY, "args": ["-c", "import runpy, time; "
          "runpy.run_path('w.py', run_name='__main__'); time.sleep(3600)", str(n)]}]))
    direct = writer_into_cat(tmp, n)
    with open(proj / "out.log", "wb") as f:
        proc = _serve(proj, f.fileno())
    try:
        took = proj / "took"
        deadline = time.monotonic() + 300
        while not (took.exists() and took.read_text()):
            assert time.monotonic() < deadline, "the writer sidecar never finished"
            time.sleep(0.01)
        through = float(took.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    shutil.rmtree(proj, ignore_errors=True)
    return direct / through


def serve_stalled(tmp: Path, n: int) -> dict[str, float]:
    """pbhost serve whose stdout is a pipe nobody reads: the sidecar's own lines/s (from its
    start to its end) and pbhost's peak RSS meanwhile."""
    proj = _serve_project(tmp, ["f"], n)
    r, w = os.pipe()
    proc = _serve(proj, w)
    os.close(w)
    peak, deadline = 0, time.monotonic() + 300
    try:
        while not (proj / "t1.f").exists() or not (proj / "t1.f").read_text():
            peak = max(peak, _rss_kib(proc.pid))
            assert time.monotonic() < deadline, "the flooding sidecar never finished"
            time.sleep(0.01)
        took = float((proj / "t1.f").read_text()) - float((proj / "t0.f").read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        os.close(r)  # pbhost's last writes get EPIPE instead of waiting for us
        proc.wait(30)
    shutil.rmtree(proj, ignore_errors=True)
    return {"serve_stalled_child_lines_per_s": n / took,
            "serve_stalled_peak_rss_mib": peak / 1024}


def _watch_until(path: Path, needles: set[bytes], pid: int, timeout: float) -> tuple[int, float]:
    """Poll the output file for every needle; return (peak RSS KiB of pid, wall time found)."""
    deadline = time.monotonic() + timeout
    pos, peak, left = 0, 0, set(needles)
    while left:
        peak = max(peak, _rss_kib(pid))
        with open(path, "rb") as f:
            f.seek(max(0, pos - 200))
            data = f.read()
        pos += len(data) - min(pos, 200)
        left = {x for x in left if x not in data}
        if not left:
            return peak, time.time()
        if time.monotonic() > deadline:
            raise AssertionError(f"pbhost output never showed {left}")
        time.sleep(0.01)
    return peak, time.time()


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


# -- figures -------------------------------------------------------------------------------------

def _median(fn: Callable[[], float], runs: int) -> tuple[float, float, float]:
    vals = [fn() for _ in range(runs)]
    return statistics.median(vals), min(vals), max(vals)


def run(quick: bool = False) -> dict[str, float]:
    """All figures as a flat dict (the lead's scripts/bench.py merges it)."""
    n = 300_000 if quick else 2_000_000
    runs = 1 if quick else 3
    res: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for k in (1, 4):
            m, lo, hi = _median(functools.partial(inproc_flood, tmp, k, n), runs)
            res.update({f"inproc_{k}child_lines_per_s": m, f"inproc_{k}child_min": lo,
                        f"inproc_{k}child_max": hi})
        m, lo, hi = _median(lambda: writer_ratio(tmp, n), runs)
        res.update({"py_writer_speed_ratio": m, "py_writer_ratio_min": lo,
                    "py_writer_ratio_max": hi})
        res["inproc_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        res.update(inproc_stalled(n))
        for k in (1, 4):
            figs = [serve_flood(tmp, k, n) for _ in range(runs)]
            rates = [f["lines_per_s"] for f in figs]
            res.update({f"serve_{k}child_lines_per_s": statistics.median(rates),
                        f"serve_{k}child_min": min(rates), f"serve_{k}child_max": max(rates),
                        f"serve_{k}child_peak_rss_mib": max(f["peak_rss_mib"] for f in figs)})
        res.update(serve_stalled(tmp, 4 * n))
        m, lo, hi = _median(lambda: serve_writer_ratio(tmp, n), runs)
        res.update({"serve_py_writer_ratio": m, "serve_py_writer_ratio_min": lo,
                    "serve_py_writer_ratio_max": hi})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="300k lines, one run each")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    res = run(args.quick)
    for key, val in res.items():
        print(f"{key:34s} {val:>14,.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Cost curves (issue 17): how pbhost's costs grow with what it runs.

1. N = 1, 10, 50, 100 sidecars (`sh -c 'echo ready; exec sleep 3600'`: light, so the curve is
   pbhost's, not the interpreters'): PocketBase healthy -> all spawned, -> all first lines;
   SIGTERM -> every group gone; idle CPU over 30 s (10 s with --quick); pbhost's RSS;
   GET /api/pm/list p50/p99.
2. Dev mode watching 1,000 / 10,000 / 100,000 files (100 a folder): the Watcher's start-up
   (timed in this process), and through `pbhost serve`: RSS, idle CPU, inotify watches used,
   edit -> the restarted sidecar's first line (500 ms debounce included).
3. 1 / 10 / 50 SSE followers (`GET /api/pm/{id}/logs?follow=1`) while a child floods:
   the child's lines/s (relative to no follower) and the followers' lag (a line's arrival in
   pbhost's stdout file -> at the slowest follower).
Each curve is shown with its growth per step: "linear or better" means the cost of 100 is at
most 10x the cost of 10 (plus the fixed part). With matplotlib importable, `--plot FILE`
(scripts/bench.py: docs/performance-scale.png) draws the curves.

    python scripts/bench_scale.py [--quick] [--json FILE] [--plot FILE] [--only PART ...]
    BENCH_PBHOST_SOURCE=DIR ...   the same with the pbhost package in DIR (an older commit's)
    from bench_scale import run; run(quick=True) -> {"rows": [...], "curves": {...}}
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchkit import (  # noqa: E402
    PY,
    Output,
    Proc,
    api_call,
    bench_env,
    cpu_seconds,
    free_port,
    group_gone,
    health_ok,
    launch,
    memory_kib,
    pbhost_command,
    pocketbase_binary,
    until,
)

SIDECARS = (1, 10, 50, 100)
FILES = (1_000, 10_000, 100_000)
FOLLOWERS = (0, 1, 10, 50)
FILES_PER_DIR = 100
IDLE = ["sh", "-c", "echo ready; exec sleep 3600"]
# Ignores SIGTERM (inherited across exec): stopped by SIGKILL after its stopTimeout.
STUBBORN = ["sh", "-c", "trap '' TERM; echo ready; exec sleep 3600"]
STUBBORN_TIMEOUT = 1.0
DEV_SIDECAR = "import os, time\nprint(f'pid={os.getpid()}', flush=True)\ntime.sleep(3600)\n"
# Numbered 60-byte lines, every 1,000th with the child's CLOCK_MONOTONIC, so lag can be read.
FLOOD = """\
import os, sys, time
n = int(sys.argv[1])
out = open(1, "wb", buffering=65536, closefd=False)
pad = b"x" * 50
t0 = time.monotonic()
for i in range(1, n + 1):
    out.write(b"%09d %.6f\\n" % (i, time.monotonic()) if i % 1000 == 0 else
              b"%09d %s\\n" % (i, pad))
out.flush()
open("flood.took", "w").write(str(time.monotonic() - t0))
time.sleep(3600)
"""


class Serve:
    """`pbhost serve` on a project folder, its stdout read here with arrival times."""

    def __init__(self, folder: Path, data: Path, stdout_file: Path | None = None) -> None:
        self.port = free_port()
        self.data = data
        argv = [*pbhost_command(folder), "serve", "--http", f"127.0.0.1:{self.port}",
                "--dir", str(data)]
        env = bench_env()
        if os.environ.get("BENCH_PBHOST_SOURCE"):  # another checkout's pbhost/, to compare
            env["PYTHONPATH"] = os.environ["BENCH_PBHOST_SOURCE"] + os.pathsep + env["PYTHONPATH"]
        if stdout_file is None:
            self.proc: Proc = launch(argv, folder, env)
        else:
            with open(stdout_file, "wb") as f:
                popen = subprocess.Popen(argv, cwd=folder, env=env, stdout=f,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.proc = Proc(popen, None)
        self._token: str | None = None

    @property
    def out(self) -> Output:
        assert self.proc.out is not None
        return self.proc.out

    def token(self) -> str:
        if self._token is None:
            control = self.data / ".pbhost" / "control.json"
            self._token = until(lambda: json.loads(control.read_text())["token"],
                                "control.json")
        return self._token

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port + 1, timeout=30)

    def get(self, conn: http.client.HTTPConnection, path: str) -> Any:
        return api_call(conn, "GET", path, self.token())

    def stop(self) -> None:
        self.proc.stop()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _data_dir(root: Path, name: str) -> Path:
    """A prepared PocketBase data dir (a superuser: no installer); copied, it starts fast."""
    base = root / "pb_data_base"
    if not base.exists():
        subprocess.run([pocketbase_binary(), "superuser", "upsert", "bench@example.com",
                        "benchpass123", "--dir", str(base)], check=True, capture_output=True)
    data = root / name / "pb_data"
    shutil.copytree(base, data)
    return data


def _idle_cpu(serve: Serve, window: float) -> float:
    """pbhost's CPU seconds over `window`, its stdout drained meanwhile; scaled to 30 s."""
    time.sleep(1.0)  # start-up work (config, the health task, the first sweep) settles
    cpu0 = cpu_seconds(serve.proc.pid)
    end = time.monotonic() + window
    while time.monotonic() < end:
        if serve.proc.out is not None:
            serve.proc.out.pump(0.05)
        else:
            time.sleep(0.05)
    return (cpu_seconds(serve.proc.pid) - cpu0) * 30.0 / window


def _shutdown(serve: Serve, pgids: list[int]) -> float:
    """SIGTERM -> pbhost gone and every group gone, in ms."""
    t0 = time.monotonic()
    serve.proc.popen.send_signal(signal.SIGTERM)
    serve.proc.stop(signal_it=False)
    while not all(group_gone(g) for g in pgids):
        if time.monotonic() - t0 > 30:
            raise TimeoutError("process groups left after pbhost's exit")
        time.sleep(0.001)
    return (time.monotonic() - t0) * 1000


# -- 1. N sidecars ------------------------------------------------------------------------------

def _healthy(serve: Serve, timeout: float = 60) -> float:
    """When PocketBase first answers /api/health 200, probed from here every ~2 ms (pbhost's
    own probe, every 20 ms, is part of what is measured after it); stdout is stamped
    meanwhile."""
    deadline = time.monotonic() + timeout
    while not health_ok(serve.port):
        if time.monotonic() > deadline:
            raise TimeoutError("PocketBase never answered /api/health")
        serve.out.pump(0.002)
    return time.monotonic()


def sidecars_curve(root: Path, n: int, window: float, requests: int) -> dict[str, float]:
    folder = root / f"n{n}"
    data = _data_dir(root, f"n{n}")
    (folder / "pb_processes.json").write_text(json.dumps(
        [{"id": f"s{i}", "command": IDLE[0], "args": IDLE[1:]} for i in range(n)]))
    serve = Serve(folder, data)
    try:
        healthy = _healthy(serve)
        pgids = [int(serve.out.wait(r"\[pbhost\] (?:pocketbase|s\d+): started \(pid (\d+)",
                                    since=0 if i == 0 else None, timeout=60)[1].group(1))
                 for i in range(n + 1)]
        spawned = serve.out.lines[[i for i, (_, t) in enumerate(serve.out.lines)
                                   if ": started (pid" in t][-1]][0]
        ready = max(serve.out.wait(rf"^\[s{i}\]\[STDOUT\] ready", since=0, timeout=60)[0]
                    for i in range(n))
        conn = serve.connect()
        until(lambda: len(serve.get(conn, "/api/pm/list")) == n + 1, "the list", 30)
        times = []
        for _ in range(requests):
            t0 = time.perf_counter()
            serve.get(conn, "/api/pm/list")
            times.append((time.perf_counter() - t0) * 1000)
        conn.close()
        cpu = _idle_cpu(serve, window)
        rss = memory_kib(serve.proc.pid)["VmRSS"] / 1024
        stop_ms = _shutdown(serve, pgids)
    finally:
        serve.stop()
    shutil.rmtree(folder, ignore_errors=True)
    return {"spawned_ms": (spawned - healthy) * 1000, "ready_ms": (ready - healthy) * 1000,
            "stop_ms": stop_ms, "idle_cpu_s": cpu, "rss_mib": rss,
            "list_p50_ms": statistics.median(times), "list_p99_ms": _pct(times, 0.99),
            "stubborn_stop_ms": stubborn_stop(root, n)}


def stubborn_stop(root: Path, n: int) -> float:
    """N sidecars that ignore SIGTERM (stopTimeout 1 s): SIGTERM to pbhost -> all gone, less
    the stop timeout: what pbhost adds to the SIGKILL round."""
    folder = root / f"k{n}"
    (folder / "pb_processes.json").parent.mkdir(parents=True, exist_ok=True)
    data = _data_dir(root, f"k{n}")
    (folder / "pb_processes.json").write_text(json.dumps(
        [{"id": f"s{i}", "command": STUBBORN[0], "args": STUBBORN[1:],
          "stopTimeout": f"{STUBBORN_TIMEOUT:g}s"} for i in range(n)]))
    serve = Serve(folder, data)
    try:
        pgids = [int(serve.out.wait(r"\[pbhost\] (?:pocketbase|s\d+): started \(pid (\d+)",
                                    since=0 if i == 0 else None, timeout=60)[1].group(1))
                 for i in range(n + 1)]
        for i in range(n):
            serve.out.wait(rf"^\[s{i}\]\[STDOUT\] ready", since=0, timeout=60)
        stop_ms = _shutdown(serve, pgids) - STUBBORN_TIMEOUT * 1000
    finally:
        serve.stop()
    shutil.rmtree(folder, ignore_errors=True)
    return stop_ms


# -- 2. dev mode over big trees -----------------------------------------------------------------

def make_tree(top: Path, files: int) -> None:
    for i in range(files):
        sub = top / "lib" / f"pkg{i // FILES_PER_DIR:04d}"
        if i % FILES_PER_DIR == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"mod{i % FILES_PER_DIR:03d}.py").write_text(f"X = {i}\n")


WATCHER_START = """\
import asyncio, logging, sys, time
from pathlib import Path
from pbhost.dev.watcher import Watcher
async def main():
    loop = asyncio.get_running_loop()
    w = Watcher([Path(sys.argv[1])], on_change=lambda p: None, log=logging.getLogger("b"))
    t0 = time.perf_counter()
    w.start(loop)
    took = time.perf_counter() - t0
    print(f"{took * 1000:.3f} {w.backend}")
    w.close()
asyncio.run(main())
"""


def watcher_start_ms(agent: Path) -> tuple[float, str]:
    """The Watcher's start (walk the tree, add the watches) in a fresh process: what it blocks
    pbhost's loop for, once, after PocketBase's spawn."""
    out = subprocess.run([PY, "-c", WATCHER_START, str(agent)], capture_output=True, text=True,
                         env=bench_env(), check=True).stdout.split()
    return float(out[0]), out[1]


def inotify_watches(pid: int) -> int:
    """inotify watches held by `pid` (one `inotify wd:` line per watch in its fdinfo)."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                total += sum(1 for line in f if line.startswith("inotify wd:"))
        except OSError:
            continue
    return total


def dev_curve(root: Path, files: int, window: float, edits: int) -> dict[str, float]:
    folder = root / f"dev{files}"
    agent = folder / "agent"
    agent.mkdir(parents=True)
    (agent / "main.py").write_text(DEV_SIDECAR)
    make_tree(agent, files)
    start_ms = statistics.median(watcher_start_ms(agent)[0] for _ in range(3))
    (folder / "pb_processes.json").write_text(json.dumps(
        [{"id": "dev", "script": "./agent/main.py", "cwd": "./agent", "devMode": True,
          "interpreter": PY}]))
    serve = Serve(folder, _data_dir(root, f"dev{files}"))
    try:
        _, m = serve.out.wait(r"^\[dev\]\[STDOUT\] pid=(\d+)", timeout=60)
        pid = m.group(1)
        watches = until(lambda: inotify_watches(serve.proc.pid), "inotify watches", 30)
        cpu = _idle_cpu(serve, window)
        rss = memory_kib(serve.proc.pid)["VmRSS"] / 1024
        lat = []
        for i in range(edits):
            t0 = time.monotonic()
            (agent / "main.py").write_text(DEV_SIDECAR + f"# edit {i}\n")
            seen, m = serve.out.wait(rf"^\[dev\]\[STDOUT\] pid=(?!{pid}\b)(\d+)", timeout=30)
            pid = m.group(1)
            lat.append((seen - t0) * 1000)
    finally:
        serve.stop()
    shutil.rmtree(folder, ignore_errors=True)
    return {"watcher_start_ms": start_ms, "rss_mib": rss, "idle_cpu_s": cpu,
            "edit_to_restart_ms": statistics.median(lat), "watches": watches}


# -- 3. SSE followers during a flood ------------------------------------------------------------

# One SSE client in a process of its own, doing per chunk only C-level work (count, regex),
# so that 50 of them do not starve pbhost of CPU: it counts the lines it gets and the ones
# pbhost says it dropped, and notes when each stamped line arrived. Prints a JSON summary.
FOLLOWER = r"""
import json, re, socket, sys, time
port, token, lines = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
sock = socket.create_connection(("127.0.0.1", port), timeout=120)
sock.sendall(f"GET /api/pm/flood/logs?follow=1&lines=0 HTTP/1.1\r\nHost: x\r\n"
             f"Authorization: Bearer {token}\r\n\r\n".encode())
print("connected", flush=True)
stamp, drop = re.compile(rb'"text":"(\d{9}) \d'), re.compile(rb'"dropped":(\d+)')
received = dropped = 0
seen, tail = {}, b""
while received + dropped < lines:
    data = sock.recv(1 << 20)
    if not data:
        break
    now = time.monotonic()
    buf = tail + data
    cut = buf.rfind(b"\n\n") + 2
    whole, tail = buf[:cut], buf[cut:]
    received += whole.count(b'"text":"')
    dropped += sum(int(n) for n in drop.findall(whole))
    for num in stamp.findall(whole):
        seen[int(num)] = now
print(json.dumps({"received": received, "dropped": dropped, "seen": seen}))
"""


class Follower:
    def __init__(self, port: int, token: str, lines: int) -> None:
        self.proc = subprocess.Popen([PY, "-c", FOLLOWER, str(port), token, str(lines)],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"connected":
            raise RuntimeError("an SSE follower could not connect")
        self.received = self.dropped = 0
        self.seen: dict[int, float] = {}

    def result(self, timeout: float) -> None:
        out, _ = self.proc.communicate(timeout=timeout)
        res = json.loads(out)
        self.received, self.dropped = res["received"], res["dropped"]
        self.seen = {int(k): v for k, v in res["seen"].items()}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def followers_curve(root: Path, k: int, lines: int) -> dict[str, float]:
    folder = root / f"sse{k}"
    folder.mkdir()
    (folder / "flood.py").write_text(FLOOD)
    (folder / "pb_processes.json").write_text(json.dumps(
        [{"id": "flood", "command": PY, "args": ["flood.py", str(lines)], "autostart": False}]))
    out_file = folder / "out.log"
    serve = Serve(folder, _data_dir(root, f"sse{k}"), stdout_file=out_file)
    subs: list[Follower] = []
    try:
        conn = serve.connect()
        until(lambda: serve.get(conn, "/api/pm/list"), "the control API", 30)
        subs = [Follower(serve.port + 1, serve.token(), lines) for _ in range(k)]
        time.sleep(0.5)  # each follower's subscription is set up once its request is read
        conn.request("POST", "/api/pm/flood/start",
                     headers={"Authorization": f"Bearer {serve.token()}"})
        conn.getresponse().read()
        took = float(until(lambda: (folder / "flood.took").read_text(), "the flood", 120))
        for sub in subs:
            sub.result(120)
        conn.close()
    finally:
        serve.stop()
        for s in subs:
            s.close()
    stamps = _stamps(out_file)
    lags = [sub.seen[i] - t for sub in subs for i, t in stamps.items() if i in sub.seen]
    shutil.rmtree(folder, ignore_errors=True)
    return {"lines_per_s": lines / took,
            # lines/s x followers, less what they lost: flat = a linear cost per follower
            "deliveries_per_s": lines / took * max(k, 1) * (1 - max(
                (sub.dropped for sub in subs), default=0) / lines),
            "lag_p50_ms": statistics.median(lags) * 1000 if lags else 0.0,
            "lag_max_ms": max(lags) * 1000 if lags else 0.0,
            "dropped_pct": 100.0 * max((s.dropped for s in subs), default=0) / lines}


def _stamps(out_file: Path) -> dict[int, float]:
    """Line number -> the child's stamp, for the stamped lines in pbhost's output."""
    stamps = {}
    with open(out_file, "rb") as f:
        for line in f:
            if line.startswith(b"[flood][STDOUT] ") and line.count(b" ") == 2:
                _, num, ts = line.split()
                if not ts[:1].isdigit():
                    continue
                stamps[int(num)] = float(ts)
    return stamps


# -- the table ----------------------------------------------------------------------------------

def growth(xs: tuple[int, ...], ys: list[float]) -> str:
    """How a cost grows from the first step to the last, against linear in x."""
    if ys[0] <= 0 or xs[0] <= 0:
        return ""
    return f"x{ys[-1] / ys[0]:.1f} for x{xs[-1] / xs[0]:g}"


PARTS = ("sidecars", "dev", "sse")


def run(quick: bool = False, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    window = 10.0 if quick else 30.0
    curves: dict[str, dict[int, dict[str, float]]] = {p: {} for p in parts}
    with tempfile.TemporaryDirectory(prefix="pbhost-bench-scale-") as tmp:
        root = Path(tmp)
        for n in SIDECARS if "sidecars" in parts else ():
            curves["sidecars"][n] = sidecars_curve(root, n, window, 200 if quick else 1000)
        for files in FILES if "dev" in parts else ():
            curves["dev"][files] = dev_curve(root, files, window, 3 if quick else 5)
        for k in FOLLOWERS if "sse" in parts else ():
            curves["sse"][k] = followers_curve(root, k, 300_000 if quick else 1_000_000)
    limit = _read_int("/proc/sys/fs/inotify/max_user_watches")
    table = rows(curves)
    for row in table:
        if "inotify watches" in row["figure"] and limit:
            row["baseline"] = f"fs.inotify.max_user_watches {limit:,} (one watch per folder)"
    return {"rows": table, "curves": curves, "inotify_max_user_watches": limit}


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text())
    except (OSError, ValueError):
        return None


def rows(curves: dict[str, dict[int, dict[str, float]]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def curve(label: str, key: str, unit: str, part: str, fmt: str,
              goal: str = "", ok: Callable[[dict[int, float]], bool] | None = None) -> None:
        if not curves.get(part):
            return
        pts = {x: v[key] for x, v in curves[part].items()}
        xs = tuple(pts)
        last = pts[xs[-1]]
        out.append(dict(figure=label, value=round(last, 4), unit=unit,
                        note="; ".join(f"{x:,}: {format(v, fmt)}" for x, v in pts.items()),
                        vs=growth(xs, list(pts.values())), goal=goal,
                        ok=ok(pts) if ok else None))

    curve("N sidecars: PocketBase healthy -> all spawned (at 100)", "spawned_ms", "ms",
          "sidecars", ".1f")
    curve("N sidecars: PocketBase healthy -> all first lines (at 100)", "ready_ms", "ms",
          "sidecars", ".1f", "< 2000 ms at 100", lambda p: p[100] < 2000)
    curve("N sidecars: SIGTERM -> every group gone (at 100)", "stop_ms", "ms", "sidecars",
          ".1f", "< 1000 ms at 100 (they exit on SIGTERM)", lambda p: p[100] < 1000)
    curve("N sidecars ignoring SIGTERM (stopTimeout 1 s): SIGTERM -> all gone, beyond the 1 s "
          "(at 100)", "stubborn_stop_ms", "ms", "sidecars", ".1f", "< 1000 ms at 100",
          lambda p: p[100] < 1000)
    curve("N sidecars: idle CPU per 30 s (at 100)", "idle_cpu_s", "s", "sidecars", ".4f",
          "<= 0.01 s at 100", lambda p: p[100] <= 0.01)
    curve("N sidecars: pbhost RSS (at 100)", "rss_mib", "MiB", "sidecars", ".1f")
    curve("N sidecars: API list p50 (at 100)", "list_p50_ms", "ms", "sidecars", ".2f")
    curve("N sidecars: API list p99 (at 100)", "list_p99_ms", "ms", "sidecars", ".2f")
    curve("dev mode: watcher start-up (at 100,000 files)", "watcher_start_ms", "ms", "dev",
          ".1f")
    curve("dev mode: inotify watches (at 100,000 files)", "watches", "", "dev", ".0f")
    curve("dev mode: pbhost RSS (at 100,000 files)", "rss_mib", "MiB", "dev", ".1f")
    curve("dev mode: idle CPU per 30 s (at 100,000 files)", "idle_cpu_s", "s", "dev", ".4f")
    curve("dev mode: edit -> restarted sidecar's first line (at 100,000 files)",
          "edit_to_restart_ms", "ms", "dev", ".1f", "<= 700 ms", lambda p: max(p.values()) <= 700)
    curve("SSE followers: flooding child's lines/s (at 50)", "lines_per_s", "lines/s", "sse",
          ",.0f")
    curve("SSE followers: lines delivered per second, all followers (at 50)",
          "deliveries_per_s", "lines/s", "sse", ",.0f")
    curve("SSE followers: lag p50, child's write -> a follower (at 50)", "lag_p50_ms",
          "ms", "sse", ".1f")
    curve("SSE followers: lag max (at 50)", "lag_max_ms", "ms", "sse", ".1f")
    curve("SSE followers: lines the slowest follower lost, % (at 50)", "dropped_pct", "%",
          "sse", ".1f")
    return out


def plot(curves: dict[str, dict[int, dict[str, float]]], path: Path) -> bool:
    """Draw the curves into `path` (PNG); False when matplotlib is not importable."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [("sidecars", "spawned_ms", "healthy -> all spawned (ms)"),
              ("sidecars", "ready_ms", "healthy -> all first lines (ms)"),
              ("sidecars", "stop_ms", "SIGTERM -> all gone (ms)"),
              ("sidecars", "stubborn_stop_ms", "... ignoring SIGTERM, beyond 1 s (ms)"),
              ("sidecars", "list_p99_ms", "API list p99 (ms)"),
              ("dev", "watcher_start_ms", "watcher start-up (ms)"),
              ("dev", "edit_to_restart_ms", "edit -> restart (ms)"),
              ("sse", "deliveries_per_s", "lines delivered/s, all followers"),
              ("sse", "lag_p50_ms", "follower lag p50 (ms)")]
    xlabel = {"sidecars": "sidecars", "dev": "watched files", "sse": "SSE followers"}
    fig, axes = plt.subplots(3, 3, figsize=(12, 9))
    for ax, (part, key, title) in zip(axes.flat, panels, strict=False):
        xs = [x for x in curves.get(part, {}) if x or key != "deliveries_per_s"]
        ax.plot(xs, [curves[part][x][key] for x in xs], marker="o")
        if part == "dev":
            ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel[part])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.suptitle("pbhost cost curves (scripts/bench_scale.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 s idle windows, fewer requests")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--plot", metavar="FILE", type=Path, help="draw the curves (matplotlib)")
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    args = ap.parse_args()
    res = run(args.quick, tuple(args.only))
    for row in res["rows"]:
        print(f"{row['figure']:<72} {row['value']:>12,} {row['unit']:<7} {row['vs']:<16} "
              f"{row['note']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    if args.plot and not plot(res["curves"], args.plot):
        print("matplotlib is not importable: no plot", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

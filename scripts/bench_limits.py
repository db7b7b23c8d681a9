"""What clients holding the control API cost the clients that use it, through a real
`pbhost serve` with real PocketBase (issue 12).

1. GET /api/pm/list (10 processes) p50/p99 over one keep-alive connection while 500 idle
   keep-alive connections are held (each made one request first), against the same with none,
   in the same pbhost run. Goal: p99 with 500 idle <= 2x p99 with none (+1 ms).
2. Under a 1024-fd limit (prlimit), GET /api/pm/list on a new connection while 2,000
   connection attempts are held open (silent, unauthenticated, endless heads), against the same
   before the flood. Goal: every answer <= 1 s (the issue's `pbhost ls` within 1 s).
3. PocketBase auth-refresh requests caused by 1,000 requests with random tokens (half random
   strings, half forged JWTs), counted in PocketBase's own request log. Goal: < 50.

    python scripts/bench_limits.py [--quick] [--json FILE]

`run(quick) -> dict` is what scripts/bench.py calls.
"""

from __future__ import annotations

import http.client
import os
import resource
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_api import Pbhost, _stats, bench_list  # noqa: E402
from benchreport import helper_main  # noqa: E402
from support import forged_jwt, pb_requests  # noqa: E402

IDLE_HELD = 500
FLOOD = 2000


def _hold_idle(port: int, token: str, n: int) -> list[socket.socket]:
    """`n` keep-alive connections that each made one request and then sit idle."""
    request = (f"GET /api/pm/list HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
               "\r\n").encode()
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(request)
        got = b""
        while not got.rstrip().endswith(b"]"):
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("an idle connection was closed before it idled")
            got += chunk
        socks.append(sock)
    return socks


def _open_connections(host: Pbhost) -> int:
    host.conn.request("GET", "/api/pm/metrics",
                      headers={"Authorization": f"Bearer {host.token}"})
    text = host.conn.getresponse().read().decode()
    return int(next(line.split()[1] for line in text.splitlines()
                    if line.startswith("pbhost_api_connections ")))


def bench_idle(quick: bool) -> dict[str, Any]:
    n = 500 if quick else 2000
    with tempfile.TemporaryDirectory(prefix="pbhost-bench-limits-") as tmp:
        host = Pbhost(Path(tmp))
        try:
            none = bench_list(host, n)
            socks = _hold_idle(host.port + 1, host.token, IDLE_HELD)
            try:
                held = bench_list(host, n)
                still = _open_connections(host)
            finally:
                for sock in socks:
                    sock.close()
        finally:
            host.close()
    return {"none": none, "held": held, "still_open": still}


def _new_connection_list(port: int, token: str, timeout: float) -> float:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/api/pm/list", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"list: {resp.status}")
    finally:
        conn.close()
    return (time.perf_counter() - t0) * 1000


def _flood(port: int, n: int) -> list[socket.socket]:
    socks = []
    for i in range(n):
        sock = socket.socket()
        sock.settimeout(5)
        socks.append(sock)
        try:
            sock.connect(("127.0.0.1", port))
            if i % 3 == 1:
                sock.send(b"GET /api/pm/list HTTP/1.1\r\nHost: x\r\n\r\n")
            elif i % 3 == 2:
                sock.send(b"GET /api/pm/list HTTP/1.1\r\nHo")
        except OSError:
            continue
    return socks


def bench_flood(quick: bool) -> dict[str, Any] | None:
    if shutil.which("prlimit") is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < FLOOD + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, FLOOD + 500), hard))
    probes = 10 if quick else 30
    with tempfile.TemporaryDirectory(prefix="pbhost-bench-flood-") as tmp:
        host = Pbhost(Path(tmp), wrapper=("prlimit", "--nofile=1024:1024"))
        port = host.port + 1
        fds = f"/proc/{host.proc.pid}/fd"  # prlimit execs pbhost: the same pid
        peak = [0]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.002):
                try:
                    peak[0] = max(peak[0], len(os.listdir(fds)))
                except OSError:
                    return
        try:
            before = [_new_connection_list(port, host.token, 5) for _ in range(probes)]
            base = len(os.listdir(fds))
            sampler = threading.Thread(target=sample)
            sampler.start()
            t0 = time.perf_counter()
            socks = _flood(port, FLOOD)
            flood_s = time.perf_counter() - t0
            try:
                during = [_new_connection_list(port, host.token, 5) for _ in range(probes)]
            finally:
                sampling.set()
                sampler.join()
                for sock in socks:
                    sock.close()
        finally:
            host.close()
    return {"before": _stats(before), "during": _stats(during), "flood_s": round(flood_s, 2),
            "fds_base": base, "fds_peak": peak[0]}


def bench_auth() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pbhost-bench-auth-") as tmp:
        host = Pbhost(Path(tmp))
        url = f"http://127.0.0.1:{host.port + 1}/api/pm/list"
        try:
            tokens = [secrets.token_urlsafe(32) for _ in range(500)] + \
                     [forged_jwt() for _ in range(500)]

            def attempt(token: str) -> int:
                req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        return int(resp.status)
                except urllib.error.HTTPError as err:
                    return err.code
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(attempt, tokens))
            took = time.perf_counter() - t0
            marker = f"/api/health?marker={secrets.token_hex(8)}"
            urllib.request.urlopen(f"http://127.0.0.1:{host.port}{marker}", timeout=5).close()
            data_dir = Path(tmp) / "pb_data"
            deadline = time.monotonic() + 30
            while not pb_requests(data_dir, marker) and time.monotonic() < deadline:
                time.sleep(0.2)
            asked = pb_requests(data_dir, "/api/collections/_superusers/auth-refresh")
        finally:
            host.close()
    return {"asked": asked, "seconds": round(took, 1),
            "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))}}


def run(quick: bool) -> dict[str, Any]:
    idle = bench_idle(quick)
    flood = bench_flood(quick)
    auth = bench_auth()
    none, held = idle["none"], idle["held"]
    ratio = held["p99_ms"] / none["p99_ms"] if none["p99_ms"] else 0.0
    rows: list[dict[str, Any]] = [
        dict(figure="API list p99, no idle connections held", value=none["p99_ms"],
             spread=f"p50 {none['median_ms']:g}", n=none["n"]),
        dict(figure=f"API list p99 while {IDLE_HELD} idle connections are held",
             value=held["p99_ms"], spread=f"p50 {held['median_ms']:g}", n=held["n"],
             baseline=f"none held: {none['p99_ms']:g} ms", vs=f"{ratio:.2f}x",
             goal="<= 2x (+1 ms)", ok=held["p99_ms"] <= 2 * none["p99_ms"] + 1,
             note=f"({idle['still_open']} connections open at the end)"),
    ]
    if flood is not None:
        before, during = flood["before"], flood["during"]
        rows.append(dict(
            figure=f"API list on a new connection during a {FLOOD:,}-connection flood, "
                   "1024-fd limit", value=during["median_ms"],
            spread=f"{during['min_ms']:g}-{during['max_ms']:g}", n=during["n"],
            baseline=f"before the flood: {before['median_ms']:g} ms",
            vs=f"+{during['median_ms'] - before['median_ms']:.1f} ms", goal="max <= 1000 ms",
            ok=during["max_ms"] <= 1000,
            note=f"(flood sent in {flood['flood_s']:g} s; pbhost's fds {flood['fds_base']} "
                 f"before, peak {flood['fds_peak']} of 1024)"))
    rows.append(dict(figure="PocketBase auth-refresh requests for 1,000 random tokens",
                     value=auth["asked"], unit="", n=1, goal="< 50", ok=auth["asked"] < 50,
                     baseline="before issue 12: 998",
                     note=f"(answers {auth['statuses']}, {auth['seconds']:g} s)"))
    return {"rows": rows, "idle": idle, "flood": flood, "auth": auth}


def main() -> int:
    return helper_main(__doc__ or "", run, "control API limits")


if __name__ == "__main__":
    sys.exit(main())

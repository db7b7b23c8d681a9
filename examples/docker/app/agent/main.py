"""A sample sidecar: says hello, checks PocketBase's health every 30 s, stops on SIGTERM."""

import os
import signal
import sys
import time
import urllib.request

PB_URL = os.environ.get("PB_URL", "http://127.0.0.1:8090")
stop = False


def on_term(signum, frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
print(f"agent up (pid {os.getpid()}, python {sys.executable}), PocketBase at {PB_URL}", flush=True)
while not stop:
    try:
        with urllib.request.urlopen(PB_URL + "/api/health", timeout=5) as resp:
            print(f"PocketBase health: {resp.status}", flush=True)
    except OSError as exc:
        print(f"PocketBase unreachable: {exc}", file=sys.stderr, flush=True)
    for _ in range(300):
        if stop:
            break
        time.sleep(0.1)
print("agent stopping", flush=True)

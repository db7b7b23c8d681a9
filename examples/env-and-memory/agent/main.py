"""A sample agent with workers, as uvicorn or gunicorn would run it: the leader forks 2 workers
that each keep a cache which only grows (the leak maxMemory is there for). It says whether it
got its key, never the key itself."""

import os
import signal
import sys
import threading
import time

KEY = os.environ.get("OPENAI_API_KEY", "")
print(f"agent up: OPENAI_API_KEY {'set' if KEY else 'missing'} ({len(KEY)} characters), "
      f"model {os.environ.get('MODEL')}, port {os.environ.get('PORT')}", flush=True)


def worker(n: int) -> None:
    cache = []
    while True:
        cache.append(b"x" * (1 << 20))  # 1 MiB a second, never freed
        if len(cache) % 60 == 0:
            print(f"worker {n}: cache {len(cache)} MiB", flush=True)
        time.sleep(1)


for n in range(2):
    if os.fork() == 0:
        worker(n)
        sys.exit(0)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the workers go with the group
threading.Event().wait()

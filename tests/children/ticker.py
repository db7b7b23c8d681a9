"""A sidecar whose output never stops: says its pid, then `tick N` every 100 ms."""

import os
import time

print(f"pid={os.getpid()}", flush=True)
n = 0
while True:
    n += 1
    print(f"tick {n}", flush=True)
    time.sleep(0.1)

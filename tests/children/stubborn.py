"""Ignores the signals named on its command line (SIGTERM when none), says its pid, and waits:
stopping it takes the whole stopTimeout and a SIGKILL."""

import os
import signal
import sys

for name in sys.argv[1:] or ["SIGTERM"]:
    signal.signal(signal.Signals[name], signal.SIG_IGN)
print(f"pid={os.getpid()}", flush=True)
while True:
    signal.pause()

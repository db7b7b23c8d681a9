"""Says its pid and waits until a signal ends it."""

import os
import threading

print(f"pid={os.getpid()}", flush=True)
threading.Event().wait()

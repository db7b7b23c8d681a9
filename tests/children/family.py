"""Starts a child in its process group (a grandchild of pbhost), says both pids
(`pid=N kid=M`), and waits until a signal ends it."""

import os
import subprocess
import sys
import threading

kid = subprocess.Popen([sys.executable, "-c", "import threading; threading.Event().wait()"])
print(f"pid={os.getpid()} kid={kid.pid}", flush=True)
threading.Event().wait()

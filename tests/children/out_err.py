"""Prints its first argument on stdout and its second on stderr, then waits until a signal
ends it."""

import sys
import threading

print(sys.argv[1], flush=True)
print(sys.argv[2], file=sys.stderr, flush=True)
threading.Event().wait()

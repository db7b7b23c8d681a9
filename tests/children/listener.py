"""Listens on $PORT (accepting and closing), says its pid and port, then `tick N` every
100 ms; SIGUSR1 closes the listening socket while it goes on running (a hung server)."""

import os
import signal
import socket
import threading
import time

port = int(os.environ["PORT"])
sock = socket.create_server(("127.0.0.1", port))
signal.signal(signal.SIGUSR1, lambda *_: sock.close())


def serve() -> None:
    try:
        while True:
            sock.accept()[0].close()
    except OSError:
        pass  # closed on SIGUSR1


threading.Thread(target=serve, daemon=True).start()
print(f"pid={os.getpid()} port={port}", flush=True)
n = 0
while True:
    n += 1
    print(f"tick {n}", flush=True)
    time.sleep(0.1)

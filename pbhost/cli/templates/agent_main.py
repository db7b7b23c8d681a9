"""A sample AI sidecar for pbhost: a tiny HTTP service next to PocketBase (stdlib only).

pbhost starts it with PB_URL, PB_PORT, PB_DATA_DIR, DB_DSN and PBHOST_PROCESS_ID in its
environment. `GET /` answers JSON that includes what PocketBase's `/api/health` said, which is
the first thing a real agent needs: to know where PocketBase is and that it answers.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

NAME = os.environ.get("PBHOST_PROCESS_ID", "ai-agent")
PB_URL = os.environ.get("PB_URL", "http://127.0.0.1:8090").rstrip("/")
HOST = "127.0.0.1"
PORT = int(os.environ.get("PORT", "8001"))


def pocketbase_health() -> dict[str, Any]:
    """What GET {PB_URL}/api/health returned, or why it could not be asked."""
    url = PB_URL + "/api/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return {"url": url, "status": resp.status, "body": _body(resp.read())}
    except urllib.error.HTTPError as err:
        return {"url": url, "status": err.code, "body": _body(err.read())}
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return {"url": url, "status": None, "error": f"PocketBase is not reachable: {reason}"}


def _body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        if self.path != "/":
            self._send(404, {"error": "not found", "path": self.path})
            return
        self._send(200, {"agent": NAME, "pid": os.getpid(), "pocketbase": pocketbase_health()})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # One short line per request on stdout; http.server's default goes to stderr, which
        # pbhost shows as errors.
        print(f"{self.command} {self.path} -> {code}", flush=True)


def _stop(signum: int, frame: object) -> None:
    # SystemExit unwinds serve_forever(); the `finally` below closes the socket.
    raise SystemExit(0)


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    try:
        server = HTTPServer((HOST, PORT), Handler)
    except OSError as err:  # most often the port is taken: one clear line, not a traceback
        sys.exit(f"{NAME}: cannot listen on {HOST}:{PORT}: {err.strerror or err}; "
                 'choose another "PORT" in the "env" of pb_processes.json')
    print(f"{NAME} listening on http://{HOST}:{PORT} (PocketBase at {PB_URL})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print(f"{NAME} stopped", flush=True)


if __name__ == "__main__":
    main()

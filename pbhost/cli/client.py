"""The client side of the control API, for `pbhost ls|start|stop|restart|logs`.

Stdlib only (http.client), no asyncio: a client command should start in a blink. The running
pbhost is found through `<data dir>/.pbhost/control.json`, or PBHOST_API_URL + PBHOST_API_TOKEN.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import quote, urlsplit

from pbhost.control.controlfile import pid_running, read_control_file
from pbhost.errors import PbhostError
from pbhost.statedir import control_path

TIMEOUT = 30.0  # seconds; a restart waits for the old group to stop (stopTimeout)


class ClientError(PbhostError):
    """The running pbhost could not be found, reached, or it refused the request."""


@dataclass(frozen=True)
class Endpoint:
    url: str     # http://host:port or unix:/path
    token: str


def find_endpoint(data_dir: str | None, environ: Mapping[str, str], cwd: Path) -> Endpoint:
    """PBHOST_API_URL + PBHOST_API_TOKEN if set, else the control.json of the data dir."""
    url = environ.get("PBHOST_API_URL")
    if url:
        token = environ.get("PBHOST_API_TOKEN")
        if not token:
            raise ClientError("PBHOST_API_URL is set but PBHOST_API_TOKEN is not; set both, or "
                              "neither to use control.json")
        return Endpoint(url, token)
    shown = data_dir or "./pb_data"
    path = control_path((cwd / (data_dir or "pb_data")).resolve())
    try:
        info = read_control_file(path)
    except FileNotFoundError:
        from pbhost.orphans.leftovers import running_owner
        owner = running_owner(path.parents[1])
        if owner is not None:  # `pbhost --api off serve`: running, but nothing to talk to
            raise ClientError(f"the pbhost running for {shown} (pid {owner}) has no control API "
                              "(started with --api off?)") from None
        rel = path.relative_to(path.parents[1])
        raise ClientError(f"no pbhost is running for {shown} (no {rel}); start one with "
                          "`pbhost serve`, or point at its data dir with --dir") from None
    except PermissionError:
        raise ClientError(f"cannot read {path}: permission denied (run as the user running "
                          "pbhost)") from None
    except (OSError, ValueError) as exc:
        raise ClientError(f"{path} is not a pbhost control file ({exc})") from None
    if not pid_running(info.pid):
        raise ClientError(f"the pbhost that served {shown} (pid {info.pid}) is no longer running "
                          f"(stale {path}); start one with `pbhost serve`")
    return Endpoint(info.url, info.token)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class ApiClient:
    def __init__(self, endpoint: Endpoint, timeout: float = TIMEOUT) -> None:
        self.endpoint = endpoint
        self.timeout = timeout

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        url = self.endpoint.url
        if url.startswith("unix:"):
            return _UnixConnection(url[len("unix:"):], self.timeout)
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ClientError(f"cannot use control API URL {url!r}: expected http://HOST:PORT "
                              "or unix:PATH")
        return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)

    def _open(self, method: str, path: str,
              timeout: float | None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connect(timeout)
        try:
            conn.request(method, path, headers={"Authorization": f"Bearer {self.endpoint.token}",
                                                "Accept": "application/json"})
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            reason = getattr(exc, "strerror", None) or exc.__class__.__name__
            raise ClientError(f"cannot reach pbhost's control API at {self.endpoint.url}: "
                              f"{reason}") from None

    def call(self, method: str, path: str) -> Any:
        """One request; the decoded JSON body, or ClientError with the server's message."""
        status, body = self.request(method, path)
        if status != 200:
            raise ClientError(_message(status, body))
        return body

    def request(self, method: str, path: str, timeout: float | None = None) -> tuple[int, Any]:
        """One request, whatever its answer: (status, the decoded JSON body)."""
        conn, resp = self._open(method, path, timeout or self.timeout)
        try:
            raw = resp.read()
        except OSError as exc:  # a timeout while the answer is being made
            raise ClientError(f"no answer from pbhost's control API at {self.endpoint.url}: "
                              f"{exc.strerror or exc.__class__.__name__}") from None
        finally:
            conn.close()
        return resp.status, _decode(raw)

    def error(self, status: int, body: Any) -> ClientError:
        """The ClientError for a refused request."""
        return ClientError(_message(status, body))

    def process_path(self, proc_id: str, action: str = "") -> str:
        return "/api/pm/" + quote(proc_id, safe="") + (f"/{action}" if action else "")

    def follow(self, path: str) -> Iterator[dict[str, Any]]:
        """Server-Sent Events from `path`: each `data:` payload, decoded, until the stream ends."""
        conn, resp = self._open("GET", path, None)  # no timeout: a quiet process is fine
        try:
            if resp.status != 200:
                raise ClientError(_message(resp.status, _decode(resp.read())))
            for raw in resp:
                line = raw.rstrip(b"\r\n")
                if line.startswith(b"data: "):
                    yield json.loads(line[len(b"data: "):])
        finally:
            conn.close()


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")


def _message(status: int, body: Any) -> str:
    text = body.get("message") if isinstance(body, dict) else body
    if status == 401:
        return f"the control API refused the token (401): {text}"
    return str(text or f"HTTP {status}")

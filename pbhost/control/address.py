"""Where the control API listens, and its token: needed before PocketBase is spawned.

PocketBase's environment names the API (its JS hook forwards /api/pm/* there), so this runs on
the fast start path and imports nothing heavy: no dataclasses, typing or secrets (~12 ms).
"""

from __future__ import annotations

import os
from pathlib import Path

from pbhost.errors import PbhostError

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ApiAddressError(PbhostError):
    """--api / PBHOST_API holds something that is not an address."""

    exit_code = 2


class ApiAddress:
    """Where the control API listens: a TCP host and port, or a unix socket path."""

    __slots__ = ("host", "port", "path")

    def __init__(self, host: str = "", port: int = 0, path: str = "") -> None:
        self.host = host
        self.port = port
        self.path = path    # set for a unix socket

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ApiAddress)
                and (self.host, self.port, self.path) == (other.host, other.port, other.path))

    def __hash__(self) -> int:
        return hash((self.host, self.port, self.path))

    def __repr__(self) -> str:
        return f"ApiAddress(host={self.host!r}, port={self.port!r}, path={self.path!r})"

    @property
    def url(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        return bool(self.path) or self.host in LOOPBACK or self.host.startswith("127.")


def parse_api_address(value: str | None, pb_port: int, cwd: Path) -> ApiAddress | None:
    """`HOST:PORT`, `unix:PATH`, `off` (None) or nothing (127.0.0.1:<PocketBase port + 1>)."""
    text = (value or "").strip()
    if not text:
        if pb_port + 1 > 65535:  # the user gave no --api: do not blame one
            raise ApiAddressError(f"PocketBase's port {pb_port} leaves no default port for the "
                                  "control API (PocketBase's port + 1): choose one with "
                                  "--api HOST:PORT, or --api off")
        return ApiAddress("127.0.0.1", pb_port + 1)
    if text.lower() == "off":
        return None
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path:
            raise ApiAddressError("--api unix:PATH needs a socket path, e.g. unix:/run/pbhost.sock")
        return ApiAddress(path=str((cwd / path).resolve()))
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text  # a bare port number
    host = host.strip("[]") or "127.0.0.1"  # an empty host stays on loopback, never all interfaces
    return ApiAddress(host, _port(port, text))


def _port(text: str, shown: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ApiAddressError(f"--api {shown!s}: expected HOST:PORT, unix:PATH or off "
                              "(e.g. 127.0.0.1:8091)")
    return int(text)


def new_token() -> str:
    return os.urandom(32).hex()  # 256 bits, like secrets.token_urlsafe(32)

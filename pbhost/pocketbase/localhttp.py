"""A tiny HTTP/1.0 client on the event loop for talking to the local PocketBase.

`request_status` reads only the status code: /api/health (is it up?) and auth-refresh (is this
token a superuser's?). `request` also sends a body and reads the answer's: the PocketBase hook's
probe and the log bridge. One request a connection (HTTP/1.0: the server closes after the
answer, so the body is whatever comes before EOF). Raw HTTP keeps client libraries out of
pbhost's start-up.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

MAX_ANSWER = 1 << 20  # bytes; pbhost only asks PocketBase small questions


def _head(host: str, method: str, path: str, headers: Sequence[tuple[str, str]],
          body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.0", f"Host: {host}"]
    if method != "GET" or body:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _status(line: bytes) -> int | None:
    code = line.split(b" ", 2)[1:2]
    return int(code[0]) if code and code[0].isdigit() else None


async def request_status(host: str, port: int, method: str, path: str,
                         headers: Sequence[tuple[str, str]] = (),
                         timeout: float = 1.0) -> int | None:
    """Send one bodiless request; the status code, or None if there was no answer in time."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        writer.write(_head(host, method, path, headers, b""))
        return _status(await asyncio.wait_for(reader.readline(), timeout))
    except (OSError, asyncio.TimeoutError, UnicodeEncodeError):
        return None
    finally:
        writer.close()


async def request(host: str, port: int, method: str, path: str,
                  headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                  timeout: float = 2.0) -> tuple[int, bytes] | None:
    """One request with a body; (status, answer body), or None without a whole answer in time."""
    try:
        return await asyncio.wait_for(_exchange(host, port, method, path, headers, body),
                                      timeout)
    except (OSError, asyncio.TimeoutError, UnicodeEncodeError, ValueError):
        return None


async def _exchange(host: str, port: int, method: str, path: str,
                    headers: Sequence[tuple[str, str]], body: bytes) -> tuple[int, bytes] | None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(_head(host, method, path, headers, body) + body)
        answer = b""
        while chunk := await reader.read(65536):
            answer += chunk
            if len(answer) > MAX_ANSWER:
                return None
        head, sep, rest = answer.partition(b"\r\n\r\n")
        status = _status(head.split(b"\r\n", 1)[0])
        return (status, rest) if sep and status is not None else None
    finally:
        writer.close()

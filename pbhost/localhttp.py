"""A tiny HTTP/1.0 client on the event loop for asking the local PocketBase yes/no questions.

Only the status code is read: /api/health (is it up?) and auth-refresh (is this token a
superuser's?). Raw HTTP keeps client libraries out of pbhost's start-up.
"""

from __future__ import annotations

import asyncio
from typing import Sequence


async def request_status(host: str, port: int, method: str, path: str,
                         headers: Sequence[tuple[str, str]] = (),
                         timeout: float = 1.0) -> int | None:
    """Send one bodiless request; the status code, or None if there was no answer in time."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        head = [f"{method} {path} HTTP/1.0", f"Host: {host}"]
        if method != "GET":
            head.append("Content-Length: 0")
        head += [f"{name}: {value}" for name, value in headers]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        status = await asyncio.wait_for(reader.readline(), timeout)
        code = status.split(b" ", 2)[1:2]
        return int(code[0]) if code and code[0].isdigit() else None
    except (OSError, asyncio.TimeoutError, UnicodeEncodeError):
        return None
    finally:
        writer.close()

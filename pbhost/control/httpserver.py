"""HTTP/1.1 on the event loop with h11: keep-alive, bounded requests, streamed responses.

h11 does the parsing and framing; this module only moves bytes between it and asyncio streams
and calls one handler per request. Imported only once the children are spawned.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Union
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

log = logging.getLogger("pbhost")

MAX_HEAD = 16 << 10        # request line + headers
MAX_BODY = 64 << 10        # the API takes no bodies; this only bounds what a client may send
IDLE_TIMEOUT = 75.0        # seconds a keep-alive connection may sit between requests
READ_SIZE = 64 << 10
REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
           404: b"Not Found", 405: b"Method Not Allowed", 409: b"Conflict",
           413: b"Payload Too Large", 429: b"Too Many Requests", 500: b"Internal Server Error",
           502: b"Bad Gateway", 503: b"Service Unavailable"}


@dataclass
class Request:
    method: str
    path: str                    # percent-decoded
    query: dict[str, str]
    headers: dict[str, str]      # lower-case names, latin-1 values
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Send = Callable[[bytes], Awaitable[None]]


@dataclass
class StreamResponse:
    """A response of unknown length (Server-Sent Events): `produce(send, gone)` writes chunks
    until it returns or `gone` (the client hung up) is set."""

    produce: Callable[[Send, asyncio.Event], Awaitable[None]]
    content_type: str = "text/event-stream"
    status: int = 200


Handler = Callable[[Request], Awaitable[Union[Response, StreamResponse]]]


class HttpServer:
    def __init__(self, handler: Handler, error: Callable[[int, str], Response]) -> None:
        self._handler = handler
        self._error = error   # builds an error response in the API's shape
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def listen_tcp(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._connection, host, port,
                                                  reuse_address=True)

    async def listen_unix(self, path: str) -> None:
        if os.path.exists(path):
            os.unlink(path)  # a socket left by a pbhost that was killed
        self._server = await asyncio.start_unix_server(self._connection, path)
        os.chmod(path, 0o600)

    async def close(self) -> None:
        """Stop accepting, end every connection (streams included) and wait for them."""
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            await self._serve(conn, reader, writer)
        except h11.RemoteProtocolError as exc:
            await self._refuse(conn, writer, exc.error_status_hint, f"Malformed request: {exc}.")
        except (ConnectionError, asyncio.TimeoutError, asyncio.CancelledError):
            pass
        except Exception:  # a bug must cost one connection, never the host
            log.exception("control API: unexpected error")
            await self._refuse(conn, writer, 500, "Something went wrong in pbhost.")
        finally:
            self._conns.discard(task)
            writer.close()

    async def _serve(self, conn: h11.Connection, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        while True:
            req = await self._read_request(conn, reader)
            if req is None:
                return
            if isinstance(req, Response):  # too big
                await self._send(conn, writer, req, head_only=False)
                return
            resp = await self._handler(req)
            if isinstance(resp, StreamResponse):
                await self._stream(conn, reader, writer, resp)
                return
            await self._send(conn, writer, resp, head_only=req.method == "HEAD")
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # the client asked to close, or h11 cannot reuse the connection
            conn.start_next_cycle()

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader,
                    timeout: float) -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
            conn.receive_data(data)

    async def _read_request(self, conn: h11.Connection,
                            reader: asyncio.StreamReader) -> Request | Response | None:
        event = await self._next(conn, reader, IDLE_TIMEOUT)
        if not isinstance(event, h11.Request):
            return None  # ConnectionClosed (or PAUSED after a protocol switch we never accept)
        body = bytearray()
        while True:
            part = await self._next(conn, reader, 10.0)
            if isinstance(part, h11.EndOfMessage):
                break
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > MAX_BODY:
                    return self._error(413, "The request body is too large.")
            else:
                return None
        url = urlsplit(event.target.decode("latin-1"))
        return Request(
            method=event.method.decode("latin-1"), path=unquote(url.path),
            query=dict(parse_qsl(url.query, keep_blank_values=True)),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers},
            body=bytes(body))

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, resp: Response,
                    head_only: bool) -> None:
        headers = [("content-type", resp.content_type), ("content-length", str(len(resp.body))),
                   ("cache-control", "no-store"), *resp.headers]
        out = conn.send(h11.Response(status_code=resp.status, headers=headers,
                                     reason=REASONS.get(resp.status, b"")))
        if not head_only:
            out += conn.send(h11.Data(data=resp.body))
        out += conn.send(h11.EndOfMessage())
        writer.write(out)
        await writer.drain()

    async def _refuse(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int,
                      message: str) -> None:
        """Answer a request we could not serve, if the protocol still allows an answer."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            await self._send(conn, writer, self._error(status, message), head_only=False)
        except (h11.LocalProtocolError, ConnectionError):
            pass

    async def _stream(self, conn: h11.Connection, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, resp: StreamResponse) -> None:
        headers = [("content-type", resp.content_type), ("cache-control", "no-store"),
                   ("x-accel-buffering", "no")]
        writer.write(conn.send(h11.Response(status_code=resp.status, headers=headers,
                                            reason=REASONS.get(resp.status, b""))))
        gone = asyncio.Event()
        watch = asyncio.get_running_loop().create_task(_watch_hangup(reader, gone))

        async def send(data: bytes) -> None:
            writer.write(conn.send(h11.Data(data=data)))
            await writer.drain()
        try:
            await resp.produce(send, gone)
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
        finally:
            watch.cancel()


async def _watch_hangup(reader: asyncio.StreamReader, gone: asyncio.Event) -> None:
    """Set `gone` when the client closes its side (read returns EOF); ignore what it sends."""
    try:
        while await reader.read(READ_SIZE):
            pass
    except ConnectionError:
        pass
    gone.set()

"""HTTP/1.1 on the event loop with h11: keep-alive, bounded requests, streamed responses, and
bounds on what clients can hold.

h11 does the parsing and framing; this module accepts connections itself, moves bytes between
h11 and asyncio streams and calls one handler per request. Imported only once the children
are spawned.

Nothing a client does may take pbhost's file descriptors or its loop from keep-alive:
- at most `Limits.max_connections` connections (an eighth of pbhost's fd limit, at most 1,024);
  a connection beyond that takes the slot of the longest-idle one (idle keep-alive first, then
  slow ones: a head or body arriving, an answer not being read), or, when every slot is busy
  answering, is refused at once with a 503;
- a request's head must arrive within `head_timeout` (slow-loris), its body within
  `body_timeout`, a client must take its answer within `write_timeout`;
- repeated 401s on one connection are answered ever more slowly, and it is closed after 10.
Accepting is done here (not by asyncio's server) so that a flood is cheap: what the kernel has
queued is taken in one go, and a connection shed before its task ever ran is closed there and
then, so a flood of 2,000 costs little more than the accepts and leaves the newest connections
(a real client's among them) to be served. Running out of fds pauses accepting instead of
spinning.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Union
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

log = logging.getLogger("pbhost")

MAX_HEAD = 16 << 10        # request line + headers
MAX_BODY = 64 << 10        # the API takes no bodies; this only bounds what a client may send
READ_SIZE = 64 << 10
LISTEN_BACKLOG = 4096      # a flood waits in the kernel, not in pbhost (capped by somaxconn)
ACCEPT_BATCH = 1024        # connections taken per wake-up (a flood: the newest survive)
ACCEPT_PAUSE = 0.5         # seconds not accepting after EMFILE (the socket stays readable)
SAY_EVERY = 60.0           # seconds; refusals and accept failures are logged at most this often
FAILURES_FREE = 3          # 401s on one connection answered at once; later ones are slowed
FAILURES_CLOSE = 10        # the 401 that closes the connection
REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
           404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
           409: b"Conflict", 413: b"Payload Too Large", 429: b"Too Many Requests",
           500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable"}
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True)
class Limits:
    """What one client may hold; docs/api.md ("Limits") explains each number."""

    max_connections: int = 1024
    head_timeout: float = 5.0     # from accept (first request) or its first byte (keep-alive)
    body_timeout: float = 10.0
    idle_timeout: float = 75.0    # a keep-alive connection between requests
    write_timeout: float = 30.0   # a client that does not read what it asked for


def limits_for(fd_limit: int) -> Limits:
    """Connections take at most an eighth of pbhost's fds (128 under a 1024 limit, 1,024 from
    8,192 up). In a flood, connections being shed still hold their fd for a loop turn or
    three (asyncio closes a transport's socket on a later turn), so the cap and those together
    stay under half the limit: spawns (pipes), inotify and PocketBase's checks keep the rest."""
    return Limits(max_connections=max(16, min(1024, fd_limit // 8)))


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

# Where a connection is, for shedding: IDLE (waiting for a request to begin) goes first, SLOW
# (a head or body arriving, an answer the client does not take, held back after repeated
# 401s) next, BUSY (being answered) never.
IDLE, SLOW, BUSY = "idle", "slow", "busy"


class _Client:
    __slots__ = ("sock", "unix", "task", "started", "transport", "phase", "failures", "shed")

    def __init__(self, sock: socket.socket, unix: bool) -> None:
        self.sock = sock
        self.unix = unix
        self.task: asyncio.Task[None] | None = None
        self.started = False    # its task has run: the socket may belong to a transport now
        self.transport: asyncio.WriteTransport | None = None
        self.phase = IDLE
        self.failures = 0       # 401 answers on this connection
        self.shed = False       # its slot was given to a newer connection


class _TimedOut(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpServer:
    def __init__(self, handler: Handler, error: Callable[[int, str], Response],
                 limits: Limits | None = None) -> None:
        self._handler = handler
        self._error = error   # builds an error response in the API's shape
        self.limits = limits or Limits()
        self._listeners: list[socket.socket] = []
        self._unix = False
        self._clients: set[_Client] = set()
        # Sheddable connections, oldest first (dicts keep insertion order).
        self._idle: dict[_Client, None] = {}
        self._slow: dict[_Client, None] = {}
        self._paused: asyncio.TimerHandle | None = None
        self._said: dict[str, float] = {}
        self.shed_total = 0       # connections closed to make room for newer ones
        self.refused_total = 0    # connections refused because every slot was busy
        full = error(503, f"pbhost's control API is at its limit of "
                          f"{self.limits.max_connections} connections, all busy; try again "
                          "in a moment.")
        self._full = _raw_response(full, [("retry-after", "1"), ("connection", "close")])
        self._late_head = f"The request head took over {self.limits.head_timeout:g}s."
        self._late_body = f"The request body took over {self.limits.body_timeout:g}s."

    @property
    def connections(self) -> int:
        return len(self._clients)

    # -- listening ------------------------------------------------------------------------
    async def listen_tcp(self, host: str, port: int) -> None:
        socks: list[socket.socket] = []
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE | socket.AI_NUMERICSERV)
        try:
            for family, kind, proto, _, addr in dict.fromkeys(infos):  # /etc/hosts may repeat
                sock = socket.socket(family, kind, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
        except OSError:
            for sock in socks:
                sock.close()
            raise
        self._serve_on(socks, unix=False)

    async def listen_unix(self, path: str) -> None:
        if os.path.exists(path):
            os.unlink(path)  # a socket left by a pbhost that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o600)
        except OSError:
            sock.close()
            raise
        self._serve_on([sock], unix=True)

    def _serve_on(self, socks: list[socket.socket], unix: bool) -> None:
        self._unix = unix
        for sock in socks:
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        self._listeners = socks
        self._accepting(True)

    def _accepting(self, on: bool) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            if on:
                loop.add_reader(sock.fileno(), self._accept, sock)
            else:
                loop.remove_reader(sock.fileno())

    async def close(self) -> None:
        """Stop accepting, end every connection (streams included) and wait for them."""
        if self._paused is not None:
            self._paused.cancel()
        else:
            self._accepting(False)
        for sock in self._listeners:
            sock.close()
        self._listeners = []
        tasks = [c.task for c in self._clients if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    # -- accepting ------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        fresh: list[_Client] = []
        try:
            for _ in range(ACCEPT_BATCH):
                try:
                    sock, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno in RESOURCE_ERRNOS:
                        self._pause_accepting(exc)
                        return
                    continue  # ECONNABORTED and the like: that client is gone, take the next
                client = self._admit(sock)
                if client is not None:
                    fresh.append(client)
        finally:
            # Tasks only for the connections the batch left standing: in a flood, those shed
            # by later ones in the same batch cost an accept and a close, nothing more.
            loop = asyncio.get_running_loop()
            for client in fresh:
                if not client.shed:
                    client.task = loop.create_task(self._connection(client))
                    # A task cancelled before it ran never reaches its `finally`: close the
                    # socket here too (twice is harmless: a transport shares this object).
                    client.task.add_done_callback(functools.partial(self._closed, client))

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of fds: the listening socket stays readable, so waiting is the only way not to
        spin. The connections wait in the kernel's queue meanwhile."""
        self._say("accept", "control API: cannot accept connections: %s; pausing %gs "
                  "(said at most once a minute)", exc.strerror or exc, ACCEPT_PAUSE)
        self._accepting(False)
        self._paused = asyncio.get_running_loop().call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self._listeners:
            self._accepting(True)

    def _admit(self, sock: socket.socket) -> _Client | None:
        if len(self._clients) >= self.limits.max_connections and not self._shed_one():
            self._refuse_now(sock)
            return None
        client = _Client(sock, self._unix)
        self._clients.add(client)
        self._idle[client] = None
        return client

    def _shed_one(self) -> bool:
        """Give the slot of the longest-idle connection (else the slowest head) to a new one."""
        victim = next(iter(self._idle), None) or next(iter(self._slow), None)
        if victim is None:
            return False
        self._forget(victim)
        victim.shed = True
        self.shed_total += 1
        if not victim.started:
            victim.sock.close()  # nothing else has it yet: its fd is free at once
        elif victim.transport is not None:
            victim.transport.abort()  # closes the socket on the next loop turn
        if victim.task is not None:
            victim.task.cancel()
        return True

    def _refuse_now(self, sock: socket.socket) -> None:
        self.refused_total += 1
        self._say("full", "control API: %d connections open, all busy: refusing new ones "
                  "(said at most once a minute)", len(self._clients))
        try:
            sock.setblocking(False)
            sock.send(self._full)
        except OSError:
            pass
        sock.close()

    def _say(self, what: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._said.get(what, -SAY_EVERY) >= SAY_EVERY:
            self._said[what] = now
            log.warning(msg, *args)

    def _phase(self, client: _Client, phase: str) -> None:
        if client.phase == phase or client not in self._clients:
            return
        self._idle.pop(client, None)
        self._slow.pop(client, None)
        client.phase = phase
        if phase == IDLE:
            self._idle[client] = None
        elif phase == SLOW:
            self._slow[client] = None

    def _forget(self, client: _Client) -> None:
        self._clients.discard(client)
        self._idle.pop(client, None)
        self._slow.pop(client, None)

    def _closed(self, client: _Client, _: object) -> None:
        self._forget(client)
        if client.transport is None:
            client.sock.close()

    # -- one connection -------------------------------------------------------------------
    async def _connection(self, client: _Client) -> None:
        client.started = True
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        writer: asyncio.StreamWriter | None = None
        try:
            if client.unix:
                reader, writer = await asyncio.open_unix_connection(sock=client.sock)
            else:
                reader, writer = await asyncio.open_connection(sock=client.sock)
            client.transport = writer.transport
            await self._serve(client, conn, reader, writer)
        except h11.RemoteProtocolError as exc:
            await self._refuse(conn, writer, exc.error_status_hint, f"Malformed request: {exc}.")
        except _TimedOut as exc:
            if conn.our_state is h11.IDLE and writer is not None:  # no request for h11 to answer
                writer.write(_raw_response(self._error(exc.status, exc.message),
                                           [("connection", "close")]))
            else:
                await self._refuse(conn, writer, exc.status, exc.message)
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
            pass  # the client went, or took too long to read; ConnectionError is an OSError
        except Exception:  # a bug must cost one connection, never the host
            log.exception("control API: unexpected error")
            await self._refuse(conn, writer, 500, "Something went wrong in pbhost.")
        finally:
            self._forget(client)
            if writer is not None:
                self._finish(client, writer)

    def _finish(self, client: _Client, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        if client.shed:
            transport.abort()
            return
        writer.close()
        if transport.get_write_buffer_size():  # a client that never reads cannot keep the fd
            asyncio.get_running_loop().call_later(self.limits.write_timeout, transport.abort)

    async def _serve(self, client: _Client, conn: h11.Connection, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        first = True
        while True:
            req = await self._read_request(client, conn, reader, first)
            first = False
            if req is None:
                return
            if isinstance(req, Response):  # too big
                await self._send(conn, writer, req, head_only=False)
                return
            resp = await self._handler(req)
            if isinstance(resp, StreamResponse):
                await self._stream(client, conn, reader, writer, resp)
                return
            if resp.status == 401:
                await self._after_auth_failure(client, resp)
            await self._send(conn, writer, resp, head_only=req.method == "HEAD", client=client)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # the client asked to close, or h11 cannot reuse the connection
            conn.start_next_cycle()

    async def _after_auth_failure(self, client: _Client, resp: Response) -> None:
        """Guessing tokens on one connection gets slower: the 4th 401 waits 0.1 s, doubling up
        to 2 s, and the 10th closes the connection. A client that sent one wrong token and
        then the right one never notices. While it waits the connection is sheddable."""
        client.failures += 1
        n = client.failures
        if n >= FAILURES_CLOSE:
            resp.headers.append(("connection", "close"))
        if n > FAILURES_FREE:
            self._phase(client, SLOW)
            await asyncio.sleep(min(2.0, 0.1 * 2 ** (n - FAILURES_FREE - 1)))
            self._phase(client, BUSY)

    async def _read(self, reader: asyncio.StreamReader, deadline: float,
                    late: str | None) -> bytes:
        """Some bytes before `deadline`; past it, a 408 (`late`: its message) or, for a
        connection that has sent nothing, a plain TimeoutError (closed without a word)."""
        left = deadline - asyncio.get_running_loop().time()
        try:
            if left <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(reader.read(READ_SIZE), left)
        except asyncio.TimeoutError:
            if late is not None:
                raise _TimedOut(408, late) from None
            raise

    async def _read_request(self, client: _Client, conn: h11.Connection,
                            reader: asyncio.StreamReader,
                            first: bool) -> Request | Response | None:
        loop = asyncio.get_running_loop()
        limits = self.limits
        # A new connection has head_timeout for its whole first head; a kept-alive one may
        # idle, but once a request begins its head has head_timeout too.
        deadline = loop.time() + (limits.head_timeout if first else limits.idle_timeout)
        self._phase(client, IDLE)
        begun: str | None = None
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                break
            data = await self._read(reader, deadline, begun)
            if data and begun is None:
                begun = self._late_head
                self._phase(client, SLOW)
                if not first:
                    deadline = loop.time() + limits.head_timeout
            conn.receive_data(data)
        if not isinstance(event, h11.Request):
            return None  # ConnectionClosed (or PAUSED after a protocol switch we never accept)
        # The body may trickle as a head may: the connection stays sheddable until the request
        # is whole (else a Content-Length and one byte a second would hold a slot, no token
        # needed).
        self._phase(client, SLOW)
        body = bytearray()
        deadline = loop.time() + limits.body_timeout
        while True:
            part = conn.next_event()
            if part is h11.NEED_DATA:
                conn.receive_data(await self._read(reader, deadline, self._late_body))
                continue
            if isinstance(part, h11.EndOfMessage):
                break
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > MAX_BODY:
                    return self._error(413, "The request body is too large.")
            else:
                return None
        self._phase(client, BUSY)
        url = urlsplit(event.target.decode("latin-1"))
        return Request(
            method=event.method.decode("latin-1"), path=unquote(url.path),
            query=dict(parse_qsl(url.query, keep_blank_values=True)),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers},
            body=bytes(body))

    async def _drain(self, writer: asyncio.StreamWriter, client: _Client | None) -> None:
        """Wait for the client to take what was written, at most write_timeout. Meanwhile the
        connection is sheddable: a client that asks and does not read (pipelined requests for
        the dashboard's files need no token) must not hold a slot for write_timeout."""
        transport = writer.transport
        low, _ = transport.get_write_buffer_limits()
        if transport.get_write_buffer_size() <= low:
            await writer.drain()  # not paused: returns at once, no timer needed
            return
        if client is not None:
            self._phase(client, SLOW)
        await asyncio.wait_for(writer.drain(), self.limits.write_timeout)
        if client is not None:
            self._phase(client, BUSY)

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, resp: Response,
                    head_only: bool, client: _Client | None = None) -> None:
        headers = [("content-type", resp.content_type), ("content-length", str(len(resp.body))),
                   ("cache-control", "no-store"), *resp.headers]
        out = conn.send(h11.Response(status_code=resp.status, headers=headers,
                                     reason=REASONS.get(resp.status, b"")))
        if not head_only:
            out += conn.send(h11.Data(data=resp.body))
        out += conn.send(h11.EndOfMessage())
        writer.write(out)
        await self._drain(writer, client)

    async def _refuse(self, conn: h11.Connection, writer: asyncio.StreamWriter | None,
                      status: int, message: str) -> None:
        """Answer a request we could not serve, if the protocol still allows an answer."""
        if writer is None or conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            await self._send(conn, writer, self._error(status, message), head_only=False)
        except (h11.LocalProtocolError, ConnectionError, asyncio.TimeoutError):
            pass

    async def _stream(self, client: _Client, conn: h11.Connection, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, resp: StreamResponse) -> None:
        headers = [("content-type", resp.content_type), ("cache-control", "no-store"),
                   ("x-accel-buffering", "no")]
        writer.write(conn.send(h11.Response(status_code=resp.status, headers=headers,
                                            reason=REASONS.get(resp.status, b""))))
        gone = asyncio.Event()
        watch = asyncio.get_running_loop().create_task(_watch_hangup(reader, gone))

        async def send(data: bytes) -> None:
            writer.write(conn.send(h11.Data(data=data)))
            await self._drain(writer, client)  # a follower that stops reading is dropped
        try:
            await resp.produce(send, gone)
            writer.write(conn.send(h11.EndOfMessage()))
            await self._drain(writer, client)
        finally:
            watch.cancel()


def _raw_response(resp: Response, extra: list[tuple[str, str]]) -> bytes:
    """A whole HTTP/1.1 response as bytes, for answering before h11 has a connection."""
    reason = REASONS.get(resp.status, b"").decode()
    headers = [("content-type", resp.content_type), ("content-length", str(len(resp.body))),
               *extra]
    head = f"HTTP/1.1 {resp.status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return (head + "\r\n").encode("latin-1") + resp.body


async def _watch_hangup(reader: asyncio.StreamReader, gone: asyncio.Event) -> None:
    """Set `gone` when the client closes its side (read returns EOF); ignore what it sends."""
    try:
        while await reader.read(READ_SIZE):
            pass
    except ConnectionError:
        pass
    gone.set()

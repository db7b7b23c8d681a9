"""The probe kinds that poll: HTTP, TCP and exec, each one coroutine that returns a `Result`.

Raw non-blocking sockets on the loop (`sock_connect`, `sock_recv`): one request per connection,
only the status line is read, no client library, no thread (hosts are IP literals, so nothing
is resolved). An exec probe is a child like any other: spawned in a session of its own through
the Runtime, its exit from the one reaper, its process group SIGKILLed by the stop routine if
it is cancelled at its timeout, and whatever it left in its group ended after it exits.
The timeout itself is the probe loop's (thresholds.py): these only need to be cancellation-safe.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING, Mapping

from pbhost.health.thresholds import Check, ProbeUnavailable, Result
from pbhost.process.ending import Group, alive, ending, start_ending
from pbhost.process.reaper import describe_status
from pbhost.process.runenv import OWN_VARIABLES
from pbhost.process.spawn import RESOURCE_ERRNOS, SpawnError

if TYPE_CHECKING:
    from pbhost.config.probekeys import ProbeSpec
    from pbhost.process.runtime import Runtime

MAX_HEAD = 4096      # bytes of an answer read, at most, to find its status line
TAIL = 300           # bytes of an exec probe's output kept for the failure message


def make_check(spec: ProbeSpec, runtime: Runtime, env: Mapping[str, str], cwd: str) -> Check:
    """The polled check of `spec`; an exec probe runs in the process's `cwd` with its `env`."""
    if spec.kind == "http":
        return lambda: http_check(spec.host, spec.port, spec.path, spec.status, spec.label)
    if spec.kind == "tcp":
        return lambda: tcp_check(spec.host, spec.port, spec.label)
    if spec.kind == "exec":
        # Not the process's NOTIFY_SOCKET: a check's messages must not count as the process's.
        probe_env = {k: v for k, v in env.items() if k not in OWN_VARIABLES}
        return lambda: exec_check(spec.argv, cwd, probe_env, runtime, spec.label)
    raise ValueError(f"{spec.kind} is not a polled probe")


def _socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    except OSError as exc:
        if exc.errno in RESOURCE_ERRNOS:
            raise ProbeUnavailable(f"no socket: {exc.strerror}") from None
        raise
    sock.setblocking(False)
    return sock


def _refused(label: str, exc: OSError) -> Result:
    if isinstance(exc, ConnectionRefusedError):
        return Result(False, f"{label}: connection refused")
    return Result(False, f"{label}: {exc.strerror or exc}")


async def tcp_check(host: str, port: int, label: str) -> Result:
    loop = asyncio.get_running_loop()
    sock = _socket(host)
    try:
        await loop.sock_connect(sock, (host, port))
    except OSError as exc:
        return _refused(label, exc)
    finally:
        sock.close()
    return Result(True, f"{label} open")


async def http_check(host: str, port: int, path: str, status: int | None, label: str) -> Result:
    """GET `path`; success is 2xx/3xx, or exactly `status` when given."""
    loop = asyncio.get_running_loop()
    shown = f"[{host}]" if ":" in host else host
    request = (f"GET {path} HTTP/1.1\r\nHost: {shown}:{port}\r\nUser-Agent: pbhost-probe\r\n"
               "Accept: */*\r\nConnection: close\r\n\r\n").encode("latin-1", "replace")
    sock = _socket(host)
    head = b""
    try:
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, request)
        while b"\r\n" not in head and len(head) < MAX_HEAD:
            chunk = await loop.sock_recv(sock, 1024)
            if not chunk:
                break
            head += chunk
    except OSError as exc:
        return _refused(label, exc)
    finally:
        sock.close()
    code = head.split(b" ", 2)[1:2]
    if not head.startswith(b"HTTP/") or not code or not code[0].isdigit():
        return Result(False, f"{label}: no HTTP answer" if not head else
                      f"{label}: not an HTTP answer")
    value = int(code[0])
    ok = value == status if status is not None else 200 <= value < 400
    return Result(ok, f"{label} -> {value}")


class _Tail:
    """The last bytes an exec probe printed (both pipes), for its failure message."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fds: tuple[int, ...]) -> None:
        self._loop = loop
        self._fds = set(fds)
        self.data = b""
        for fd in fds:
            loop.add_reader(fd, self._read, fd)

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(fd)
            return
        self.data = (self.data + chunk)[-TAIL:]

    def _close(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.discard(fd)
            self._loop.remove_reader(fd)
            os.close(fd)

    def close(self) -> None:
        for fd in list(self._fds):
            self._read(fd)  # what is already there
            self._close(fd)

    def last_line(self) -> str:
        lines = [ln.strip() for ln in self.data.decode("utf-8", "replace").splitlines()]
        text = next((ln for ln in reversed(lines) if ln), "")
        return text[:120]


async def exec_check(argv: tuple[str, ...], cwd: str, env: Mapping[str, str],
                     runtime: Runtime, label: str) -> Result:
    """Run `argv`; success is exit code 0. Cancelled (at the timeout): its group is killed."""
    loop = asyncio.get_running_loop()
    try:
        child = runtime.spawn(argv, env, cwd)
    except SpawnError as exc:
        if exc.transient:  # pbhost's want of fds or processes, not the process's fault
            raise ProbeUnavailable(exc.strerror or str(exc)) from None
        return Result(False, f"{label}: {exc.strerror}")
    exited: asyncio.Future[int] = loop.create_future()
    runtime.watch(child, lambda status: None if exited.done() else exited.set_result(status))
    tail = _Tail(loop, (child.out_fd, child.err_fd))
    status: int | None = None
    try:
        status = await exited
    finally:
        # At the timeout the leader is still there; after an exit, members it left may be.
        # A probe leaves nothing behind: SIGKILL to the group at once, from the stop routine.
        start_ending(ending(alive([Group(child.pgid, send=runtime.signal_group)]), 0.0))
        tail.close()
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return Result(True, f"{label}: exit 0")
    said = tail.last_line()
    return Result(False, f"{label}: {describe_status(status)}" + (f" ({said})" if said else ""))

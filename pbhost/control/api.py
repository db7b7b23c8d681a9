"""The control API: REST over the host's supervisors, JSON in PocketBase's error shape.

    GET  /api/pm/list             every process, PocketBase first
    GET  /api/pm/metrics          Prometheus text
    GET  /api/pm/logs             recent lines of all processes, merged by time (?lines, ?follow)
    GET  /api/pm/{id}             one process
    GET  /api/pm/{id}/logs        recent lines (?lines=N, default 100; ?follow=1: SSE)
    POST /api/pm/{id}/restart|stop|start

Every request is authenticated first (auth.py): without a valid token nothing, not even the
list of ids, is shown. The bodies are documented in docs/api.md; a PocketBase JS hook relays
them verbatim, so their shape is a contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

from pbhost.control.address import ApiAddress
from pbhost.control.auth import Authenticator
from pbhost.control.controlfile import ControlInfo, remove_control, write_control
from pbhost.control.follow import FollowHub
from pbhost.control.follow import iso as _iso
from pbhost.control.follow import record as _record
from pbhost.control.httpserver import HttpServer, Request, Response, Send, StreamResponse
from pbhost.control.stats import GroupStats, Usage
from pbhost.errors import UnknownProcess
from pbhost.process.state import HALTED, ProcessState
from pbhost.statedir import control_path

if TYPE_CHECKING:
    from pbhost.logs.stream import LogRecord
    from pbhost.process.hostview import HostView
    from pbhost.process.supervisor import Supervisor

log = logging.getLogger("pbhost")

PREFIX = "/api/pm/"
DEFAULT_LINES = 100
MAX_LINES = 10_000
SYSTEM_ID = "pbhost"       # the log stream's id for pbhost's own lines
ACTIONS = ("restart", "stop", "start")


def error(status: int, message: str) -> Response:
    return Response(status, _json({"status": status, "message": message, "data": {}}))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class ControlApi:
    def __init__(self, host: HostView, auth: Authenticator,
                 stats: GroupStats | None = None) -> None:
        self.host = host
        self.auth = auth
        self.stats = stats or GroupStats()
        self.hub = FollowHub(host.stream)  # every ?follow=1 client, one log subscription

    # -- entry point ----------------------------------------------------------------------
    async def handle(self, req: Request) -> Response | StreamResponse:
        verdict = await self.auth.check(req.headers.get("authorization"))
        if not verdict.ok:
            return error(verdict.status, verdict.message)
        if not req.path.startswith(PREFIX):
            return error(404, "The requested resource wasn't found.")
        parts = req.path[len(PREFIX):].split("/")
        try:
            return await self._route(req, parts)
        except UnknownProcess as exc:
            known = ", ".join(s.id for s in self.host.supervisors)
            return error(404, f"No process with id {exc.proc_id!r}. Known ids: {known}.")
        except ValueError as exc:
            return error(400, str(exc))

    async def _route(self, req: Request, parts: list[str]) -> Response | StreamResponse:
        get = req.method in ("GET", "HEAD")
        if len(parts) == 1 and parts[0] in ("list", "metrics", "logs"):
            if not get:
                return _not_allowed("GET")
            if parts[0] == "list":
                return Response(200, _json(self.processes()))
            if parts[0] == "metrics":
                return Response(200, self.metrics().encode(),
                                "text/plain; version=0.0.4; charset=utf-8")
            return self.logs(None, req.query)
        if len(parts) == 1 and parts[0]:
            sup = self.host.get(parts[0])
            return Response(200, _json(self.describe(sup))) if get else _not_allowed("GET")
        if len(parts) == 2 and parts[1] == "logs":
            self.host.get(parts[0])
            return self.logs(parts[0], req.query) if get else _not_allowed("GET")
        if len(parts) == 2 and parts[1] in ACTIONS:
            sup = self.host.get(parts[0])
            if req.method != "POST":
                return _not_allowed("POST")
            return await self.act(sup, parts[1])
        return error(404, "The requested resource wasn't found.")

    # -- reading --------------------------------------------------------------------------
    def processes(self) -> list[dict[str, Any]]:
        sups = self.host.supervisors
        usage = self.stats.usage(s.pid for s in sups if s.pid is not None)
        return [self.describe(s, usage) for s in sups]

    def describe(self, sup: Supervisor, usage: dict[int, Usage] | None = None) -> dict[str, Any]:
        pid = sup.pid
        if usage is None:
            usage = self.stats.usage([pid] if pid is not None else [])
        use = usage.get(pid, Usage()) if pid is not None else Usage()
        spec = self.host.specs.get(sup.id)
        return {
            "id": sup.id, "pid": pid, "status": str(sup.state),
            "startTime": _iso(sup.start_wall) if pid is not None else None,
            "uptime": round(sup.uptime, 3), "restartCount": sup.restart_count,
            "lastError": sup.last_error, "cpu": use.cpu, "memory": use.memory,
            "devMode": bool(spec.dev_mode) if spec is not None else False,
            "interpreter": sup.interpreter,
        }

    def metrics(self) -> str:
        procs = self.processes()
        out: list[str] = []

        def family(name: str, kind: str, help_text: str,
                   value: Callable[[dict[str, Any]], float]) -> None:
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}")
            out.extend(f'{name}{{id="{_label(p["id"])}"}} {_number(value(p))}' for p in procs)

        family("pbhost_process_up", "gauge", "1 while the process is running.",
               lambda p: 1 if p["status"] == ProcessState.RUNNING.value else 0)
        family("pbhost_process_restarts_total", "counter", "Restarts since pbhost started.",
               lambda p: p["restartCount"])
        family("pbhost_process_uptime_seconds", "gauge", "Seconds since the current run began.",
               lambda p: p["uptime"])
        family("pbhost_process_cpu_percent", "gauge",
               "CPU use of the process group, percent of one core.", lambda p: p["cpu"])
        family("pbhost_process_memory_bytes", "gauge",
               "Resident memory of the process group.", lambda p: p["memory"])
        out.append("# HELP pbhost_process_status Current state (1 for the state it is in).\n"
                   "# TYPE pbhost_process_status gauge")
        out.extend(f'pbhost_process_status{{id="{_label(p["id"])}",status="{p["status"]}"}} 1'
                   for p in procs)
        out.append("# HELP pbhost_log_lines_dropped_total Log lines pbhost dropped because its "
                   "output could not keep up.\n# TYPE pbhost_log_lines_dropped_total counter")
        out.append(f"pbhost_log_lines_dropped_total {self.host.stream.dropped_total}")
        return "\n".join(out) + "\n"

    def _log_ids(self, proc_id: str | None) -> list[str]:
        if proc_id is not None:
            return [proc_id]
        return [SYSTEM_ID, *(s.id for s in self.host.supervisors)]

    def _tail(self, ids: list[str], n: int) -> list[LogRecord]:
        rings = []
        for proc_id in ids:
            try:
                rings.append(self.host.stream.tail(proc_id, n))
            except (KeyError, UnknownProcess):
                continue  # e.g. no ring for pbhost's own lines in this log stream
        merged = list(heapq.merge(*rings, key=lambda r: r.ts)) if len(rings) > 1 else \
            (rings[0] if rings else [])
        return merged[-n:] if n else []

    def logs(self, proc_id: str | None, query: dict[str, str]) -> Response | StreamResponse:
        n = _lines(query.get("lines"))
        ids = self._log_ids(proc_id)
        backlog = self._tail(ids, n)
        if query.get("follow", "0").lower() in ("", "0", "false", "no"):
            return Response(200, _json([_record(r) for r in backlog]))
        return StreamResponse(self._follow(set(ids), backlog))

    def _follow(self, ids: set[str], backlog: list[LogRecord]
                ) -> Callable[[Send, asyncio.Event], Awaitable[None]]:
        async def produce(send: Send, gone: asyncio.Event) -> None:
            await self.hub.follow(ids, backlog, send, gone)
        return produce

    # -- acting ---------------------------------------------------------------------------
    async def act(self, sup: Supervisor, action: str) -> Response:
        if self.host.shutting_down:
            return error(503, "pbhost is shutting down.")
        if action == "stop":
            await sup.stop()
            return Response(200, _json(self.describe(sup)))
        pid = await (sup.restart("requested through the API") if action == "restart"
                     else sup.start())
        if pid is None:
            if sup.state in HALTED:
                return error(409, f"{sup.id} was stopped while it was restarting; it stays "
                                  "stopped.")
            return error(500, f"{sup.id} could not be started: {sup.last_error or 'see the log'}.")
        return Response(200, _json(self.describe(sup)))


def _not_allowed(allow: str) -> Response:
    resp = error(405, f"Method not allowed here; use {allow}.")
    resp.headers.append(("allow", allow if allow != "GET" else "GET, HEAD"))
    return resp


def _lines(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LINES
    if not value.isdigit() or int(value) > MAX_LINES:
        raise ValueError(f"lines must be a whole number from 0 to {MAX_LINES}.")
    return int(value)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(round(value, 3))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


# -- lifecycle ---------------------------------------------------------------------------
class ApiHandle:
    """A listening control API and its control.json; close() undoes both."""

    def __init__(self, server: HttpServer, addr: ApiAddress, control: Path | None) -> None:
        self.server = server
        self.addr = addr
        self.control = control

    async def close(self) -> None:
        await self.server.close()
        if self.control is not None:
            remove_control(self.control, os.getpid())
        if self.addr.path:
            with contextlib.suppress(OSError):
                os.unlink(self.addr.path)


async def start_api(host: HostView, addr: ApiAddress, token: str,
                    environ: Mapping[str, str]) -> ApiHandle | None:
    """Listen on `addr` and write control.json; None (logged) if the address cannot be used."""
    pb = host.pb
    auth = Authenticator([token, environ.get("PBHOST_API_TOKEN", "")], pb.local_host,
                         pb.port)
    server = HttpServer(ControlApi(host, auth).handle, error)
    try:
        if addr.path:
            await server.listen_unix(addr.path)
        else:
            await server.listen_tcp(addr.host, addr.port)
    except OSError as exc:
        log.error("control API: cannot listen on %s: %s. PocketBase and the sidecars keep "
                  "running without it; choose another address with --api HOST:PORT "
                  "(or PBHOST_API), or --api off", addr.url, exc.strerror or exc)
        return None
    if not addr.loopback:
        log.warning("control API listens on %s, reachable from other machines: anyone with a "
                    "token can stop your processes. Prefer loopback behind a TLS proxy.",
                    addr.url)
    control: Path | None = None
    try:
        control = write_control(pb.data_dir, ControlInfo(addr.url, token, os.getpid()))
    except OSError as exc:
        log.error("control API: cannot write %s: %s; `pbhost ls` and friends will not find "
                  "this pbhost (PBHOST_API_URL and PBHOST_API_TOKEN still work)",
                  control_path(pb.data_dir), exc.strerror or exc)
    log.info("control API at %s", addr.url)
    return ApiHandle(server, addr, control)

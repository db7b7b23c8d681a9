"""The control API: REST over the host's supervisors, JSON in PocketBase's error shape.

    GET  /api/pm/list             every process, PocketBase first
    GET  /api/pm/metrics          Prometheus text
    GET  /api/pm/logs             recent lines of all processes, merged by time (?lines, ?follow)
    GET  /api/pm/{id}             one process
    GET  /api/pm/{id}/logs        recent lines (?lines=N, default 100; ?after=SEQ; ?follow=1: SSE)
    POST /api/pm/{id}/restart|stop|start
    POST /api/pm/reload           read pb_processes.json again, apply the difference
    GET  /livez  /readyz          for orchestrators' probes: no token
    GET  /, /app.js, ...          the web dashboard (webui.py), no token needed
    POST /api/collections/_superusers/auth-with-password   relayed to PocketBase (signin.py)

Every other request is authenticated first (auth.py): without a valid token nothing, not
even the list of ids, is shown. /livez and /readyz say no more than alive, ready, and the ids
of what is not ready. The bodies are documented in docs/api.md; a PocketBase JS hook relays
them verbatim, so their shape is a contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import os
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

from pbhost.control.address import ApiAddress
from pbhost.control.auth import Authenticator
from pbhost.control.controlfile import ControlInfo, encode_control, remove_control
from pbhost.control.follow import FollowHub
from pbhost.control.follow import iso as _iso
from pbhost.control.follow import record as _record
from pbhost.control.httpserver import (
    HttpServer,
    Request,
    Response,
    Send,
    StreamResponse,
    limits_for,
)
from pbhost.control.signin import PATH as SIGNIN_PATH
from pbhost.control.signin import SignInRelay
from pbhost.control.stats import GroupStats, Usage
from pbhost.control.webui import WebUi
from pbhost.errors import UnknownProcess
from pbhost.logs.render import SYSTEM_ID
from pbhost.process.procctl import nofile_limit
from pbhost.process.state import HALTED, ProcessState
from pbhost.statedir import KeptFile, control_path

if TYPE_CHECKING:
    from pbhost.logs.stream import LogRecord
    from pbhost.process.hostview import HostView
    from pbhost.process.reconfig import ReloadResult
    from pbhost.process.supervisor import Supervisor

    Reload = Callable[[str], asyncio.Future[ReloadResult]]

log = logging.getLogger("pbhost")

PREFIX = "/api/pm/"
DEFAULT_LINES = 100
MAX_LINES = 10_000
MAX_FOLLOWERS = 64         # concurrent ?follow=1 streams (fewer under a low fd limit)
ACTIONS = ("restart", "stop", "start")
PROBES = ("/livez", "/readyz")  # answered without a token


def error(status: int, message: str) -> Response:
    return Response(status, _json({"status": status, "message": message, "data": {}}))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class ControlApi:
    def __init__(self, host: HostView, auth: Authenticator,
                 stats: GroupStats | None = None, max_followers: int = MAX_FOLLOWERS,
                 reload: Reload | None = None) -> None:
        self.host = host
        self.reload = reload             # ConfigReload.request (None: no reloads here)
        self.auth = auth
        self.stats = stats or GroupStats()
        self.max_followers = max_followers
        self.followers = 0               # ?follow=1 streams open now
        self.server: HttpServer | None = None  # for the connection figures in /metrics
        self.webui = WebUi()
        self.signin = SignInRelay(host.pb.local_host, host.pb.port, issued=auth.vouch)
        self.hub = FollowHub(host.stream)  # every ?follow=1 client, one log subscription

    # -- entry point ----------------------------------------------------------------------
    async def handle(self, req: Request) -> Response | StreamResponse:
        if req.path in PROBES:
            return self.probe(req)
        # The dashboard's files and its sign-in need no token (webui.py, signin.py say why).
        page = self.webui.page(req.method, req.path)
        if page is not None:
            return page
        if req.path == SIGNIN_PATH:
            return await self.signin.handle(req)
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
        if parts == ["reload"]:
            return await self.reload_config() if req.method == "POST" else _not_allowed("POST")
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

    # -- orchestrators' probes ---------------------------------------------------------------
    def probe(self, req: Request) -> Response:
        """/livez: the loop answers, so pbhost is alive. /readyz: 200 once PocketBase and every
        autostart sidecar are ready, else 503 with the ids of those that are not."""
        if req.method not in ("GET", "HEAD"):
            return _not_allowed("GET")
        if req.path == "/livez":
            return Response(200, _json({"status": 200, "live": True}))
        waiting = self.host.not_ready()
        status = 503 if waiting else 200
        return Response(status, _json({"status": status, "ready": not waiting,
                                       "notReady": waiting}))

    # -- reading --------------------------------------------------------------------------
    def processes(self) -> list[dict[str, Any]]:
        sups = self.host.supervisors
        usage = self.stats.usage({s.id: s.pid for s in sups if s.pid is not None})
        return [self.describe(s, usage) for s in sups]

    def describe(self, sup: Supervisor, usage: dict[str, Usage] | None = None) -> dict[str, Any]:
        # No environment here, not even names: values from env and envFile are secrets.
        pid = sup.pid
        if usage is None:
            usage = self.stats.usage({sup.id: pid} if pid is not None else {})
        use = usage.get(sup.id, Usage()) if pid is not None else Usage()
        spec = self.host.specs.get(sup.id)
        return {
            "id": sup.id, "pid": pid, "status": str(sup.state),
            "startTime": _iso(sup.start_wall) if pid is not None else None,
            "uptime": round(sup.uptime, 3), "restartCount": sup.restart_count,
            "lastError": sup.last_error, "cpu": use.cpu, "memory": use.memory,
            "memoryLimit": spec.max_memory if spec is not None else None,
            "devMode": bool(spec.dev_mode) if spec is not None else False,
            "interpreter": sup.interpreter,
            "ready": sup.ready, "health": sup.health, "waitingFor": list(sup.waiting_for),
            "notifyStatus": sup.notify_status,
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
        family("pbhost_process_ready", "gauge",
               "1 while the process is ready (running, its readiness gate passed).",
               lambda p: 1 if p["ready"] else 0)
        family("pbhost_process_restarts_total", "counter", "Restarts since pbhost started.",
               lambda p: p["restartCount"])
        family("pbhost_process_uptime_seconds", "gauge", "Seconds since the current run began.",
               lambda p: p["uptime"])
        family("pbhost_process_cpu_percent", "gauge",
               "CPU use of the process tree, percent of one core.", lambda p: p["cpu"])
        family("pbhost_process_memory_bytes", "gauge",
               "Resident memory of the process tree (its group and what escaped it).",
               lambda p: p["memory"])
        limited = [p for p in procs if p["memoryLimit"] is not None]
        if limited:
            out.append("# HELP pbhost_process_memory_limit_bytes maxMemory: the tree's resident "
                       "memory above which pbhost restarts the process.\n"
                       "# TYPE pbhost_process_memory_limit_bytes gauge")
            out.extend(f'pbhost_process_memory_limit_bytes{{id="{_label(p["id"])}"}} '
                       f'{p["memoryLimit"]}' for p in limited)
        out.append("# HELP pbhost_process_status Current state (1 for the state it is in).\n"
                   "# TYPE pbhost_process_status gauge")
        out.extend(f'pbhost_process_status{{id="{_label(p["id"])}",status="{p["status"]}"}} 1'
                   for p in procs)
        out.append("# HELP pbhost_log_lines_dropped_total Log lines pbhost dropped because its "
                   "output could not keep up.\n# TYPE pbhost_log_lines_dropped_total counter")
        out.append(f"pbhost_log_lines_dropped_total {self.host.stream.dropped_total}")
        if self.server is not None:
            out.append("# HELP pbhost_api_connections Control API connections open now.\n"
                       "# TYPE pbhost_api_connections gauge\n"
                       f"pbhost_api_connections {self.server.connections}")
            out.append("# HELP pbhost_api_connections_shed_total Idle connections closed to make "
                       "room for new ones.\n# TYPE pbhost_api_connections_shed_total counter\n"
                       f"pbhost_api_connections_shed_total {self.server.shed_total}")
            out.append("# HELP pbhost_api_connections_refused_total Connections refused: every "
                       "slot was busy.\n# TYPE pbhost_api_connections_refused_total counter\n"
                       f"pbhost_api_connections_refused_total {self.server.refused_total}")
        return "\n".join(out) + "\n"

    def _log_ids(self, proc_id: str | None) -> list[str]:
        if proc_id is not None:
            return [proc_id]
        return [SYSTEM_ID, *(s.id for s in self.host.supervisors)]

    def _tail(self, ids: list[str], n: int,
              after: dict[str, int] | None = None) -> list[LogRecord]:
        """The last `n` lines of `ids` merged by time; with `after` (a cursor: id -> the seq
        of the last line seen), the first `n` lines after it."""
        rings = []
        for proc_id in ids:
            try:
                rings.append(self.host.stream.tail(
                    proc_id, n, None if after is None else after.get(proc_id, 0)))
            except (KeyError, UnknownProcess):
                continue  # e.g. no ring for pbhost's own lines in this log stream
        merged = list(heapq.merge(*rings, key=lambda r: r.ts)) if len(rings) > 1 else \
            (rings[0] if rings else [])
        if not n:
            return []
        return merged[-n:] if after is None else merged[:n]

    def logs(self, proc_id: str | None, query: dict[str, str]) -> Response | StreamResponse:
        n = _lines(query.get("lines"))
        ids = self._log_ids(proc_id)
        backlog = self._tail(ids, n, _cursor(query.get("after"), proc_id))
        if query.get("follow", "0").lower() in ("", "0", "false", "no"):
            return Response(200, _json([_record(r) for r in backlog]))
        if self.followers >= self.max_followers:
            resp = error(503, f"Too many log streams: {self.max_followers} are open (the "
                              "limit); close one, or read without follow=1.")
            resp.headers.append(("retry-after", "5"))
            return resp
        return StreamResponse(self._follow(set(ids), backlog))

    def _follow(self, ids: set[str], backlog: list[LogRecord]
                ) -> Callable[[Send, asyncio.Event], Awaitable[None]]:
        async def produce(send: Send, gone: asyncio.Event) -> None:
            # Counted from here: the server runs this right after logs() returned, in the
            # same task, so no other request can slip between the check and the count.
            self.followers += 1
            try:
                await self.hub.follow(ids, backlog, send, gone)
            finally:
                self.followers -= 1
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
            if sup.state is ProcessState.BACKOFF:  # for want of resources: retried by itself
                return error(503, f"{sup.id} cannot be started now: {sup.last_error}; pbhost "
                                  "keeps trying.")
            return error(500, f"{sup.id} could not be started: {sup.last_error or 'see the log'}.")
        return Response(200, _json(self.describe(sup)))


    async def reload_config(self) -> Response:
        """200 with what changed; 422 with the file's errors (nothing changed); 503 while
        pbhost shuts down."""
        if self.host.shutting_down or self.reload is None:
            return error(503, "pbhost is shutting down.")
        from pbhost.process.reconfig import result_fields
        # Shielded: a client that hangs up does not cut a reload in half.
        result = await asyncio.shield(self.reload("requested through the API"))
        if result.errors:
            return Response(422, _json({
                "status": 422, "message": f"{result.config} has errors; nothing was changed.",
                "data": {"config": result.config, "errors": list(result.errors)}}))
        if result.refused is not None:
            return error(503, result.refused[0].upper() + result.refused[1:] + ".")
        return Response(200, _json({**result_fields(result), "processes": self.processes()}))


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


def _cursor(value: str | None, proc_id: str | None) -> dict[str, int] | None:
    """`?after=`: `SEQ` for one process's logs, or `ID:SEQ,ID:SEQ...` (for the merged logs:
    ids not named start from their oldest kept line)."""
    if value is None:
        return None
    if value.isdigit() and proc_id is not None:
        return {proc_id: int(value)}
    cursor: dict[str, int] = {}
    for part in value.split(","):
        key, sep, seq = part.partition(":")
        if not sep or not key or not seq.isdigit():
            raise ValueError("after must be the seq of the last line seen (after=120), or "
                             "ID:SEQ pairs separated by commas (after=pocketbase:12,ai-agent:40).")
        cursor[key] = int(seq)
    return cursor


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(round(value, 3))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


# -- lifecycle ---------------------------------------------------------------------------
class ApiHandle:
    """A listening control API and its control.json; close() undoes both."""

    def __init__(self, server: HttpServer, addr: ApiAddress, control: KeptFile) -> None:
        self.server = server
        self.addr = addr
        self.control = control

    async def close(self) -> None:
        await self.server.close()
        self.control.close()
        remove_control(self.control.path, os.getpid())
        if self.addr.path:
            with contextlib.suppress(OSError):
                os.unlink(self.addr.path)


async def start_api(host: HostView, addr: ApiAddress, token: str,
                    environ: Mapping[str, str], reload: Reload | None = None
                    ) -> ApiHandle | None:
    """Listen on `addr` and write control.json; None (logged) if the address cannot be used."""
    pb = host.pb
    auth = Authenticator([token, environ.get("PBHOST_API_TOKEN", "")], pb.local_host,
                         pb.port)
    limits = limits_for(nofile_limit())
    api = ControlApi(host, auth, max_followers=min(MAX_FOLLOWERS, limits.max_connections // 4),
                     reload=reload)
    server = api.server = HttpServer(api.handle, error, limits)
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
    # A disk that refuses control.json (full, read-only) is said once and retried.
    control = KeptFile(control_path(pb.data_dir), "`pbhost ls` and friends cannot find this "
                       "pbhost; PBHOST_API_URL and PBHOST_API_TOKEN still work")
    control.put(encode_control(ControlInfo(addr.url, token, os.getpid())))
    if addr.path:
        log.info("control API at %s", addr.url)
    else:  # the page signs in with a superuser or the token (README, "The dashboard")
        log.info("control API at %s, its dashboard at %s/", addr.url, addr.url)
    return ApiHandle(server, addr, control)

"""The ordered set of supervisors: PocketBase first, sidecars once it is healthy; shutdown in
reverse (sidecars in parallel, PocketBase last); the exit code."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping, Sequence

from .errors import UnknownProcess
from .interpreter import plan_launch, sidecar_env
from .localhttp import request_status
from .pocketbase import PB_ID, PocketBaseInfo
from .prespawn import pocketbase_env
from .reaper import Reaper
from .spawn import Child
from .state import HEALTHY_RUN, ProcessState
from .supervisor import Launch, Policy, Supervisor
from .sweep import Sweeper
from .systemd import Notifier, status_line

if TYPE_CHECKING:
    from .config import ProcessSpec
    from .leftovers import Ledger
    from .logstream import LogStream
    from .reload import Reloader

log = logging.getLogger("pbhost")

EXIT_OK = 0
EXIT_PB_GAVE_UP = 1
EXIT_FORCED = 130           # second Ctrl-C: everything killed at once
PB_MAX_RETRIES = 3          # quick failures before pbhost gives up on PocketBase
PB_STOP_TIMEOUT = 5.0
HEALTH_POLL = 0.02          # seconds between /api/health probes while PocketBase starts
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


@dataclass
class HostSettings:
    pb_binary: str
    serve_args: Sequence[str]
    pb: PocketBaseInfo
    cwd: Path
    processes: Sequence[ProcessSpec] = ()
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    healthy_run: float = HEALTHY_RUN
    health_timeout: float = 60.0
    # The control API, known before PocketBase is spawned so that PocketBase (and a JS hook
    # forwarding /api/pm/* to pbhost) gets them as PBHOST_API_URL / PBHOST_API_TOKEN_INTERNAL.
    api_url: str | None = None
    api_token: str | None = None


class Host:
    def __init__(self, settings: HostSettings, stream: LogStream, *,
                 notifier: Notifier | None = None, ledger: Ledger | None = None) -> None:
        self.settings = settings
        self.stream = stream
        self.notifier = notifier or Notifier(None)
        self.ledger = ledger  # state.json: what a killed pbhost leaves for the next run to end
        self.reaper = Reaper()
        self.pocketbase = Supervisor(
            PB_ID, self._pb_launch,
            Policy(max_retries=PB_MAX_RETRIES, stop_timeout=PB_STOP_TIMEOUT,
                   healthy_run=settings.healthy_run, needs_ready=True),
            self.reaper, stream, on_change=self._on_state)
        self.sidecars = [self._sidecar(spec) for spec in settings.processes]
        self.specs = {spec.id: spec for spec in settings.processes}
        self._done: asyncio.Future[int] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._sidecars_started = False
        self.reloaders: list[Reloader] = []
        self.started = asyncio.Event()  # set once the autostart sidecars have been spawned
        self.forced = False  # a second Ctrl-C killed everything at once
        self._track_pending = False
        self.sweeper = Sweeper(lambda: [s.pid for s in self.supervisors if s.pid],
                               lambda proc_id: self.get(proc_id).pid)
        self.on_pb_healthy: list[Callable[[], None]] = []  # called each time PB turns healthy
        self.before_pb_stop: list[Callable[[], Awaitable[None]]] = []  # awaited at shutdown

    @property
    def supervisors(self) -> list[Supervisor]:
        return [self.pocketbase, *self.sidecars]

    def get(self, proc_id: str) -> Supervisor:
        for sup in self.supervisors:
            if sup.id == proc_id:
                return sup
        raise UnknownProcess(proc_id)

    # -- launching ------------------------------------------------------------------------
    def _pb_launch(self) -> Launch:
        s = self.settings
        env = pocketbase_env(s.environ, s.api_url, s.api_token)
        return Launch([s.pb_binary, "serve", *s.serve_args], env, str(s.cwd), "direct")

    def _sidecar(self, spec: ProcessSpec) -> Supervisor:
        def prepare() -> Launch:
            plan = plan_launch(spec, self.settings.environ.get("PATH"))
            env = sidecar_env(spec, self.settings.environ, self.settings.pb, plan)
            return Launch(plan.argv, env, str(spec.cwd), plan.interpreter)

        policy = Policy(max_retries=spec.max_retries, backoff=spec.backoff,
                        stop_timeout=spec.stop_timeout, healthy_run=self.settings.healthy_run)
        return Supervisor(spec.id, prepare, policy, self.reaper, self.stream,
                          on_change=self._on_state)

    def _on_state(self, sup: Supervisor) -> None:
        self._keep_track(sup)
        if sup is not self.pocketbase:
            return
        if sup.state is ProcessState.STARTING:
            self._watch_health()
        elif sup.state is ProcessState.CRASHED:
            log.error("PocketBase gave up; stopping everything")
            self.request_shutdown(EXIT_PB_GAVE_UP)

    def _keep_track(self, sup: Supervisor) -> None:
        """state.json, systemd's STATUS and the escapee sweep follow every state change."""
        if not self._track_pending:
            # Once per loop turn, after the current callback: a restart's exit -> starting ->
            # running is one write, made after the spawn rather than in front of it.
            self._track_pending = True
            asyncio.get_running_loop().call_soon(self._write_track)
        if sup is not self.pocketbase and sup.child is None and sup.last_exit is not None:
            self.sweeper.after_exit(sup.id, sup.policy.stop_timeout)

    def _write_track(self) -> None:
        self._track_pending = False
        if self.ledger is not None:
            self.ledger.record((s.id, s.pid) for s in self.supervisors if s.pid)
        if self.notifier.enabled:
            self.notifier.status(status_line(self.supervisors))

    # -- health ---------------------------------------------------------------------------
    def _watch_health(self) -> None:
        if self._health_task is None or self._health_task.done():
            self._health_task = asyncio.get_running_loop().create_task(self._await_health())

    async def _await_health(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.health_timeout
        pb = self.pocketbase
        while pb.state in (ProcessState.STARTING, ProcessState.BACKOFF):
            if pb.child is not None and await health_ok(self.settings.pb):
                pb.mark_running()
                log.info("PocketBase is healthy at %s", self.settings.pb.url)
                for fn in self.on_pb_healthy:
                    fn()
                self._start_sidecars()
                return
            if loop.time() > deadline:
                log.error("PocketBase has not answered %s/api/health for %.0fs; starting the "
                          "sidecars anyway", self.settings.pb.url, self.settings.health_timeout)
                self._start_sidecars()
                return
            await asyncio.sleep(HEALTH_POLL)

    def _start_sidecars(self) -> None:
        if self._sidecars_started:
            return
        self._sidecars_started = True
        self.started.set()
        for sup in self.sidecars:
            if self.specs[sup.id].autostart:
                sup.spawn_now()
            else:
                log.info("%s: autostart is off; start it with `pbhost start %s`", sup.id, sup.id)
        self.notifier.ready(status_line(self.supervisors))

    # -- run and shutdown -----------------------------------------------------------------
    async def run(self, pb_child: Child | None = None) -> int:
        """Run until a shutdown signal or until PocketBase gives up; return the exit code."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        if pb_child is not None:
            self.pocketbase.adopt(pb_child)  # watched before install: it may have exited
        self.reaper.install(loop)
        self.notifier.start_watchdog(loop)
        for sig in SHUTDOWN_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            if pb_child is None:
                self.pocketbase.spawn_now()
            if any(spec.dev_mode for spec in self.specs.values()):
                # After PocketBase's spawn, so scanning a big tree never delays it; and no
                # watcher code at all is loaded without devMode.
                from .reload import start_reloaders
                self.reloaders = start_reloaders(self.specs, self.sidecars, self.settings.cwd, loop)
            code = await self._done
            await self._shutdown()
            return EXIT_FORCED if self.forced else code
        finally:
            for sig in SHUTDOWN_SIGNALS:
                loop.remove_signal_handler(sig)
            self.reaper.uninstall()

    @property
    def shutting_down(self) -> bool:
        return self._done is not None and self._done.done()

    def request_shutdown(self, code: int = EXIT_OK) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(code)

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._done is not None and not self._done.done():
            log.info("%s received: stopping all processes", name)
            self.request_shutdown(EXIT_OK)
            return
        if sig == signal.SIGINT:
            log.warning("second interrupt: killing every process group now")
            self.forced = True
            for sup in self.supervisors:
                sup.kill_now()

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        for reloader in self.reloaders:
            reloader.close()  # no reload may start a sidecar the shutdown is stopping
        if self._health_task is not None:
            self._health_task.cancel()
        await asyncio.gather(*(sup.stop() for sup in self.sidecars))
        # What escaped the sidecars' groups was re-parented to us when they ended.
        longest = max((s.policy.stop_timeout for s in self.sidecars), default=PB_STOP_TIMEOUT)
        await self.sweeper.end_all(0.0 if self.forced else longest)
        if not self.forced:  # after a second Ctrl-C nothing waits
            for fn in self.before_pb_stop:
                await fn()
        await self.pocketbase.stop()
        await self.sweeper.end_all(0.0 if self.forced else PB_STOP_TIMEOUT)  # PB's children
        self.reaper.reap()  # anything adopted that exited during the stop
        if self.ledger is not None:
            self.ledger.clear()
            self.ledger = None  # a state change still queued must not write it again


async def health_ok(pb: PocketBaseInfo, timeout: float = 1.0) -> bool:
    """One GET /api/health; True on 200."""
    status = await request_status(pb.local_host, pb.port, "GET", "/api/health", timeout=timeout)
    return status == 200

"""The ordered set of supervisors: PocketBase first, each sidecar once its dependencies are met
(by default: PocketBase healthy); shutdown in reverse (dependents before their dependencies,
independent ones in parallel, PocketBase last); the exit code.

Which sidecars wait, and for what, is re-evaluated after every change of any process (state or
readiness), once per loop turn: order/startorder.py, with the rules in order/depends.py.

What else must happen at those moments (dev-mode watchers, the PocketBase hook's log bridge)
plugs in as a `Companion` (hostview.py), given to the Host when it is made (or added once a
reload needs it); the host knows no more of them, and they see the host only as a `HostView`.

The set of sidecars changes at run time only through `set_processes` (a reload of the config,
sequenced by reconfig.py); PocketBase never changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from pbhost.config.envfile import EnvFileError
from pbhost.config.template import unset_warning
from pbhost.errors import UnknownProcess
from pbhost.health.monitor import RunMonitor
from pbhost.order.depends import jobs, with_pocketbase
from pbhost.order.startorder import StartOrder
from pbhost.orphans.sweep import Sweeper
from pbhost.pocketbase.binary import PB_ID, PocketBaseInfo, pocketbase_env
from pbhost.pocketbase.localhttp import request_status
from pbhost.process.ending import STOP_TIMEOUT
from pbhost.process.hostview import Companion
from pbhost.process.launch import prepare_launch
from pbhost.process.reaper import Reaper
from pbhost.process.runtime import SystemRuntime
from pbhost.process.spawn import RESOURCE_ERRNOS, Child, SpawnError, describe_oserror
from pbhost.process.state import COMING_UP, HEALTHY_RUN, ProcessState
from pbhost.process.supervisor import Launch, LaunchError, Policy, Supervisor
from pbhost.production.notify import Notifier, status_line

if TYPE_CHECKING:
    from pbhost.config.loader import ProcessSpec
    from pbhost.logs.stream import LogStream
    from pbhost.orphans.leftovers import Ledger

log = logging.getLogger("pbhost")

EXIT_OK = 0
EXIT_PB_GAVE_UP = 1
EXIT_FORCED = 130           # second Ctrl-C: everything killed at once
PB_MAX_RETRIES = 3          # quick failures before pbhost gives up on PocketBase
HEALTH_POLL = 0.02          # seconds between /api/health probes while PocketBase starts
HEALTH_TIMEOUT = 60.0       # seconds to wait for PocketBase's first health 200
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
PB_WAIT_TEXT = "not ready: waiting for GET /api/health -> 200"
SYSTEM_ID = "pbhost"        # in /readyz's list while pbhost itself is stopping
S = ProcessState


@dataclass(frozen=True)
class HostSettings:
    pb_binary: str
    serve_args: Sequence[str]
    pb: PocketBaseInfo
    cwd: Path
    environ: Mapping[str, str]          # what every child starts from (the run's environment)
    processes: Sequence[ProcessSpec] = ()
    healthy_run: float = HEALTHY_RUN
    health_timeout: float = HEALTH_TIMEOUT
    # The control API, known before PocketBase is spawned so that PocketBase (and a JS hook
    # forwarding /api/pm/* to pbhost) gets them as PBHOST_API_URL / PBHOST_API_TOKEN_INTERNAL.
    api_url: str | None = None
    api_token: str | None = None


class Host:
    def __init__(self, settings: HostSettings, stream: LogStream, *,
                 notifier: Notifier | None = None, ledger: Ledger | None = None,
                 companions: Sequence[Companion] = ()) -> None:
        self.settings = settings
        self.stream = stream
        self.notifier = notifier or Notifier(None)
        self.ledger = ledger  # state.json: what a killed pbhost leaves for the next run to end
        self.companions = list(companions)
        self.reaper = Reaper()
        self.runtime = SystemRuntime(self.reaper, stream)
        self.specs = {spec.id: spec for spec in settings.processes}
        # id -> {dependency: condition}, the implicit "pocketbase": "ready" filled in.
        self.graph = {spec.id: with_pocketbase(spec.depends_on) for spec in settings.processes}
        # id -> what its current (or last) start resolved the spec to, or why it could not:
        # what a reload compares the file's new spec against.
        self.launched: dict[str, Launch | str] = {}
        # SIGHUP: a reload when pbhost is not on a terminal (serve.py decides), else shutdown.
        self.on_hangup: Callable[[], None] | None = None
        self._socket_name = f"pbhost-{os.getpid()}-{os.urandom(4).hex()}"  # + id + run number
        self.pocketbase = Supervisor(
            PB_ID, self._pb_launch,
            Policy(max_retries=PB_MAX_RETRIES, stop_timeout=STOP_TIMEOUT,
                   healthy_run=settings.healthy_run, needs_ready=True),
            self.runtime, on_change=self._on_state)
        self.sidecars = [self._sidecar(spec) for spec in settings.processes]
        for sup in self.supervisors:
            stream.register(sup.id)  # its ring exists (for the API) before its first line
        self._done: asyncio.Future[int] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._sidecars_started = False
        self.order = StartOrder(self.graph, self.get,
                                lambda proc_id: self.specs[proc_id].autostart,
                                lambda: self.shutting_down)
        self.started = asyncio.Event()  # set once the autostart sidecars have been spawned
        self.forced = False  # a second Ctrl-C killed everything at once
        self._snapshot_due = False
        self.sweeper = Sweeper(lambda: [s.pid for s in self.supervisors if s.pid],
                               self._current_pid)

    @property
    def supervisors(self) -> list[Supervisor]:
        return [self.pocketbase, *self.sidecars]

    @property
    def pb(self) -> PocketBaseInfo:
        return self.settings.pb

    def get(self, proc_id: str) -> Supervisor:
        for sup in self.supervisors:
            if sup.id == proc_id:
                return sup
        raise UnknownProcess(proc_id)

    def _current_pid(self, proc_id: str) -> int | None:
        """The live child of `proc_id` (None once a reload removed it)."""
        try:
            return self.get(proc_id).pid
        except UnknownProcess:
            return None

    # -- launching ------------------------------------------------------------------------
    def _pb_launch(self) -> Launch:
        s = self.settings
        env = pocketbase_env(s.environ, s.api_url, s.api_token)
        return Launch([s.pb_binary, "serve", *s.serve_args], env, str(s.cwd), "direct")

    def resolve(self, spec: ProcessSpec) -> Launch:
        """What a start of `spec` runs now: argv, the whole environment (the envFiles read
        now), cwd. Raises EnvFileError."""
        plan, env, _ = prepare_launch(spec, self.settings.environ, self.settings.pb)
        return Launch(plan.argv, env, str(spec.cwd), plan.interpreter)

    def _sidecar(self, spec: ProcessSpec) -> Supervisor:
        prepare, policy, monitor = self.sidecar_parts(spec)
        return Supervisor(spec.id, prepare, policy, self.runtime, on_change=self._on_state,
                          hooks=monitor)

    def sidecar_parts(self, spec: ProcessSpec, graph: Mapping[str, Mapping[str, str]] | None = None
                      ) -> tuple[Callable[[], Launch], Policy, RunMonitor]:
        """What a Supervisor of `spec` runs with: its prepare step, policy and run monitor.
        `graph`: the dependsOn graph that says whether it is a job (default: the host's)."""
        warned: set[tuple[str, str]] = set()

        def prepare() -> Launch:
            # Read at every start: an edited .env reaches the next start or restart.
            try:
                plan, env, own = prepare_launch(spec, self.settings.environ, self.settings.pb)
            except EnvFileError as exc:
                self.launched[spec.id] = str(exc)
                raise LaunchError(str(exc)) from None
            except OSError as exc:
                if exc.errno not in RESOURCE_ERRNOS:
                    raise
                # Out of fds or memory while reading its envFile or #! line: retried like a
                # spawn that failed for the same reason, never `crashed`.
                reason = describe_oserror(exc, spec.id, str(spec.cwd))
                raise SpawnError(exc.errno, f"{reason}, reading {exc.filename}"
                                 if exc.filename else reason) from None
            if spec.env_files:  # without envFile, loading the config warned already
                for name, var in set(own.unset) - warned:
                    warned.add((name, var))
                    log.warning("%s", unset_warning(spec.id, name, var,
                                                    " in pbhost's environment or its envFile"))
            launch = Launch(plan.argv, env, str(spec.cwd), plan.interpreter)
            self.launched[spec.id] = launch  # what a reload compares the file against
            return launch

        policy = Policy(max_retries=spec.max_retries, backoff=spec.backoff,
                        stop_timeout=spec.stop_timeout, healthy_run=self.settings.healthy_run,
                        gated=spec.readiness is not None,
                        one_shot=spec.id in jobs(self.graph if graph is None else graph))
        monitor = RunMonitor(spec, self.runtime, self.stream,
                             f"{self._socket_name}-{spec.id}")
        return prepare, policy, monitor

    # -- the set of sidecars, at run time (reconfig.py sequences a reload) ------------------
    def set_processes(self, specs: Sequence[ProcessSpec]) -> list[Supervisor]:
        """The sidecars are now `specs`, in this order: new ids get a supervisor (stopped, not
        started), ids not in `specs` leave the set (retire them first), the others keep theirs,
        whose next start follows the new spec (a live run keeps its monitor: a spec whose run
        differs was halted first). Which processes are jobs follows the new graph. Returns the
        supervisors added."""
        kept = {sup.id: sup for sup in self.sidecars}
        self.specs.clear()
        self.specs.update((spec.id, spec) for spec in specs)
        self.graph.clear()  # the very dict StartOrder reads
        self.graph.update((spec.id, with_pocketbase(spec.depends_on)) for spec in specs)
        for proc_id in set(kept) - set(self.specs):
            self.order.forget(proc_id)
            self.launched.pop(proc_id, None)
        added = []
        for spec in specs:
            sup = kept.get(spec.id)
            if sup is None:
                added.append(self._sidecar(spec))
                self.stream.register(spec.id)  # a re-added id keeps its ring: history goes on
            else:  # a live run keeps its monitor (its probes did not change, or it restarts)
                prepare, policy, monitor = self.sidecar_parts(spec)
                sup.reconfigure(prepare, policy, monitor if sup.child is None else None)
        fresh = {sup.id: sup for sup in added}
        self.sidecars = [kept.get(spec.id) or fresh[spec.id] for spec in specs]
        self._schedule_snapshot()
        return added

    def add_companion(self, companion: Companion) -> None:
        """A companion a reload needs (dev mode or memory limits turned on at run time)."""
        self.companions.append(companion)
        if self._done is not None:  # run() has told the others already
            companion.started(self)
            if self.pocketbase.ready:
                companion.pb_healthy()

    # -- following state changes ----------------------------------------------------------
    def _on_state(self, sup: Supervisor) -> None:
        self._schedule_snapshot()
        self.order.schedule()
        if sup is not self.pocketbase:
            if sup.child is None and sup.last_exit is not None and not sup.retired:
                # What the run left outside its group is unsupervised now. (A process a
                # reload removed: the reload ends that itself, before it answers.)
                self.sweeper.after_exit(sup.id, sup.policy.stop_timeout)
            return
        if sup.state is ProcessState.STARTING:
            self._watch_health()
        elif sup.state is ProcessState.CRASHED:
            log.error("PocketBase gave up; stopping everything")
            self.request_shutdown(EXIT_PB_GAVE_UP)

    def _schedule_snapshot(self) -> None:
        """state.json and systemd's STATUS follow the set of processes, once per loop turn,
        after the current callback: a restart's exit -> starting -> running is one write,
        made after the spawn rather than in front of it."""
        if not self._snapshot_due:
            self._snapshot_due = True
            asyncio.get_running_loop().call_soon(self._write_snapshot)

    def _write_snapshot(self) -> None:
        self._snapshot_due = False
        if self.ledger is not None:
            self.ledger.record((s.id, s.pid) for s in self.supervisors if s.pid)
        if self.notifier.enabled:
            self.notifier.status(status_line(self.supervisors))

    # -- readiness ------------------------------------------------------------------------
    def not_ready(self) -> list[str]:
        """What keeps /readyz from 200: PocketBase and every autostart sidecar must be ready
        (a job may have completed instead; one stopped on request does not count)."""
        if self.shutting_down:
            return [SYSTEM_ID]
        out = [] if self.pocketbase.ready else [PB_ID]
        for sup in self.sidecars:
            if not self.specs[sup.id].autostart or (sup.held and sup.state is S.STOPPED):
                continue
            if not (sup.ready or (sup.completed and sup.state is S.STOPPED)):
                out.append(sup.id)
        return out

    # -- health ---------------------------------------------------------------------------
    def _watch_health(self) -> None:
        if self._health_task is None or self._health_task.done():
            self._health_task = asyncio.get_running_loop().create_task(self._await_health())

    async def _await_health(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.health_timeout
        pb = self.pocketbase
        while pb.state in COMING_UP:
            pb.probe_text = PB_WAIT_TEXT
            if pb.child is not None and await health_ok(self.settings.pb):
                pb.mark_running()
                log.info("PocketBase is healthy at %s", self.settings.pb.url)
                for companion in self.companions:
                    companion.pb_healthy()
                self._start_sidecars()
                return
            if loop.time() > deadline:
                log.error("PocketBase has not answered %s/api/health for %.0fs; starting the "
                          "sidecars anyway", self.settings.pb.url, self.settings.health_timeout)
                self.order.pocketbase_forced = True
                self._start_sidecars()
                return
            await asyncio.sleep(HEALTH_POLL)

    def _queue_sidecars(self) -> None:
        """Every autostart sidecar waits for its dependencies from now on; those that only
        wait for PocketBase to be spawned start at once."""
        self.order.wait_for([sup.id for sup in self.sidecars if self.specs[sup.id].autostart])

    def _start_sidecars(self) -> None:
        """PocketBase is healthy for the first time: what waited for that alone starts now,
        in this very turn of the loop (no wait for the next evaluation)."""
        if self._sidecars_started:
            return
        self._sidecars_started = True
        self.order.evaluate()
        self.started.set()
        for sup in self.sidecars:
            if not self.specs[sup.id].autostart:
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
            for companion in self.companions:  # after PocketBase's spawn: never delays it
                companion.started(self)
            self._queue_sidecars()
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
        if sig == signal.SIGHUP and self.on_hangup is not None:
            self.on_hangup()  # not on a terminal: the daemon convention, a reload
            return
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
        for companion in self.companions:
            companion.shutting_down()  # e.g. no reload may start a sidecar being stopped
        if self._health_task is not None:
            self._health_task.cancel()
        self.order.clear()
        await self.order.stop(self.sidecars)
        # What escaped the sidecars' groups was re-parented to us when they ended.
        longest = max((s.policy.stop_timeout for s in self.sidecars), default=STOP_TIMEOUT)
        await self.sweeper.end_all(0.0 if self.forced else longest)
        if not self.forced:  # after a second Ctrl-C nothing waits
            for companion in self.companions:
                await companion.before_pb_stop()
        await self.pocketbase.stop()
        await self.sweeper.end_all(0.0 if self.forced else STOP_TIMEOUT)  # PB's children
        self.reaper.reap()  # anything adopted that exited during the stop
        if self.ledger is not None:
            self.ledger.clear()
            self.ledger = None  # a state change still queued must not write it again


async def health_ok(pb: PocketBaseInfo, timeout: float = 1.0) -> bool:
    """One GET /api/health; True on 200."""
    status = await request_status(pb.local_host, pb.port, "GET", "/api/health", timeout=timeout)
    return status == 200

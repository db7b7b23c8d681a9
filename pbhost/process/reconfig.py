"""Reloading pb_processes.json while everything runs: read and check the whole file, then apply
the difference to the host. Added processes start (in `dependsOn` order, if `autostart`);
removed ones stop, with whatever they left outside their group, and leave the list; changed
ones restart with their new spec; the others are left alone, same pid. PocketBase is never
touched: its arguments come from the command line.

Every way to ask (`pbhost reload`, POST /api/pm/reload, SIGHUP off a terminal, a dev-mode save
of the file) goes through one `ConfigReload`: one reload at a time, and the requests that
arrive while one waits for its turn share its result, so a burst of them ends with one
consistent set of processes. A reload runs in a task of its own: a caller that goes away
(a dropped connection) cannot cut it in half.

What changes is decided in specdiff.py (pure); the order of the steps is here:
1. decide, per id, from the states as they are now (below: `_restarts`);
2. stop what goes and what restarts, dependents before their dependencies (StartOrder.stop):
   a removed process is retired (never started again), a restarted one is halted and given
   its new spec under its own lock, so no start squeezed in between runs the old one;
3. the host takes the new set (Host.set_processes), the companions follow (`reloaded`);
4. the start order starts what is due, each once its dependencies hold. Readiness is per run,
   so a dependent that restarts in the same reload waits for its restarted dependency to be
   ready again; a dependent that keeps running is not stopped for it (only the first start of
   a run waits, as at start-up).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from pbhost.config.envfile import EnvFileError
from pbhost.config.loader import CONFIG_NAMES, find_config, load_config
from pbhost.errors import ConfigError
from pbhost.order.depends import with_pocketbase
from pbhost.orphans import proctable
from pbhost.process.ending import alive, end, ending
from pbhost.process.hostview import Companion, HostView
from pbhost.process.launch import check_env_files
from pbhost.process.state import ProcessState

if TYPE_CHECKING:
    from pbhost.config.loader import LoadedConfig, ProcessSpec
    from pbhost.process.host import Host
    from pbhost.process.specdiff import Change, ReloadPlan
    from pbhost.process.supervisor import Launch, Supervisor

    # Companions a new set of processes needs that the host does not have yet (dev mode,
    # memory limits turned on by a reload): serve.py knows which exist.
    Extras = Callable[[Sequence[ProcessSpec]], Sequence[Companion]]

# What happens to an id, as specdiff.py names it (that module loads at the first reload: its
# dataclasses cost milliseconds on `pbhost serve`'s path).
ADDED, REMOVED, RESTARTED, UPDATED, UNCHANGED = (
    "added", "removed", "restarted", "updated", "unchanged")
KINDS = (ADDED, REMOVED, RESTARTED, UPDATED, UNCHANGED)

log = logging.getLogger("pbhost")
S = ProcessState
SHUTTING_DOWN = "pbhost is shutting down"


class ReloadResult:
    """What one reload did (a plain class: no dataclass on `pbhost serve`'s path)."""

    __slots__ = ("config", "changes", "errors", "refused")

    def __init__(self, config: str | None, changes: tuple[Change, ...] = (),
                 errors: tuple[str, ...] = (), refused: str | None = None) -> None:
        self.config = config        # the file read (or the folder searched)
        self.changes = changes      # per id; empty when nothing was applied
        self.errors = errors        # what is wrong with the file: nothing changed
        self.refused = refused      # why no reload ran at all

    def ids(self, kind: str) -> list[str]:
        return [c.proc_id for c in self.changes if c.kind == kind]

    def summary(self) -> str:
        counts = [f"{len(self.ids(kind))} {kind}" for kind in KINDS if self.ids(kind)]
        return ", ".join(counts) or "no processes"


class ConfigReload(Companion):
    """The reloads of one host: serialized, coalesced, refused once shutdown has begun."""

    def __init__(self, host: Host, option: str | None, cwd: Path, environ: Mapping[str, str],
                 path: Path | None, early: Callable[[], bool] = lambda: False) -> None:
        self.host = host
        self._option = option        # --config / PBHOST_CONFIG, as given (None: look in cwd)
        self._cwd = cwd
        self._environ = environ      # what the loader expands ${VAR} from, as at start-up
        self.path = path             # the file the running set came from (None: none yet)
        # What makes the companions a new set needs (serve.py sets it; none by default).
        self.extras: Extras = lambda specs: ()
        self._early = early          # a SIGHUP came before the loop's handlers existed
        self._lock = asyncio.Lock()
        self._queued: asyncio.Task[ReloadResult] | None = None
        self._background: set[asyncio.Task[ReloadResult]] = set()

    # -- asking -----------------------------------------------------------------------------
    def request(self, reason: str) -> asyncio.Future[ReloadResult]:
        """A reload, or the one already waiting for its turn. Await it through
        asyncio.shield: the reload goes on without a caller that gave up."""
        if self._queued is None:
            self._queued = asyncio.get_running_loop().create_task(self._run(reason))
        return self._queued

    def signalled(self) -> None:
        """SIGHUP (pbhost is not on a terminal)."""
        self._in_background("SIGHUP")

    def file_changed(self, path: Path) -> None:
        """Dev mode: the process file was saved."""
        self._in_background(f"{path.name} changed")

    def _in_background(self, reason: str) -> None:
        task = self.request(reason)
        if isinstance(task, asyncio.Task) and task not in self._background:
            self._background.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._background.discard)

    # -- Companion --------------------------------------------------------------------------
    def started(self, host: HostView) -> None:
        if self._early():
            self.signalled()

    # -- reloading --------------------------------------------------------------------------
    async def _run(self, reason: str) -> ReloadResult:
        async with self._lock:
            self._queued = None  # from here on, a new request queues a new reload
            try:
                return await self._reload(reason)
            except Exception as exc:  # a bug must not leave the caller without an answer
                log.exception("reload failed")
                return ReloadResult(str(self.path) if self.path else None,
                                    refused=f"the reload failed: {exc!r}; see pbhost's log")

    async def _reload(self, reason: str) -> ReloadResult:
        host = self.host
        if host.shutting_down:
            log.warning("not reloading (%s): %s", reason, SHUTTING_DOWN)
            return ReloadResult(None, refused=SHUTTING_DOWN)
        where, loaded, errors = self._read()
        if loaded is None:
            log.error("reload (%s): %s has errors; nothing changed:", reason, where)
            for problem in errors:
                log.error("reload: %s: %s", where, problem)
            return ReloadResult(where, errors=tuple(errors))
        try:  # the envFiles were read a moment ago: read again, they may have changed since
            resolved = {spec.id: host.resolve(spec) for spec in loaded.processes}
        except EnvFileError as exc:
            log.error("reload (%s): %s; nothing changed", reason, exc)
            return ReloadResult(where, errors=(str(exc),))
        log.info("reloading %s (%s)", where, reason)
        self.path = loaded.path
        host.notifier.reloading()
        try:
            changes = await apply(host, loaded.processes, resolved, self.extras)
        finally:
            host.notifier.reloaded()
        if host.shutting_down:
            return ReloadResult(where, changes, refused=SHUTTING_DOWN)
        result = ReloadResult(where, changes)
        log.info("reloaded %s: %s", where, result.summary())
        return result

    def _read(self) -> tuple[str, LoadedConfig | None, list[str]]:
        """(the file, what it holds or None, its problems), as `pbhost check` finds them:
        the file's own, then what its envFiles hold."""
        try:
            path = find_config(self._option, self._cwd)
            if path is None:
                return str(self._cwd), None, [
                    f"no {'/'.join(CONFIG_NAMES)} here: nothing to reload (to remove every "
                    "sidecar, write [])"]
            loaded = load_config(path, self._environ)
        except ConfigError as exc:
            return exc.path, None, list(exc.problems)
        problems, warnings = check_env_files(loaded.processes, self.host.settings.environ)
        if problems:
            return str(path), None, problems
        for warning in (*loaded.warnings, *warnings):
            log.warning("%s", warning)
        return str(path), loaded, []


async def apply(host: Host, specs: Sequence[ProcessSpec], resolved: Mapping[str, Launch],
                extras: Extras) -> tuple[Change, ...]:
    """Bring the host's sidecars to `specs` (`resolved`: what a start of each would run now).
    Returns what happened to each id, as the log says it."""
    from pbhost.process.specdiff import plan

    new = {spec.id: spec for spec in specs}
    changes, restart = _decide(host, plan(host.specs, specs, host.launched, resolved), new)
    released = {sup.id for sup in restart if sup.held}  # stopped on request, now redefined
    removed = [host.get(c.proc_id) for c in changes if c.kind == REMOVED]
    await _stop(host, restart, removed, new)
    if host.shutting_down:
        return changes  # the shutdown stops the rest; nothing new may start
    host.set_processes(specs)
    for sup in restart:
        if sup.id in released:
            sup.held = False  # a stop asked for during this reload has held it again
    for companion in list(host.companions):
        companion.reloaded(host)
    for companion in extras(specs):
        host.add_companion(companion)
    due = {sup.id for sup in restart} | {c.proc_id for c in changes
                                         if c.kind == ADDED and new[c.proc_id].autostart}
    host.order.wait_for([spec.id for spec in specs if spec.id in due])  # the file's order
    return changes


def _decide(host: Host, draft: ReloadPlan, new: Mapping[str, ProcessSpec]
            ) -> tuple[tuple[Change, ...], list[Supervisor]]:
    """The plan made final with the states as they are now, each id's line logged; and the
    supervisors to restart."""
    from pbhost.process.specdiff import Change

    changes: list[Change] = []
    restart: list[Supervisor] = []
    for change in draft.changes:
        text = _said(change)
        if change.kind == RESTARTED:
            sup = host.get(change.proc_id)
            if _restarts(sup, new[change.proc_id]):
                restart.append(sup)
            else:  # no run to restart: its next start, if any, uses the new spec
                change = Change(change.proc_id, UPDATED, change.keys)
                text = (f"updated ({', '.join(change.keys)} changed; it is {sup.state}: its "
                        "next start uses them)")
        elif change.kind == ADDED and not new[change.proc_id].autostart:
            text = f"added (autostart is off; start it with `pbhost start {change.proc_id}`)"
        changes.append(change)
        log.info("reload: %s: %s", change.proc_id, text)
    return tuple(changes), restart


async def _stop(host: Host, restart: Sequence[Supervisor], removed: Sequence[Supervisor],
                new: Mapping[str, ProcessSpec]) -> None:
    """Retire the removed, halt the restarted with their new spec; dependents first (the old
    graph), the rest at once."""
    graph = {spec.id: with_pocketbase(spec.depends_on) for spec in new.values()}
    parts = {sup.id: host.sidecar_parts(new[sup.id], graph) for sup in restart}
    for sup in (*restart, *removed):
        host.order.forget(sup.id)  # nothing starts them while they stop

    async def end_one(sup: Supervisor) -> None:
        try:
            if sup.id not in parts:
                await sup.retire()
                await _end_escapees(host, sup)
                return
            prepare, policy, monitor = parts[sup.id]
            ran = sup.state is not S.STOPPED and sup.state is not S.CRASHED
            await sup.halt(lambda: sup.reconfigure(prepare, policy, monitor))
            if ran:
                sup.restart_count += 1
        except Exception:  # a bug: the others must still reach the new set
            log.exception("reload: %s: could not be stopped cleanly", sup.id)
    await host.order.stop([*restart, *removed], end_one)


def _restarts(sup: Supervisor, spec: ProcessSpec) -> bool:
    """A changed process restarts when it has a run (or is between runs: backoff, a restart
    under way), and when it would start by itself but for something the new spec may fix:
    crashed, stopped on request, or a job that completed (with autostart). A process that
    never started (autostart off, still waiting for its dependencies) just takes the spec."""
    if sup.state in (S.STARTING, S.RUNNING, S.BACKOFF) or (sup.state is S.STOPPING
                                                          and not sup.held):
        return True
    halted = sup.held or sup.state is S.CRASHED or (sup.completed and sup.state is S.STOPPED)
    return halted and spec.autostart


def _said(change: Change) -> str:
    keys = f" ({', '.join(change.keys)} changed)" if change.keys else ""
    if change.kind == UPDATED:
        return f"updated in place{keys}"
    if change.kind == UNCHANGED:
        return "unchanged"
    return f"{change.kind}{keys}"


async def _end_escapees(host: Host, sup: Supervisor) -> None:
    """What a removed process left outside its group (setsid, daemons) goes with it now,
    before the reload answers (the sweep after every exit would find it too, a moment later)."""
    procs = host.sweeper.escaped(sup.id)
    for p in procs:
        log.warning("%s: ending pid %d (%s), left outside its group; %s was removed", sup.id,
                    p.pid, proctable.cmdline(p.pid), sup.id)
    if procs:
        await end(ending(alive(procs), sup.policy.stop_timeout))


def result_fields(result: ReloadResult) -> dict[str, object]:
    """The API's body for a reload that ran (docs/api.md)."""
    out: dict[str, object] = {"config": result.config}
    for kind in KINDS:
        out[kind] = result.ids(kind)
    out["changes"] = [{"id": c.proc_id, "change": c.kind, "keys": list(c.keys)}
                      for c in result.changes]
    return out


"""`pbhost serve`, the normal path: the log stream, the config, the host and what plugs into it
(dev mode, the PocketBase hook, the control API, reloads of the config), then the loop until
shutdown.

PocketBase itself is usually running already: the fast start path (startup/prespawn.py)
spawned it before click and asyncio were imported, and `take()` hands it over here.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from pbhost.config.loader import LoadedConfig, ProcessSpec, find_config, load_config
from pbhost.errors import ConfigError
from pbhost.logs.render import want_color
from pbhost.logs.stream import LogStream, LogStreamHandler
from pbhost.options import Options, by_name
from pbhost.orphans.leftovers import Ledger
from pbhost.pocketbase.banner import FirstRunHint, superuser_command
from pbhost.pocketbase.bridge import HookLink
from pbhost.process.host import HEALTH_TIMEOUT, Host, HostSettings
from pbhost.process.hostview import Companion
from pbhost.process.procctl import set_child_subreaper
from pbhost.process.reconfig import ConfigReload
from pbhost.process.state import HEALTHY_RUN
from pbhost.production.notify import Notifier, stdout_is_journal
from pbhost.startup import prespawn

if TYPE_CHECKING:
    from pbhost.control.address import ApiAddress
    from pbhost.control.api import ApiHandle

log = logging.getLogger("pbhost")
API_START_WAIT = 1.0  # seconds; the API starts after the sidecars are spawned, or after this


def run_serve(opts: Options, serve_args: list[str]) -> int:
    cwd = Path.cwd()
    stream = LogStream(1, color=want_color(1, os.environ, opts.color), fmt=opts.log_format,
                       timestamps=opts.timestamps, syslog_prefix=stdout_is_journal(os.environ))
    _setup_logging(stream, opts.verbose)  # first: ending a killed run's leftovers is logged
    taken = prespawn.take(opts, serve_args, cwd)  # spawned before the imports (__main__)
    start = taken or prespawn.start_pocketbase(opts, serve_args, cwd, os.environ)
    if taken is not None:
        log.debug("PocketBase was spawned before click and asyncio were imported")
    notifier = Notifier.from_env(os.environ)
    try:
        return asyncio.run(_serve(opts, serve_args, cwd, stream, start, notifier))
    finally:
        prespawn.stop(start)  # a no-op unless the host failed before it stopped PocketBase
        notifier.close()
        stream.close(timeout=2.0)


async def _serve(opts: Options, serve_args: list[str], cwd: Path, stream: LogStream,
                 start: prespawn.PbStart, notifier: Notifier) -> int:
    stream.start(asyncio.get_running_loop())
    hint = FirstRunHint(stream, asyncio.get_running_loop(),
                        superuser_command(start.pb, cwd, opts.pocketbase))
    log.log(*start.hook.log_line())
    _warn_misplaced_options(serve_args)
    path, processes = _load_processes(opts, cwd, start.loaded)
    _become_reaper()
    settings = HostSettings(
        pb_binary=start.binary, serve_args=tuple(serve_args), pb=start.pb, cwd=cwd,
        environ=start.environ, processes=tuple(processes),
        api_url=start.api.url if start.api else None, api_token=start.token,
        # Hidden knobs for tests: shorter healthy threshold, shorter health wait.
        healthy_run=_env_float("PBHOST_HEALTHY_SECONDS", HEALTHY_RUN),
        health_timeout=_env_float("PBHOST_HEALTH_TIMEOUT", HEALTH_TIMEOUT))
    link = HookLink(start.pb, processes, stream, start.token,
                    dashboard=start.api is not None and not start.api.path
                    ) if start.hook.wanted else None
    if any(spec.env_files for spec in processes):
        # python-dotenv (the envFile parser) loads now, while PocketBase starts, rather than
        # in front of the first sidecar's spawn.
        import dotenv.parser  # noqa: F401
    host = Host(settings, stream, notifier=notifier,
                ledger=Ledger(start.pb.data_dir, start.run_id),
                companions=[link] if link is not None else [])
    reloads = ConfigReload(host, opts.config, cwd, os.environ, path,
                           early=prespawn.take_hangup)
    on_demand = _OnDemand(cwd, reloads)
    reloads.extras = on_demand.needed
    for companion in [*on_demand.needed(processes), reloads]:
        host.add_companion(companion)
    if prespawn.hangup_reloads():  # not on a terminal: SIGHUP reloads the config
        host.on_hangup = reloads.signalled
    api_task = (asyncio.get_running_loop().create_task(
        _serve_api(host, start.api, start.token, reloads)) if start.api is not None else None)
    try:
        return await host.run(pb_child=start.child)
    finally:
        hint.close()
        if link is not None:
            link.close()
        if api_task is not None:
            await _close_api(api_task)


class _OnDemand:
    """The companions only some sets of processes need, made the first time one does (at
    start-up or by a reload), so that without them nothing is imported, watched or sampled."""

    def __init__(self, cwd: Path, reloads: ConfigReload) -> None:
        self._cwd = cwd
        self._reloads = reloads
        self._dev = False
        self._memory = False

    def needed(self, specs: Sequence[ProcessSpec]) -> list[Companion]:
        out: list[Companion] = []
        if not self._dev and any(spec.dev_mode for spec in specs):
            from pbhost.dev.reload import DevReload  # no watcher code at all without devMode
            self._dev = True
            out.append(DevReload(self._cwd, lambda: self._reloads.path,
                                 self._reloads.file_changed))
        if not self._memory and any(spec.max_memory is not None for spec in specs):
            from pbhost.limits.memory import MemoryWatch  # no sampling without a limit
            self._memory = True
            out.append(MemoryWatch())
        return out


def _setup_logging(stream: LogStream, verbose: bool) -> None:
    handler = LogStreamHandler(stream)
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def _load_processes(opts: Options, cwd: Path, loaded: LoadedConfig | None
                    ) -> tuple[Path | None, Sequence[ProcessSpec]]:
    """The process file and the sidecars to run; a broken file means none (PocketBase still
    starts; a reload once it is fixed starts them) unless --strict (which checked the file
    before PocketBase started: `loaded`)."""
    path = loaded.path if loaded is not None else find_config(opts.config, cwd)
    if path is None:
        log.info("no pb_processes.json here: running PocketBase alone")
        return None, ()
    try:
        loaded = loaded or load_config(path, os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s: %s", exc.path, problem)
        log.error("the process file is broken: starting PocketBase without sidecars "
                  "(--strict makes this fatal; `pbhost reload` once it is fixed)")
        return path, ()
    for warning in loaded.warnings:
        log.warning("%s", warning)
    return path, loaded.processes


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


async def _serve_api(host: Host, addr: ApiAddress, token: str,
                     reloads: ConfigReload) -> ApiHandle | None:
    # h11 and the API modules load only once the children are spawned (or PocketBase is slow
    # to become healthy), so they never delay PocketBase or the sidecars.
    try:
        await asyncio.wait_for(host.started.wait(), API_START_WAIT)
    except asyncio.TimeoutError:
        pass
    from pbhost.control.api import start_api
    return await start_api(host, addr, token, os.environ, reload=reloads.request)


async def _close_api(task: asyncio.Task[ApiHandle | None]) -> None:
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return
    handle = None if task.cancelled() or task.exception() else task.result()
    if handle is not None:
        await handle.close()


def _warn_misplaced_options(serve_args: Sequence[str]) -> None:
    """`pbhost serve --no-color` hands --no-color to PocketBase, which refuses it: say why."""
    names = by_name()
    for arg in serve_args:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name in names:
            log.warning("%s comes after `serve`, so it goes to PocketBase; pbhost's own options "
                        "go before `serve`: pbhost %s serve ...", arg, arg)


def _become_reaper() -> None:
    """Orphaned descendants (a sidecar's daemonized worker) re-parent to us, not to init."""
    if os.getpid() == 1:
        log.debug("running as PID 1: every orphan in this PID namespace is ours to reap")
    elif not set_child_subreaper():
        log.warning("cannot become a child subreaper: processes that escape a sidecar's "
                    "group (setsid, daemonizing) are not ended with it")

"""`pbhost serve`: assemble the log stream, the config and the host, and run the loop."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from . import prespawn
from .config import LoadedConfig, ProcessSpec, find_config, load_config
from .apiaddr import ApiAddress
from .errors import ConfigError
from .host import Host, HostSettings
from .leftovers import Ledger
from .logstream import LogStream, LogStreamHandler, want_color
from .pbbridge import connect as connect_pb_hook
from .procctl import set_child_subreaper
from .systemd import Notifier, stdout_is_journal

if TYPE_CHECKING:
    from .api import ApiHandle
    from .cli import Options

log = logging.getLogger("pbhost")
API_START_WAIT = 1.0  # seconds; the API starts after the sidecars are spawned, or after this


def _setup_logging(stream: LogStream, verbose: bool) -> None:
    handler = LogStreamHandler(stream)
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def _load_processes(opts: Options, cwd: Path,
                    loaded: LoadedConfig | None) -> Sequence[ProcessSpec]:
    """The sidecars to run; a broken file means none (PocketBase still starts) unless --strict
    (which checked the file before PocketBase started: `loaded`)."""
    path = loaded.path if loaded is not None else find_config(opts.config, cwd)
    if path is None:
        log.info("no pb_processes.json here: running PocketBase alone")
        return ()
    try:
        loaded = loaded or load_config(path, os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s: %s", exc.path, problem)
        log.error("the process file is broken: starting PocketBase without sidecars "
                  "(--strict makes this fatal)")
        return ()
    for warning in loaded.warnings:
        log.warning("%s", warning)
    return loaded.processes


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


async def _serve_api(host: Host, addr: ApiAddress, token: str) -> ApiHandle | None:
    # h11 and the API modules load only once the children are spawned (or PocketBase is slow
    # to become healthy), so they never delay PocketBase or the sidecars.
    try:
        await asyncio.wait_for(host.started.wait(), API_START_WAIT)
    except asyncio.TimeoutError:
        pass
    from .api import start_api
    return await start_api(host, addr, token, os.environ)


async def _close_api(task: asyncio.Task[ApiHandle | None]) -> None:
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return
    handle = None if task.cancelled() or task.exception() else task.result()
    if handle is not None:
        await handle.close()


def run_serve(opts: Options, serve_args: list[str]) -> int:
    cwd = Path.cwd()
    stream = LogStream(1, color=want_color(1, os.environ, opts.color), fmt=opts.log_format,
                       timestamps=opts.timestamps, syslog_prefix=stdout_is_journal(os.environ))
    _setup_logging(stream, opts.verbose)  # first: ending a killed run's leftovers is logged
    early = prespawn.EarlyOptions(opts.config, opts.pocketbase, opts.strict, opts.api,
                                  opts.pb_hooks)
    taken = prespawn.take(early, serve_args, cwd)  # spawned before the imports (__main__)
    start = taken or prespawn.start_pocketbase(early, serve_args, cwd, os.environ)
    if taken is not None:
        log.debug("PocketBase was spawned before click and asyncio were imported")
    notifier = Notifier.from_env(os.environ)
    settings = HostSettings(
        pb_binary=start.binary, serve_args=serve_args, pb=start.pb, cwd=cwd,
        processes=(), environ=start.environ,
        api_url=start.api.url if start.api else None, api_token=start.token,
        # Hidden knobs for tests: shorter healthy threshold, shorter health wait.
        healthy_run=_env_float("PBHOST_HEALTHY_SECONDS", 10.0),
        health_timeout=_env_float("PBHOST_HEALTH_TIMEOUT", 60.0))

    async def main() -> int:
        stream.start(asyncio.get_running_loop())
        log.log(*start.hook.log_line())
        _warn_misplaced_options(serve_args)
        settings.processes = _load_processes(opts, cwd, start.loaded)
        _become_reaper()
        host = Host(settings, stream, notifier=notifier,
                    ledger=Ledger(settings.pb.data_dir, start.run_id))
        bridge = connect_pb_hook(host, stream, start.hook, start.token)
        loop = asyncio.get_running_loop()
        api_task = (loop.create_task(_serve_api(host, start.api, start.token))
                    if start.api is not None else None)
        try:
            return await host.run(pb_child=start.child)
        finally:
            if bridge is not None:
                bridge.close()
            if api_task is not None:
                await _close_api(api_task)

    try:
        return asyncio.run(main())
    finally:
        prespawn.stop(start)  # a no-op unless the host failed before it stopped PocketBase
        notifier.close()
        stream.close(timeout=2.0)


def _warn_misplaced_options(serve_args: Sequence[str]) -> None:
    """`pbhost serve --no-color` hands --no-color to PocketBase, which refuses it: say why."""
    for arg in serve_args:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and (name in prespawn.VALUE_OPTIONS
                                      or name in prespawn.FLAG_OPTIONS):
            log.warning("%s comes after `serve`, so it goes to PocketBase; pbhost's own options "
                        "go before `serve`: pbhost %s serve ...", arg, arg)


def _become_reaper() -> None:
    """Orphaned descendants (a sidecar's daemonized worker) re-parent to us, not to init."""
    if os.getpid() == 1:
        log.debug("running as PID 1: every orphan in this PID namespace is ours to reap")
    elif not set_child_subreaper():
        log.warning("cannot become a child subreaper: processes that escape a sidecar's "
                    "group (setsid, daemonizing) are not ended with it")

"""`pbhost serve`: assemble the log stream, the config and the host, and run the loop."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .config import ProcessSpec, find_config, load_config
from .errors import ConfigError
from .host import Host, HostSettings
from .leftovers import RUN_ENV, Ledger, end_previous_run, new_run_id
from .logstream import LogStream, LogStreamHandler, want_color
from .pocketbase import describe, find_binary
from .procctl import set_child_subreaper
from .systemd import Notifier, child_environ, stdout_is_journal

if TYPE_CHECKING:
    from .cli import Options

log = logging.getLogger("pbhost")


def _setup_logging(stream: LogStream, verbose: bool) -> None:
    handler = LogStreamHandler(stream)
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def _load_processes(opts: Options, cwd: Path) -> Sequence[ProcessSpec]:
    """The sidecars to run; a broken file means none (PocketBase still starts) unless --strict."""
    path = find_config(opts.config, cwd)
    if path is None:
        log.info("no pb_processes.json here: running PocketBase alone")
        return ()
    try:
        loaded = load_config(path, os.environ)
    except ConfigError as exc:
        if opts.strict:
            raise
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


def run_serve(opts: Options, serve_args: list[str]) -> int:
    cwd = Path.cwd()
    binary = find_binary(opts.pocketbase, os.environ, cwd)
    stream = LogStream(1, color=want_color(1, os.environ, opts.color), fmt=opts.log_format,
                       timestamps=opts.timestamps, syslog_prefix=stdout_is_journal(os.environ))
    _setup_logging(stream, opts.verbose)
    run_id = new_run_id()
    notifier = Notifier.from_env(os.environ)
    settings = HostSettings(
        pb_binary=binary, serve_args=serve_args, pb=describe(serve_args, cwd), cwd=cwd,
        processes=(), environ={**child_environ(os.environ), RUN_ENV: run_id},
        # Hidden knobs for tests: shorter healthy threshold, shorter health wait.
        healthy_run=_env_float("PBHOST_HEALTHY_SECONDS", 10.0),
        health_timeout=_env_float("PBHOST_HEALTH_TIMEOUT", 60.0))

    async def main() -> int:
        stream.start(asyncio.get_running_loop())
        settings.processes = _load_processes(opts, cwd)
        _become_reaper()
        end_previous_run(settings.pb.data_dir)
        host = Host(settings, stream, notifier=notifier,
                    ledger=Ledger(settings.pb.data_dir, run_id))
        return await host.run()

    try:
        return asyncio.run(main())
    finally:
        notifier.close()
        stream.close(timeout=2.0)


def _become_reaper() -> None:
    """Orphaned descendants (a sidecar's daemonized worker) re-parent to us, not to init."""
    if os.getpid() == 1:
        log.debug("running as PID 1: every orphan in this PID namespace is ours to reap")
    elif not set_child_subreaper():
        log.warning("cannot become a child subreaper: processes that escape a sidecar's "
                    "group (setsid, daemonizing) are not ended with it")

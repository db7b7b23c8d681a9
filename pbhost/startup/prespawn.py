"""Starting PocketBase: the steps that must come before its spawn, and the spawn, in one place.

`pbhost serve` would spend ~200 ms importing click, asyncio and the config loader before
PocketBase even starts, and PocketBase needs none of them. So `__main__` reads the few options
that decide how PocketBase starts straight from argv and spawns it first (`fast_start`); then
the usual click path runs and `run_serve` takes that child over (`take`). For anything unusual in
argv the fast path steps aside, and `run_serve` calls the same `start_pocketbase` itself.

Import-light on purpose (os, signal, subprocess and pbhost's light modules): whatever this
module imports is paid for before PocketBase starts. tests/test_layout.py checks that importing
it loads neither asyncio, click, typing nor dataclasses.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from pbhost.errors import PbhostError
from pbhost.options import FALSE_WORDS, OPTIONS, TRUE_WORDS, Options, by_name
from pbhost.pocketbase.binary import PocketBaseInfo, describe, find_binary, pocketbase_env
from pbhost.pocketbase.hookfile import InstallResult, install_hook
from pbhost.process.ending import STOP_TIMEOUT, Group, alive, end_blocking, ending
from pbhost.process.procctl import raise_nofile, set_child_subreaper
from pbhost.process.runenv import RUN_ENV, child_environ, new_run_id
from pbhost.process.spawn import Child, SpawnError, killpg, spawn
from pbhost.statedir import state_path

TYPE_CHECKING = False  # typing and dataclasses cost ~10 ms to import: not before the spawn
if TYPE_CHECKING:
    from typing import Mapping, Sequence

    from pbhost.config.loader import LoadedConfig
    from pbhost.control.address import ApiAddress

EARLY_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class PbStart:
    """A PocketBase started (or that failed to start: child None) from these inputs."""

    def __init__(self, key: tuple[object, tuple[str, ...], Path], binary: str,
                 pb: PocketBaseInfo, run_id: str, environ: dict[str, str],
                 api: ApiAddress | None, token: str, hook: InstallResult,
                 child: Child | None, loaded: LoadedConfig | None) -> None:
        self.key = key
        self.binary = binary
        self.pb = pb
        self.run_id = run_id
        self.environ = environ  # what every child of this run starts from
        self.api = api          # the control API's address (None: --api off)
        self.token = token      # pbhost's token: the API's, and the hook's log route's
        self.hook = hook        # what installing pbhost.pb.js did
        self.child = child
        self.loaded = loaded    # the process file, when --strict checked it before the spawn


class StartupInterrupted(BaseException):
    """A shutdown signal arrived before the event loop's handlers were installed."""

    def __init__(self, sig: int) -> None:
        super().__init__(sig)
        self.sig = sig


_pending: PbStart | None = None  # spawned by fast_start, not yet taken by run_serve
_early_groups: list[int] = []  # PocketBase groups spawned before the loop's signal handlers
_interrupted = False  # a shutdown signal arrived before the loop's handlers: start-up unwinds
_forced = False  # then a second Ctrl-C killed PocketBase's group at once
_on_terminal: bool | None = None  # stdin was a terminal when pbhost started (asked once)
_hangup_due = False  # a SIGHUP off a terminal before the loop's handlers: a reload is due


def parse_early(argv: Sequence[str],
                environ: Mapping[str, str]) -> tuple[Options, list[str]] | None:
    """`[OPTIONS] serve ARGS...` -> (options, ARGS); None for anything else (click decides).

    Read with the names and arity of options.py's table, and from PBHOST_* like click does.
    The values are checked by click, which runs right after (a value it refuses stops the
    PocketBase started meanwhile).
    """
    names = by_name()
    found: dict[str, object] = {}
    i = 0
    while i < len(argv) and argv[i] != "serve":
        arg = argv[i]
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        entry = names.get(name)
        if entry is None or (entry[0].flag and eq):
            return None  # --help, --version, another command, a typo, -vc FILE, --strict=1...
        opt, on = entry
        if not opt.flag and not eq:
            i += 1
            if i == len(argv):
                return None
            inline = argv[i]
        found[opt.field] = on if opt.flag else inline
        i += 1
    serve_args = list(argv[i + 1:])
    if i == len(argv) or "--help" in serve_args or "-h" in serve_args:
        return None
    opts = Options()
    for opt in OPTIONS:
        value = found.get(opt.field)
        if value is None:
            raw = environ.get(opt.env, "")
            if not raw:
                continue  # unset, or empty (click treats both alike): the default holds
            word = raw.strip().lower()
            if opt.flag and word not in TRUE_WORDS | FALSE_WORDS:
                return None  # click will refuse it with its own message
            value = word in TRUE_WORDS if opt.flag else raw
        setattr(opts, opt.field, value)
    return opts, serve_args


def start_pocketbase(opts: Options, serve_args: Sequence[str], cwd: Path,
                     environ: Mapping[str, str]) -> PbStart:
    """Everything that must happen before PocketBase runs, then its spawn.

    Raises PbhostError for what stops pbhost before PocketBase starts (no binary; a broken
    process file with --strict; another pbhost on this data dir). A failed spawn gives child
    None: the host retries and reports.
    """
    binary = find_binary(opts.pocketbase, environ, cwd)
    loaded = _strict_config(opts, cwd, environ)
    pb = describe(serve_args, cwd)
    _end_previous_run(pb.data_dir)
    set_child_subreaper()  # before the first spawn: what PocketBase orphans comes to us
    raise_nofile()  # before the first spawn, which gets the limit pbhost was started with
    # PocketBase's env must name the API; control/address.py is import-light for this reason.
    from pbhost.control.address import new_token, parse_api_address
    api = parse_api_address(opts.api, pb.port, cwd)
    token = new_token()  # also with --api off: the hook's log route accepts only it
    hook = install_hook(pb.hooks_dir, opts.pb_hooks)  # PocketBase loads hooks once, at start
    run_id = new_run_id()
    base = {**child_environ(environ), RUN_ENV: run_id}
    env = pocketbase_env(base, api.url if api else None, token)
    child: Child | None = None
    try:
        child = spawn([binary, "serve", *serve_args], env, str(cwd))
    except SpawnError:
        pass
    else:
        _early_groups.append(child.pgid)
        _install_early_signals()
    return PbStart((opts.spawn_key(), tuple(serve_args), cwd), binary, pb, run_id, base, api,
                   token, hook, child, loaded)


def _end_previous_run(data_dir: Path) -> None:
    """What a killed pbhost left running on this data dir ends before anything is spawned.
    A clean exit removes the state file, so only then is leftovers.py (json, logging) loaded."""
    if state_path(data_dir).exists():
        from pbhost.orphans.leftovers import end_previous_run
        end_previous_run(data_dir)


def _strict_config(opts: Options, cwd: Path,
                   environ: Mapping[str, str]) -> LoadedConfig | None:
    """With --strict a broken process file is fatal, so it is checked before PocketBase starts."""
    if not opts.strict:
        return None
    from pbhost.config.loader import (  # only --strict pays for it before the spawn
        find_config,
        load_config,
    )
    path = find_config(opts.config, cwd)
    return load_config(path, environ) if path is not None else None


def hangup_reloads() -> bool:
    """Whether SIGHUP means "reload pb_processes.json" (the daemon convention: systemd's
    ExecReload, supervisord, nohup, Docker) rather than "the terminal is gone, shut down".

    pbhost runs on a terminal when its stdin was a terminal at start-up. Asked once and kept:
    after a real hang-up the terminal's fds no longer answer as a terminal. nohup, systemd,
    Docker without -t and supervisord all give pbhost a stdin that is not one."""
    global _on_terminal
    if _on_terminal is None:
        _on_terminal = os.isatty(0)
    return not _on_terminal


def take_hangup() -> bool:
    """True once if a SIGHUP asked for a reload before the loop's handlers existed."""
    global _hangup_due
    due, _hangup_due = _hangup_due, False
    return due


def _on_early_signal(sig: int, frame: object) -> None:
    global _interrupted, _forced, _hangup_due
    if sig == signal.SIGHUP and hangup_reloads():
        _hangup_due = True  # the config is read after this, or reloaded once the loop runs
        return
    if not _interrupted:
        _interrupted = True
        raise StartupInterrupted(sig)
    # Start-up is already unwinding (stopping PocketBase): raising again would break that
    # cleanup with a traceback. A second Ctrl-C kills at once, as it does once the loop runs.
    if sig == signal.SIGINT:
        _forced = True
        for pgid in _early_groups:
            killpg(pgid, signal.SIGKILL)


def forced() -> bool:
    """A second Ctrl-C during start-up killed PocketBase at once (exit 130, as after start-up)."""
    return _forced


def _install_early_signals() -> None:
    """Until the loop installs its handlers, a shutdown signal must not leave PocketBase behind
    (it runs in a session of its own: the terminal's Ctrl-C does not reach it)."""
    hangup_reloads()  # now, while a terminal still answers as one
    for sig in EARLY_SIGNALS:
        signal.signal(sig, _on_early_signal)


def fast_start(argv: Sequence[str]) -> None:
    """Spawn PocketBase now if argv is a plain `serve`; `take()` hands it to run_serve."""
    global _pending
    parsed = parse_early(argv, os.environ)
    if parsed is None:
        return
    try:
        cwd = Path.cwd()
        if state_path(describe(parsed[1], cwd).data_dir).exists():
            return  # a killed pbhost's leftovers: ended by the usual path, which logs each one
        start = start_pocketbase(parsed[0], parsed[1], cwd, os.environ)
    except (PbhostError, OSError):
        return  # the click path meets the same problem and reports it the usual way
    _pending = start if start.child is not None else None


def take(opts: Options, serve_args: Sequence[str], cwd: Path) -> PbStart | None:
    """The PocketBase fast_start spawned, if it was started from these very inputs."""
    global _pending
    start, _pending = _pending, None
    if start is not None and start.key != (opts.spawn_key(), tuple(serve_args), cwd):
        _drop(start)  # the quick reading of argv differed from click's: start again properly
        return None
    return start


def discard() -> None:
    """Stop a PocketBase that fast_start spawned and nobody took (click refused the options)."""
    global _pending
    start, _pending = _pending, None
    if start is not None:
        _drop(start)


def _drop(start: PbStart) -> None:
    stop(start)
    if start.child is not None:  # never handed to a log stream: its pipes are still ours
        os.close(start.child.out_fd)
        os.close(start.child.err_fd)


def stop(start: PbStart) -> None:
    """End PocketBase's group (SIGTERM, the stop timeout, SIGKILL); a no-op once the reaper
    collected it.

    Only for when no event loop runs (before the host, or after it failed), so a reaper of its
    own collects the group's exits meanwhile (a zombie still counts as a member of its group).
    """
    child = start.child
    popen = child.popen if child is not None else None
    if child is None or popen is None or popen.returncode is not None:
        return
    from pbhost.process.reaper import Reaper, exit_code  # off the path to the spawn

    reaper = Reaper()
    reaper.watch(child.pid, lambda status: setattr(popen, "returncode", exit_code(status)))
    end_blocking(ending(alive([Group(child.pgid, reap=reaper.reap)]), STOP_TIMEOUT))

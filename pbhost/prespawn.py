"""Starting PocketBase: the steps that must come before its spawn, and the spawn, in one place.

`pbhost serve` would spend ~200 ms importing click, asyncio and the config loader before
PocketBase even starts, and PocketBase needs none of them. So `__main__` reads the few options
that decide how PocketBase starts straight from argv and spawns it first (`fast_start`); then
the usual click path runs and `run_serve` takes that child over (`take`). For anything unusual in
argv the fast path steps aside, and `run_serve` calls the same `start_pocketbase` itself.

Import-light on purpose (os, signal, subprocess and pbhost's light modules): whatever this
module imports is paid for before PocketBase starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from .errors import PbhostError
from .pbhooks import InstallResult, install_hook
from .pocketbase import PocketBaseInfo, describe, find_binary
from .procctl import set_child_subreaper
from .runenv import RUN_ENV, child_environ, new_run_id, state_path
from .spawn import Child, SpawnError, killpg, spawn

TYPE_CHECKING = False  # typing and dataclasses cost ~10 ms to import: not before the spawn
if TYPE_CHECKING:
    from typing import Mapping, Sequence

    from .config import LoadedConfig
    from .apiaddr import ApiAddress

# pbhost's own options, as cli.py declares them (tests/test_startup.py checks the two agree):
# those that take a value, by the Options field they fill, and the flags.
VALUE_OPTIONS = {"-c": "config", "--config": "config", "--pocketbase": "pocketbase",
                 "--api": "api", "--log-format": "log_format"}
FLAG_OPTIONS = {"--color": "color", "--no-color": "color", "--timestamps": "timestamps",
                "--strict": "strict", "-v": "verbose", "--verbose": "verbose",
                "--pb-hooks": "pb_hooks", "--no-pb-hooks": "pb_hooks"}
# click's boolean words (BoolParamType), for PBHOST_STRICT and PBHOST_PB_HOOKS.
_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"", "0", "false", "f", "no", "n", "off"}
EARLY_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
STOP_TIMEOUT = 5.0


class EarlyOptions:
    """The options that decide how PocketBase starts (the rest can wait for click)."""

    __slots__ = ("config", "pocketbase", "strict", "api", "pb_hooks")

    def __init__(self, config: str | None, pocketbase: str | None, strict: bool,
                 api: str | None, pb_hooks: bool) -> None:
        self.config = config
        self.pocketbase = pocketbase
        self.strict = strict
        self.api = api  # PocketBase's env names the control API (its JS hook forwards to it)
        self.pb_hooks = pb_hooks  # pbhost.pb.js is installed before PocketBase starts

    def _key(self) -> tuple[str | None, str | None, bool, str | None, bool]:
        return (self.config, self.pocketbase, self.strict, self.api, self.pb_hooks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EarlyOptions) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]


class PbStart:
    """A PocketBase started (or that failed to start: child None) from these inputs."""

    def __init__(self, key: tuple[EarlyOptions, tuple[str, ...], Path], binary: str,
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


def parse_early(argv: Sequence[str],
                environ: Mapping[str, str]) -> tuple[EarlyOptions, list[str]] | None:
    """`[OPTIONS] serve ARGS...` -> (options, ARGS); None for anything else (click decides).

    Only the names and arity of the options are known here; their values are checked by click,
    which runs right after (a value it refuses stops the PocketBase started meanwhile).
    """
    found: dict[str, str | bool] = {}
    i = 0
    while i < len(argv) and argv[i] != "serve":
        name, eq, inline = argv[i].partition("=") if argv[i].startswith("--") else (argv[i], "", "")
        if name in VALUE_OPTIONS:
            if not eq:
                i += 1
                if i == len(argv):
                    return None
                inline = argv[i]
            found[VALUE_OPTIONS[name]] = inline
        elif name in FLAG_OPTIONS and not eq:
            found[FLAG_OPTIONS[name]] = not name.startswith("--no-")
        else:
            return None  # --help, --version, another command, a typo, -vc FILE...
        i += 1
    serve_args = list(argv[i + 1:])
    if i == len(argv) or "--help" in serve_args or "-h" in serve_args:
        return None
    strict_env = environ.get("PBHOST_STRICT", "").strip().lower()
    hooks_env = environ.get("PBHOST_PB_HOOKS", "").strip().lower()
    for key, value in (("strict", strict_env), ("pb_hooks", hooks_env)):
        if key not in found and value not in _TRUE | _FALSE:
            return None  # click will refuse it with its own message
    return EarlyOptions(
        config=str(found.get("config") or environ.get("PBHOST_CONFIG") or "") or None,
        pocketbase=str(found.get("pocketbase") or environ.get("PBHOST_POCKETBASE") or "") or None,
        strict=bool(found.get("strict")) or strict_env in _TRUE,
        api=str(found.get("api") or environ.get("PBHOST_API") or "") or None,
        # An empty PBHOST_PB_HOOKS is unset for click: the default (on) holds.
        pb_hooks=bool(found.get("pb_hooks", hooks_env not in _FALSE - {""}))), serve_args


def start_pocketbase(opts: EarlyOptions, serve_args: Sequence[str], cwd: Path,
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
    # PocketBase's env must name the API; apiaddr.py is import-light for this reason.
    from .apiaddr import new_token, parse_api_address
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
    return PbStart((opts, tuple(serve_args), cwd), binary, pb, run_id, base, api, token, hook,
                   child, loaded)


def pocketbase_env(base: Mapping[str, str], api_url: str | None,
                   token: str | None) -> dict[str, str]:
    """PocketBase's environment (for its first start and every restart): the run's, plus where
    the control API is and the token its JS hook forwards /api/pm/* with (the hook's log route
    checks the same token, so it is there also with --api off)."""
    env = dict(base)
    if token:
        env["PBHOST_API_TOKEN_INTERNAL"] = token
    if api_url:
        env["PBHOST_API_URL"] = api_url
    return env


def _end_previous_run(data_dir: Path) -> None:
    """What a killed pbhost left running on this data dir ends before anything is spawned.
    A clean exit removes the state file, so only then is leftovers.py (json, logging) loaded."""
    if state_path(data_dir).exists():
        from .leftovers import end_previous_run
        end_previous_run(data_dir)


def _strict_config(opts: EarlyOptions, cwd: Path,
                   environ: Mapping[str, str]) -> LoadedConfig | None:
    """With --strict a broken process file is fatal, so it is checked before PocketBase starts."""
    if not opts.strict:
        return None
    from .config import find_config, load_config  # only --strict pays for it before the spawn
    path = find_config(opts.config, cwd)
    return load_config(path, environ) if path is not None else None


def _on_early_signal(sig: int, frame: object) -> None:
    global _interrupted, _forced
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


def take(opts: EarlyOptions, serve_args: Sequence[str], cwd: Path) -> PbStart | None:
    """The PocketBase fast_start spawned, if it was started from these very inputs."""
    global _pending
    start, _pending = _pending, None
    if start is not None and start.key != (opts, tuple(serve_args), cwd):
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
    """SIGTERM PocketBase's group, wait, SIGKILL; reap it. No-op once the reaper collected it.

    Only for when no event loop runs (before the host, or after it failed): then nothing else
    waits on this pid, so waiting on the Popen here steals no status from the reaper.
    """
    child = start.child
    if child is None or child.popen.returncode is not None:
        return
    killpg(child.pgid, signal.SIGTERM)
    try:
        child.popen.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        killpg(child.pgid, signal.SIGKILL)
        child.popen.wait()
    killpg(child.pgid, signal.SIGKILL)  # anything PocketBase spawned (xdg-open) goes too

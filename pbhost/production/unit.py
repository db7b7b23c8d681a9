"""The systemd unit `pbhost systemd-unit` prints for this project."""

from __future__ import annotations

import getpass
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

from pbhost.config.loader import find_config, load_config
from pbhost.options import OPTIONS, Options
from pbhost.process.ending import STOP_TIMEOUT

STOP_MARGIN = 5.0  # seconds on top of pbhost's own worst case, for the final sweep and exit


def stop_budget(sidecar_timeouts: Sequence[float], pb_timeout: float) -> int:
    """Worst case of an orderly stop: sidecars in parallel, their escapees, then PocketBase."""
    longest = max(sidecar_timeouts, default=0.0)
    return int(2 * longest + pb_timeout + STOP_MARGIN + 0.999)


def pbhost_command(argv0: str, executable: str) -> list[str]:
    """How systemd should start this very pbhost: the console script that is running now,
    else the same `python -m pbhost`."""
    script = Path(argv0)
    if script.name == "pbhost" and script.is_file():
        return [str(script.resolve())]
    return [str(Path(executable).absolute()), "-m", "pbhost"]


def make_unit(opts: Options, serve_args: list[str], cwd: Path) -> str:
    """The unit for `pbhost [opts] serve [serve_args]` run from `cwd`, as this user."""
    path = find_config(opts.config, cwd)
    timeouts = [p.stop_timeout for p in load_config(path, os.environ).processes] if path else []
    command = pbhost_command(sys.argv[0], sys.executable) + _own_options(opts, cwd)
    user = None if os.geteuid() == 0 else getpass.getuser()
    return unit_text([*command, "serve", *serve_args], cwd,
                     stop_timeout=stop_budget(timeouts, STOP_TIMEOUT), user=user)


def _own_options(opts: Options, cwd: Path) -> list[str]:
    """pbhost's options as given now (flags or PBHOST_* variables), spelt out for the unit:
    every one that differs from its default, from the one option table. Paths are made
    absolute, since the unit's working directory is the only cwd the service will know."""
    out: list[str] = []
    for opt in OPTIONS:
        value = getattr(opts, opt.field)
        if value == opt.default or value is None:
            continue
        if opt.flag:
            out.append(opt.names[-1] if value else opt.off_names[-1])
            continue
        text = str(value)
        if opt.field == "config" or (opt.field == "pocketbase" and os.sep in text):
            text = str((cwd / text).resolve())
        out += [opt.names[-1], text]
    return out


def unit_text(command: Sequence[str], workdir: Path, *, stop_timeout: int,
              user: str | None = None, description: str | None = None) -> str:
    exec_start = " ".join(_quote(arg) for arg in command)
    lines = [
        "[Unit]",
        f"Description={description or f'PocketBase and its sidecars ({workdir})'}",
        "After=network.target",
        "",
        "[Service]",
        # READY=1 is sent once PocketBase answers /api/health and the sidecars are spawned.
        "Type=notify",
        "NotifyAccess=main",
        f"WorkingDirectory={str(workdir).replace('%', '%%')}",
        f"ExecStart={exec_start}",
        # `systemctl reload`: SIGHUP makes pbhost re-read pb_processes.json and apply the
        # difference (PocketBase is never restarted); a broken file changes nothing.
        "ExecReload=/bin/kill -HUP $MAINPID",
        # SIGTERM to pbhost alone: it stops the sidecars, then PocketBase, in order. Whatever is
        # left in the cgroup after TimeoutStopSec gets SIGKILL from systemd.
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={stop_timeout}",
        "Restart=on-failure",
        "RestartSec=2",
        # pbhost exits 1 when PocketBase gave up, 2 on a config error under --strict, 127
        # when there is no pocketbase binary: restarting cannot fix the last two.
        "RestartPreventExitStatus=2 127",
        "# WatchdogSec=30",
    ]
    lines.append(f"User={user}" if user else "# User=pbhost")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def _quote(arg: str) -> str:
    """systemd's command-line quoting is close enough to the shell's for paths and flags;
    a `%` must be doubled (specifier) and `$` too (variable expansion)."""
    return shlex.quote(arg).replace("%", "%%").replace("$", "$$")

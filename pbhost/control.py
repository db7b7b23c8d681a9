"""Where the control API listens, and `control.json`, through which the CLI finds it.

Kept free of asyncio and h11: `pbhost serve` uses it before PocketBase is spawned (to hand
PocketBase the API address and token) and the client commands use it to find a running pbhost.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONTROL_DIR = ".pbhost"   # pbhost's own files in the data dir (also leftovers.py's state.json)
CONTROL_FILE = "control.json"


# -- control.json ------------------------------------------------------------------------
@dataclass(frozen=True)
class ControlInfo:
    url: str
    token: str
    pid: int


def control_path(data_dir: Path) -> Path:
    return data_dir / CONTROL_DIR / CONTROL_FILE


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with a file only its owner can read (0600 in a 0700 folder).

    Used for every file pbhost keeps in `<data dir>/.pbhost/` (control.json, state.json).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)  # an existing folder may have been created wider
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_control(data_dir: Path, info: ControlInfo) -> Path:
    path = control_path(data_dir)
    write_private(path, json.dumps({"url": info.url, "token": info.token,
                                    "pid": info.pid}).encode())
    return path


def remove_control(path: Path, pid: int) -> None:
    """Remove control.json if it is still ours (another pbhost may have taken the data dir)."""
    try:
        if read_control_file(path).pid == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def read_control_file(path: Path) -> ControlInfo:
    """Parse control.json; OSError if unreadable, ValueError if it is not what pbhost writes."""
    data: Any = json.loads(path.read_text())
    if not (isinstance(data, dict) and isinstance(data.get("url"), str)
            and isinstance(data.get("token"), str) and isinstance(data.get("pid"), int)):
        raise ValueError("expected an object with url, token and pid")
    return ControlInfo(data["url"], data["token"], data["pid"])


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True

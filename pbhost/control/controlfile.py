"""`<data dir>/.pbhost/control.json`: where the control API listens and its token, through
which the client commands find a running pbhost. No asyncio or h11: the client reads it too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ControlInfo:
    url: str
    token: str
    pid: int


def encode_control(info: ControlInfo) -> bytes:
    return json.dumps({"url": info.url, "token": info.token, "pid": info.pid}).encode()


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

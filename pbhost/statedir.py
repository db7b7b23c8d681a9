"""pbhost's own folder in PocketBase's data dir, `<data dir>/.pbhost/`: its files, and the one
way they are written (atomically, readable by the owner only).

state.json (orphans/leftovers.py: what this run spawned) and control.json (control/controlfile.py:
where the control API listens) live here. Import-light: the fast start path checks for a
state.json left by a killed pbhost before PocketBase is spawned.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR = ".pbhost"          # created 0700; files pbhost did not write are left alone
STATE_FILE = "state.json"
CONTROL_FILE = "control.json"


def state_path(data_dir: Path) -> Path:
    return data_dir / STATE_DIR / STATE_FILE


def control_path(data_dir: Path) -> Path:
    return data_dir / STATE_DIR / CONTROL_FILE


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with a file only its owner can read (0600 in a 0700 folder)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)  # an existing folder may have been created wider
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)

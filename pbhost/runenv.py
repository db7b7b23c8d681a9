"""What one run gives every child it spawns, and where it records them. Light on purpose.

The fast start path (prespawn.py) spawns PocketBase before logging, json or dataclasses are
imported, yet PocketBase must get the environment every child gets (the run id by which the
next run finds what a killed pbhost left behind; none of pbhost's own systemd variables), and
a state file that such a pbhost left must be dealt with before anything is spawned.
leftovers.py and systemd.py use these names.
"""

from __future__ import annotations

import os
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping

RUN_ENV = "PBHOST_RUN_ID"
STATE_DIR = ".pbhost"          # shared with control.json: created 0700, other files left alone
STATE_FILE = "state.json"
# Variables meant for pbhost alone: a sidecar that saw them could claim to be the service
# (READY=1 before PocketBase is healthy) or be held to pbhost's watchdog.
OWN_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def new_run_id() -> str:
    return os.urandom(8).hex()  # secrets.token_hex(8), without importing secrets


def state_path(data_dir: Path) -> Path:
    return data_dir / STATE_DIR / STATE_FILE


def child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in OWN_VARIABLES}

"""What one run gives every child it spawns. Light on purpose.

The fast start path (startup/prespawn.py) spawns PocketBase before logging, json or dataclasses
are imported, yet PocketBase must get the environment every child gets: the run id by which the
next run finds what a killed pbhost left behind (orphans/leftovers.py), and none of pbhost's own
systemd variables.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping

RUN_ENV = "PBHOST_RUN_ID"
# Variables meant for pbhost alone: a sidecar that saw them could claim to be the service
# (READY=1 before PocketBase is healthy) or be held to pbhost's watchdog.
OWN_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def new_run_id() -> str:
    return os.urandom(8).hex()  # secrets.token_hex(8), without importing secrets


def child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in OWN_VARIABLES}

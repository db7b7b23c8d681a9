"""pbhost's PocketBase hook: install `pbhost.pb.js` into PocketBase's hooks dir, check it answers.

The hook (the package file `pbhook.js`) serves `/api/pm/*` on PocketBase's own port for
superusers and takes sidecar output into PocketBase's logger (see docs/pocketbase-hook.md).

Installing runs before PocketBase is spawned, on the fast start path (startup/prespawn.py)
before asyncio or click are imported, so this module imports nothing but os and pathlib (no
dataclasses, typing or logging: ~10 ms before the spawn). PocketBase restarts itself on any
change in its hooks dir, so the installer writes nothing at all when the file is current, and
never touches any other file there.
"""

from __future__ import annotations

import os
from pathlib import Path

from pbhost.statedir import replace_atomically

HOOK_NAME = "pbhost.pb.js"
SOURCE = Path(__file__).with_name("pbhook.js")
PROBE_PATH = "/api/pbhost/probe"
LOGS_PATH = "/api/pbhost/logs"
# Line 1 of the hook starts so; a file without it is not ours and is left alone.
_MARKER = b"// pbhost hook, revision "
# logging's levels, for log_line(); logging itself costs ~4 ms to import on the fast path.
DEBUG, INFO, WARNING = 10, 20, 30

INSTALLED, UPDATED, CURRENT, DISABLED, FOREIGN, FAILED = (
    "installed", "updated", "current", "disabled", "foreign", "failed")


class InstallResult:
    """What `install_hook` did; logged once the log stream exists."""

    __slots__ = ("path", "action", "detail")

    def __init__(self, path: Path, action: str, detail: str = "") -> None:
        self.path = path
        self.action = action  # one of the constants above
        self.detail = detail

    @property
    def wanted(self) -> bool:
        """False with --no-pb-hooks: no probe, no log bridge."""
        return self.action != DISABLED

    def log_line(self) -> tuple[int, str]:
        shown = _display(self.path)
        if self.action == INSTALLED:
            return INFO, f"installed PocketBase hook {shown} (/api/pm/* on PocketBase's port)"
        if self.action == UPDATED:
            return INFO, f"updated PocketBase hook {shown} ({self.detail})"
        if self.action == CURRENT:
            return DEBUG, f"PocketBase hook {shown} is current"
        if self.action == DISABLED:
            return DEBUG, "PocketBase hook not installed (--no-pb-hooks / PBHOST_PB_HOOKS=0)"
        if self.action == FOREIGN:
            return WARNING, (f"{shown} exists but was not written by pbhost; leaving it "
                             "alone (delete it to get pbhost's hook back)")
        return WARNING, (f"cannot install PocketBase hook {shown}: {self.detail}; "
                         "/api/pm/* on PocketBase's port and the log bridge are off")


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def revision(content: bytes) -> int | None:
    """The hook revision on line 1, or None for a file pbhost did not write."""
    if not content.startswith(_MARKER):
        return None
    digits = content[len(_MARKER):].split(b".", 1)[0].split(None, 1)
    return int(digits[0]) if digits and digits[0].isdigit() else None


def hook_source() -> bytes:
    return SOURCE.read_bytes()


def install_hook(hooks_dir: Path, enabled: bool = True) -> InstallResult:
    """Put pbhost.pb.js into `hooks_dir` if it is missing or outdated; never raises OSError."""
    target = hooks_dir / HOOK_NAME
    if not enabled:
        return InstallResult(target, DISABLED)
    wanted = hook_source()
    try:
        current = target.read_bytes()
    except FileNotFoundError:
        current = None
    except OSError as exc:
        return InstallResult(target, FAILED, exc.strerror or str(exc))
    if current == wanted:
        return InstallResult(target, CURRENT)  # nothing written: PocketBase sees no change
    if current is not None and revision(current) is None:
        return InstallResult(target, FOREIGN)
    try:
        _write_atomically(target, wanted)
    except OSError as exc:
        return InstallResult(target, FAILED, exc.strerror or str(exc))
    if current is None:
        return InstallResult(target, INSTALLED)
    return InstallResult(target, UPDATED,
                         f"revision {revision(current)} -> {revision(wanted)}")


def _write_atomically(target: Path, data: bytes) -> None:
    """Temp file + rename in the same dir: PocketBase never loads a half-written hook.

    The temp name starts with a dot and does not end in .pb.js, so PocketBase would not load it
    even if it were left behind. (A dot dir would not spare a restart: PocketBase restarts on
    any entry created directly in the hooks dir, dot dirs included; and this runs before
    PocketBase starts anyway.)
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(target, data, 0o644, target.with_name(f".{target.name}.{os.getpid()}.tmp"),
                       fsync=True)


def probe_problem(status: int | None, body: object, expected: int | None) -> str | None:
    """Why the probe answer shows the hook is not working, or None when it is."""
    if status == 200 and isinstance(body, dict) and body.get("pbhost") == "hook":
        if body.get("revision") != expected:
            return (f"PocketBase runs hook revision {body.get('revision')}, pbhost expects "
                    f"{expected}: was {HOOK_NAME} edited or replaced?")
        return None
    if status is None:
        return "PocketBase did not answer the probe"
    if status == 404:
        return (f"PocketBase does not serve pbhost's hook (GET {PROBE_PATH} -> 404). Look for "
                f"`failed to execute {HOOK_NAME}` in PocketBase's output; check that the hooks "
                "dir is the one PocketBase loads and that the hook was not disabled")
    return f"unexpected answer to GET {PROBE_PATH}: HTTP {status}"

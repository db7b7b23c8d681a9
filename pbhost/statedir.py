"""pbhost's own folder in PocketBase's data dir, `<data dir>/.pbhost/`: its files, the one way
they are written (atomically, readable by the owner only), and how a file is kept up to date
when the disk refuses (`KeptFile`).

state.json (orphans/leftovers.py: what this run spawned) and control.json (control/controlfile.py:
where the control API listens) live here. Import-light: the fast start path checks for a
state.json left by a killed pbhost before PocketBase is spawned (logging and asyncio are
imported only by KeptFile, which runs on the loop).
"""

from __future__ import annotations

import os
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import logging

STATE_DIR = ".pbhost"          # created 0700; files pbhost did not write are left alone
STATE_FILE = "state.json"
CONTROL_FILE = "control.json"
RETRY_FIRST = 5.0              # seconds before the first retry of a write the disk refused
RETRY_CAP = 300.0              # the longest wait between retries


def state_path(data_dir: Path) -> Path:
    return data_dir / STATE_DIR / STATE_FILE


def control_path(data_dir: Path) -> Path:
    return data_dir / STATE_DIR / CONTROL_FILE


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with a file only its owner can read (0600 in a 0700 folder).

    The data goes to a temp file beside it, renamed over `path` once whole: a reader sees the
    old file or the new one, never a part. If anything fails (a full or read-only disk) the temp
    file is removed and OSError raised; `path` is untouched. No fsync: both files describe this
    boot's processes (state.json carries the boot id, control.json a live pid), so after a power
    loss the next run ignores them whatever the disk kept; a killed pbhost leaves the page cache
    intact.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)  # an existing folder may have been created wider
    replace_atomically(path, data, 0o600, path.with_name(f".{path.name}.{os.getpid()}"))


def replace_atomically(path: Path, data: bytes, mode: int, tmp: Path,
                       fsync: bool = False) -> None:
    """Write `data` to `tmp` (created with `mode`), then rename it over `path`: a reader sees
    the old file or the new one, never a part. On any failure `tmp` is removed, `path` is
    untouched and the error raised. `fsync` when the file must outlive a power loss."""
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # whatever the umask took away
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class KeptFile:
    """One file of `.pbhost/` that follows the latest data given to `put`.

    A write the disk refuses (ENOSPC, EROFS, EACCES...) never stops pbhost: it is said once,
    with what it means for the user, and retried on the next `put` and on a timer with backoff
    (5 s doubling to 5 min). The timer exists only while the file is out of date, so a pbhost
    with nothing to write costs no CPU. Used from the event loop (outside one, a failed write
    waits for the next `put`).
    """

    def __init__(self, path: Path, consequence: str) -> None:
        self.path = path
        self._consequence = consequence     # what a stale file means, for the one warning
        self._data: bytes | None = None     # not yet written
        self._failing = False
        self._delay = RETRY_FIRST
        self._timer: asyncio.TimerHandle | None = None

    @property
    def current(self) -> bool:
        """The file holds the latest data (or nothing was ever put)."""
        return self._data is None

    def put(self, data: bytes) -> bool:
        """Write `data` now if the disk allows (True), else keep it for a retry (False)."""
        self._data = data
        return self._write()

    def close(self) -> None:
        """Stop retrying (the file is about to be removed, or pbhost exits)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._data = None

    def _write(self) -> bool:
        if self._data is None:
            return True
        try:
            write_private(self.path, self._data)
        except OSError as exc:
            self._refused(exc)
            return False
        self._data = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._failing:
            self._failing = False
            self._delay = RETRY_FIRST
            _log().info("wrote %s again", self.path)
        return True

    def _refused(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            _log().warning("cannot write %s: %s; pbhost keeps running and retries (until then "
                           "%s)", self.path, exc.strerror or exc, self._consequence)
        if self._timer is not None:
            return
        import asyncio
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a benchmark, a test): the next put() retries
        self._timer = loop.call_later(self._delay, self._retry)
        self._delay = min(self._delay * 2, RETRY_CAP)

    def _retry(self) -> None:
        self._timer = None
        self._write()


def _log() -> logging.Logger:
    import logging  # loaded by then; not on the fast path's import list
    return logging.getLogger("pbhost")

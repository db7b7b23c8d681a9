"""Start one child in a session of its own, its stdout and stderr on fresh pipes.

No asyncio here: the fast start path spawns PocketBase with this before the event loop exists.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import time

from pbhost.process.procctl import nofile_limit, preexec_hook

# No dataclasses or typing here: importing them costs ~10 ms before PocketBase can start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping, Sequence

PIPE_SIZE = 1 << 20  # a big pipe lets a chatty child run ahead while the loop is busy


class Child:
    """A spawned child. The Popen object is kept only so that it is not collected early:
    the reaper, not Popen, collects the exit status (a test's fake child has none)."""

    __slots__ = ("pid", "popen", "out_fd", "err_fd", "started", "started_wall")

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None, out_fd: int, err_fd: int,
                 started: float, started_wall: float) -> None:
        self.pid = pid
        self.popen = popen
        self.out_fd = out_fd            # non-blocking read ends, handed to the log stream
        self.err_fd = err_fd
        self.started = started          # time.monotonic()
        self.started_wall = started_wall  # time.time(), for the API

    def __repr__(self) -> str:
        return f"Child(pid={self.pid})"

    @property
    def pgid(self) -> int:
        return self.pid  # start_new_session makes the child its own group leader


def killpg(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False when it is already gone (ESRCH)."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member changed uid; the group still exists


# Spawns that fail for want of resources, not because of the process: pbhost's fds (EMFILE),
# the system's (ENFILE), processes or memory for the fork (EAGAIN, ENOMEM). Retried later.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM,
                             errno.ENOBUFS})


class SpawnError(OSError):
    """The child could not be started: for want of resources (`transient`: the same spawn can
    succeed later), or at all (binary missing, not executable, cwd missing)."""

    @property
    def transient(self) -> bool:
        return self.errno in RESOURCE_ERRNOS


def _pipe(opened: list[int]) -> tuple[int, int]:
    """A pipe whose read end is non-blocking; its fds are appended to `opened` at once, so a
    failure later in the spawn can close them."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    opened += (read_fd, write_fd)
    try:
        fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, AttributeError):
        pass  # above /proc/sys/fs/pipe-max-size for this user, or not Linux: the default works
    os.set_blocking(read_fd, False)
    return read_fd, write_fd


def describe_oserror(exc: OSError, argv0: str, cwd: str) -> str:
    """One line a user can act on, for the usual reasons a spawn fails."""
    if exc.errno == errno.ENOENT:
        if exc.filename and os.path.abspath(str(exc.filename)) == os.path.abspath(cwd):
            return f"cwd {cwd} does not exist"
        return f"command not found: {argv0}"
    if exc.errno == errno.EACCES:
        return f"permission denied: {argv0} (not executable?)"
    if exc.errno == errno.ENOEXEC:
        return f"exec format error: {argv0} (missing #! line?)"
    if exc.errno == errno.ENOTDIR:
        return f"not a directory: {cwd}"
    if exc.errno == errno.EMFILE:
        return (f"pbhost has too many open files (EMFILE; its limit is {nofile_limit()}: raise "
                "LimitNOFILE= or ulimit -n)")
    if exc.errno == errno.ENFILE:
        return "the system's open-file table is full (ENFILE; see /proc/sys/fs/file-max)"
    if exc.errno == errno.EAGAIN:
        return "cannot fork now: process limit reached (EAGAIN; see ulimit -u or TasksMax=)"
    if exc.errno in (errno.ENOMEM, errno.ENOBUFS):
        return f"out of memory ({errno.errorcode[exc.errno]})"
    return f"cannot start {argv0}: {exc.strerror or exc}"


def spawn(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> Child:
    """Spawn `argv` in its own session; raise SpawnError with a readable reason on failure."""
    opened: list[int] = []
    try:
        out_r, out_w = _pipe(opened)
        err_r, err_w = _pipe(opened)
        popen = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
            stdout=out_w, stderr=err_w, start_new_session=True, close_fds=True,
            preexec_fn=preexec_hook())  # dies with pbhost; gets the fd limit pbhost was given
    except OSError as exc:
        for fd in opened:
            os.close(fd)
        raise SpawnError(exc.errno, describe_oserror(exc, argv[0], cwd)) from None
    os.close(out_w)
    os.close(err_w)
    return Child(popen.pid, popen, out_r, err_r, time.monotonic(), time.time())

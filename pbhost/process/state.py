"""A process's states, the moves allowed between them, and the restart policy as pure functions."""

from __future__ import annotations

from enum import Enum

BACKOFF_CAP = 30.0       # seconds; the longest wait between two restarts
HEALTHY_RUN = 10.0       # seconds; a run at least this long resets the failure count
RESOURCE_RETRY_CAP = 5.0  # seconds; the longest wait between spawns failing for want of fds


class ProcessState(str, Enum):
    STARTING = "starting"    # spawned, not yet known to be up (PocketBase: health not yet 200)
    RUNNING = "running"
    BACKOFF = "backoff"      # exited too soon; waiting before the next start
    STOPPING = "stopping"    # SIGTERM sent to the group, waiting for it to go
    STOPPED = "stopped"      # stopped on request; or not started yet (autostart false, waiting
                             # for its dependencies); or a job that completed (exit code 0)
    CRASHED = "crashed"      # gave up: maxRetries quick failures, or cannot be started at all

    def __str__(self) -> str:
        return self.value


S = ProcessState
# Named groups, so a rule reads as what it means rather than as a list of states.
ALIVE = frozenset({S.STARTING, S.RUNNING})        # a run is under way: it has a pid and uptime
COMING_UP = frozenset({S.STARTING, S.BACKOFF})   # on its way to running (PocketBase: to healthy)
HALTED = frozenset({S.STOPPING, S.STOPPED})      # stopped, or being stopped, on request
ALLOWED: dict[ProcessState, frozenset[ProcessState]] = {
    S.STOPPED: frozenset({S.STARTING, S.CRASHED}),
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.CRASHED, S.STOPPING, S.STARTING}),
    # RUNNING -> STOPPED: a job (a process others wait for as `completed`) exited with code 0.
    S.RUNNING: frozenset({S.STARTING, S.BACKOFF, S.CRASHED, S.STOPPING, S.STOPPED}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.CRASHED, S.STOPPING}),
    # STARTING: a restart; BACKOFF or CRASHED: pbhost's own restart of a process that went
    # over its memory limit right after starting, which counts as a quick failure.
    S.STOPPING: frozenset({S.STOPPED, S.STARTING, S.BACKOFF, S.CRASHED}),
    S.CRASHED: frozenset({S.STARTING, S.STOPPED}),
}


def can_move(old: ProcessState, new: ProcessState) -> bool:
    return new in ALLOWED[old]


def backoff_delay(failures: int, base: float, cap: float = BACKOFF_CAP) -> float:
    """Wait before restart number `failures` (1-based): base, 2×base, 4×base … never above cap."""
    if failures <= 0:
        return 0.0
    # Exponent clamped so a long crash loop cannot overflow the float.
    return min(cap, base * 2.0 ** min(failures - 1, 62))


def gives_up(failures: int, max_retries: int | None) -> bool:
    """True once `failures` consecutive quick failures reach maxRetries (None: never)."""
    return max_retries is not None and failures >= max_retries

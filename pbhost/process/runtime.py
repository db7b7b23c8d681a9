"""The seam between a Supervisor and the system: how it spawns, signals, learns of exits, hands
over a child's output and reads the clock.

`Runtime` is the contract, declared once; `SystemRuntime` is the real thing (spawn.py, killpg,
the reaper, the log stream, the monotonic clock). The policy tests drive a Supervisor through
a scripted fake runtime on an event loop with virtual time (tests/vclock.py, used by
tests/test_health_policy.py), so the restart policy is checked in milliseconds, next to the
real-process tests.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

from pbhost.process.reaper import ExitCallback, Reaper, exit_code
from pbhost.process.spawn import Child, killpg, spawn

if TYPE_CHECKING:
    from pbhost.logs.stream import LogStream

class Runtime(Protocol):
    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> Child:
        """Start `argv` in a session of its own; raise SpawnError if it cannot start at all."""

    def signal_group(self, pgid: int, sig: int) -> bool:
        """Signal a whole process group; False when it is gone. Signal 0 only asks."""

    def watch(self, child: Child, on_exit: ExitCallback) -> None:
        """Call `on_exit(status)` once, after `child` has exited and been reaped."""

    def attach(self, proc_id: str, child: Child) -> None:
        """Hand the child's stdout and stderr pipes to the log stream."""

    def now(self) -> float:
        """Monotonic seconds, the clock `Child.started` is read from (the loop's clock)."""


class SystemRuntime:
    """Real processes: spawned in their own session, exits from the one reaper."""

    def __init__(self, reaper: Reaper, stream: LogStream) -> None:
        self._reaper = reaper
        self._stream = stream

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> Child:
        return spawn(argv, env, cwd)

    def signal_group(self, pgid: int, sig: int) -> bool:
        return killpg(pgid, sig)

    def watch(self, child: Child, on_exit: ExitCallback) -> None:
        def exited(status: int) -> None:
            if child.popen is not None:
                child.popen.returncode = exit_code(status)  # so Popen never polls a recycled pid
            on_exit(status)
        self._reaper.watch(child.pid, exited)

    def attach(self, proc_id: str, child: Child) -> None:
        self._stream.attach(proc_id, "stdout", child.out_fd)
        self._stream.attach(proc_id, "stderr", child.err_fd)

    def now(self) -> float:
        return time.monotonic()

"""maxMemory as policy, pure: when a run has been over its limit long enough to act, and
whether that breach counts as a quick failure. No clock, no /proc: memory.py feeds samples.

- A run must stay over the limit for the whole sustain window (`maxMemoryFor`) before pbhost
  acts, so a brief peak (one big request, a model loading) is left alone. One sample at or
  under the limit starts the window again.
- Then the process is restarted gracefully. A breach that began long after the start is not a
  failure: the restart happens at once. One that began within `quick` of the start (the
  healthy-run threshold, 10 s) counts as a quick failure, like a crash, so a process that is
  over its limit right after every start backs off (1 s, 2 s, 4 s …) instead of storming.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20
GIB = 1 << 30
# asyncio may run a timer up to its clock's resolution early: a sample taken by the timer set
# for the window's end must still count as the window's end.
TIMER_SLACK = 0.001


@dataclass(frozen=True)
class Breach:
    rss: int           # bytes over the whole tree, at the last sample
    limit: int         # bytes
    window: float      # the sustain window it stayed over for, seconds
    quick: bool        # began soon after the start: a quick failure

    def reason(self) -> str:
        """`memory 612 MiB over maxMemory 512 MiB for 10s`: lastError, and (with the id in
        front and "; restarting" after) the log line."""
        held = f" for {self.window:g}s" if self.window > 0 else ""
        return f"memory {size(self.rss)} over maxMemory {size(self.limit)}{held}"


class RunWatch:
    """One run of one process: its samples, in order, decide when it has breached."""

    def __init__(self, limit: int, window: float, started: float, quick: float) -> None:
        self.limit = limit
        self.window = window
        self.started = started
        self.quick = quick
        self.over_since: float | None = None  # the first sample of the current stretch over

    def observe(self, now: float, rss: int) -> Breach | None:
        """A Breach once the run has been over the limit for the whole window, else None."""
        if rss <= self.limit:
            self.over_since = None
            return None
        if self.over_since is None:
            self.over_since = now
        if now - self.over_since < self.window - TIMER_SLACK:
            return None
        quick = self.over_since - self.started < self.quick
        return Breach(rss, self.limit, self.window, quick)


def size(nbytes: int) -> str:
    """512 MiB, 1.5 GiB, 300 KiB: whole MiB below a GiB, as limits are usually written."""
    if nbytes >= GIB:
        return f"{nbytes / GIB:.1f}".removesuffix(".0") + " GiB"
    if nbytes >= MIB:
        return f"{nbytes / MIB:.0f} MiB"
    return f"{nbytes / 1024:.0f} KiB"

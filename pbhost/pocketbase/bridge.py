"""The PocketBase hook at run time: the probe after PocketBase starts, and the log bridge
(sidecar lines into PocketBase's logger, bounded, never in the stream's way).

The log stream asks `wants` once per chunk (it filters and takes rate-limit tokens) and calls
`offer` for each line let through, which appends to a bounded buffer (no I/O, no await). An
asyncio task sends the buffer in batches to the hook route `POST /api/pbhost/logs`, which only
accepts pbhost's internal token. What the rate limit or a full buffer turns away is counted and
reported, on the terminal as a `[pbhost]` line and in PocketBase's logs. The terminal stream
itself is never touched.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from pbhost.pocketbase.hookfile import LOGS_PATH, PROBE_PATH, hook_source, probe_problem, revision
from pbhost.pocketbase.localhttp import request
from pbhost.process.hostview import Companion

if TYPE_CHECKING:
    from pbhost.config.loader import ProcessSpec
    from pbhost.logs.stream import LogRecord, LogStream
    from pbhost.pocketbase.binary import PocketBaseInfo
    from pbhost.process.hostview import HostView

log = logging.getLogger("pbhost")

MAX_TEXT = 8192  # characters of one line kept for PocketBase; the terminal has it all


@dataclass(frozen=True)
class BridgeLimits:
    rate: float = 50.0          # lines per second per process, sustained
    burst: int = 200            # lines a quiet process may send at once
    batch: int = 200            # lines per POST; a full batch is sent at once
    interval: float = 1.0       # seconds between sends of a partial batch
    buffer: int = 2000          # lines waiting for PocketBase; more are skipped
    report_every: float = 10.0  # seconds between "skipped N lines" reports


@dataclass
class _Bucket:
    """Token bucket: `rate` tokens a second, at most `burst` saved up."""

    tokens: float
    stamp: float = field(default_factory=time.monotonic)

    def take(self, n: int, rate: float, burst: int, now: float) -> int:
        """Up to `n` tokens, as many as there are: how many lines may go."""
        self.tokens = min(float(burst), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        k = min(n, int(self.tokens))
        self.tokens -= k
        return k


class LogBridge:
    def __init__(self, pb: PocketBaseInfo, token: str, modes: Mapping[str, str],
                 limits: BridgeLimits = BridgeLimits()) -> None:
        # Only sidecars are listed in `modes`: PocketBase's own lines and pbhost's are never
        # bridged (PocketBase's are in its logs already).
        self.modes = {pid: mode for pid, mode in modes.items() if mode != "none"}
        self.limits = limits
        self._pb = pb
        self._headers = (("Authorization", f"Bearer {token}"),
                         ("Content-Type", "application/json"))
        self._buckets = {pid: _Bucket(float(limits.burst)) for pid in self.modes}
        self._buffer: collections.deque[dict[str, str]] = collections.deque()
        self._skipped: collections.Counter[str] = collections.Counter()  # since last report
        self._full = asyncio.Event()   # a whole batch is waiting: send now
        self._work = asyncio.Event()   # something to send or report: without it, no timer runs
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def active(self) -> bool:
        return bool(self.modes)

    def set_modes(self, modes: Mapping[str, str]) -> None:
        """A reload's pbLogs: a process keeps its rate-limit bucket, a new one gets a full one;
        lines of a removed one already buffered still go."""
        self.modes = {pid: mode for pid, mode in modes.items() if mode != "none"}
        self._buckets = {pid: self._buckets.get(pid) or _Bucket(float(self.limits.burst))
                         for pid in self.modes}

    def attach(self, stream: LogStream) -> None:
        """Start collecting lines (before the sidecars start, so none is missed)."""
        if self.active and self._unsubscribe is None:
            self._unsubscribe = stream.subscribe(self.offer, self.wants)

    def start(self) -> None:
        """Start sending (once the hook answered the probe)."""
        if self.active and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # -- the stream side: cheap, synchronous ------------------------------------------------
    def wants(self, proc_id: str, stream: str, n: int) -> int:
        """How many of the next `n` lines the stream hands to `offer` (asked once per chunk):
        those `pbLogs` selects, as far as the rate limit and the buffer allow; the rest are
        counted as skipped without ever being decoded."""
        mode = self.modes.get(proc_id)
        if not (mode == "all" or (mode == "stderr" and stream == "stderr")):
            return 0
        lim = self.limits
        room = max(0, lim.buffer - len(self._buffer))
        k = self._buckets[proc_id].take(min(n, room), lim.rate, lim.burst, time.monotonic())
        if k < n:
            self._skipped[proc_id] += n - k
            self._work.set()
        return k

    def offer(self, rec: LogRecord) -> None:
        """A line `wants` let through."""
        lim = self.limits
        self._buffer.append({"process": rec.id, "stream": rec.stream, "text": rec.text[:MAX_TEXT]})
        self._work.set()
        if len(self._buffer) >= lim.batch:
            self._full.set()

    # -- the sending side -------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_report = loop.time()  # the first skip is reported at once, then at most this often
        while True:
            await self._work.wait()  # idle: no wake-ups at all
            try:  # gather a batch for up to one interval
                await asyncio.wait_for(self._full.wait(), self.limits.interval)
            except asyncio.TimeoutError:
                pass
            self._full.clear()
            report = bool(self._skipped) and loop.time() >= next_report
            if report:
                next_report = loop.time() + self.limits.report_every
            await self._drain(report)
            if not (self._buffer or self._skipped):
                self._work.clear()

    async def _drain(self, report: bool) -> None:
        """Send the buffer in batches, and the skipped counts if `report`; stop at a failure
        (PocketBase down or restarting: the lines stay for the next tick)."""
        skipped = self._take_skipped() if report and self._skipped else {}
        while self._buffer or skipped:
            if not await self._send_batch(skipped):
                return
            skipped = {}

    async def flush(self, timeout: float = 1.0) -> None:
        """Send what is left, before PocketBase stops (the sidecars have stopped by then).

        A batch cut off by the cancel may reach PocketBase twice; never lost, at worst doubled.
        """
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        try:
            await asyncio.wait_for(self._drain(report=True), timeout)
        except asyncio.TimeoutError:
            log.debug("log bridge: PocketBase did not take the last lines in %gs", timeout)

    def _take_skipped(self) -> dict[str, int]:
        skipped = dict(self._skipped)
        self._skipped.clear()
        for pid, n in skipped.items():
            log.warning("log bridge: skipped %d lines of %s for PocketBase's logs (limit "
                        "%g/s); the terminal shows them all", n, pid, self.limits.rate)
        return skipped

    async def _send_batch(self, skipped: dict[str, int]) -> bool:
        n = min(len(self._buffer), self.limits.batch)
        lines = [self._buffer[i] for i in range(n)]
        payload = json.dumps({"lines": lines, "skipped": skipped}, ensure_ascii=False).encode()
        answer = await request(self._pb.local_host, self._pb.port, "POST", LOGS_PATH,
                               self._headers, payload, timeout=5.0)
        if answer is None or answer[0] != 204:
            # PocketBase down or restarting: keep the lines and try again on the next tick.
            log.debug("log bridge: PocketBase answered %s", answer[0] if answer else "nothing")
            return False
        for _ in range(n):
            self._buffer.popleft()
        return True


async def probe_hook(pb: PocketBaseInfo, attempts: int = 5) -> str | None:
    """Ask the hook's probe route whether it is loaded; None when it is, else the problem."""
    expected = revision(hook_source())
    answer = None
    for attempt in range(attempts):
        answer = await request(pb.local_host, pb.port, "GET", PROBE_PATH)
        if answer is not None:
            break
        await asyncio.sleep(0.2 * (attempt + 1))  # PocketBase may be re-executing itself
    if answer is None:
        return probe_problem(None, None, expected)
    status, raw = answer
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    return probe_problem(status, body, expected)


class HookLink(Companion):
    """The hook on the host's timeline: once PocketBase is first healthy, probe the hook; if it
    answers, start the log bridge; before PocketBase stops, flush what the bridge holds.

    The bridge subscribes to the stream at once, before any sidecar starts, so no early line is
    missed; it sends nothing until the probe succeeded.
    """

    def __init__(self, pb: PocketBaseInfo, specs: Iterable[ProcessSpec], stream: LogStream,
                 token: str, dashboard: bool = True) -> None:
        self.pb = pb
        self._dashboard = dashboard  # /_pm/ needs a control API on TCP to fetch the page from
        self.bridge = LogBridge(pb, token, {spec.id: spec.pb_logs for spec in specs})
        self.bridge.attach(stream)
        self._stream = stream
        self._check: asyncio.Task[None] | None = None
        self._sending = False
        self._failed = False  # the probe found no hook: the bridge stays off

    def reloaded(self, host: HostView) -> None:
        """pbLogs as the reloaded file says, without restarting anything."""
        self.bridge.set_modes({spec.id: spec.pb_logs for spec in host.specs.values()})
        if self._failed or not self.bridge.active:
            return
        self.bridge.attach(self._stream)  # the first process with pbLogs on
        if self._sending:
            self.bridge.start()

    def pb_healthy(self) -> None:
        if self._check is None:  # the first time only; PocketBase restarts load the same file
            self._check = asyncio.get_running_loop().create_task(self._probe())

    async def before_pb_stop(self) -> None:
        if self._sending:
            await self.bridge.flush()

    def close(self) -> None:
        self.bridge.close()
        if self._check is not None:
            self._check.cancel()

    async def _probe(self) -> None:
        problem = await probe_hook(self.pb)
        bridge = self.bridge
        if problem is None:
            log.info("PocketBase hook answers: /api/pm/*%s on %s for superusers; %s",
                     " and the dashboard at /_pm/" if self._dashboard else "", self.pb.url,
                     "logs of " + ", ".join(bridge.modes) + " go to its Logs page"
                     if bridge.active else "no sidecar logs to bridge")
            bridge.start()
            self._sending = True
            return
        bridge.close()
        self._failed = True
        log.warning("PocketBase hook check failed: %s. /api/pm/* on PocketBase's port and the "
                    "log bridge are off; pbhost's own control API still works", problem)

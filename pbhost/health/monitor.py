"""What watches each run of one sidecar: its liveness probe, its readiness gate, its notify
socket and its watchdog. A `RunHooks` for its Supervisor (one RunMonitor per sidecar).

Everything here lives for one run (`_Run`) and is torn down with it: tasks cancelled, the log
subscription dropped, the socket closed, the watchdog timer cancelled. A sidecar without probes
gets only its notify socket: one idle fd, no timer, no task. Reports go to the supervisor:
`mark_ready` when the readiness gate passes, `fail_run` when liveness (or the watchdog) fails,
and the texts `pbhost ls` shows.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Callable, Mapping

from pbhost.config.probekeys import for_run
from pbhost.health.notifysock import Message, NotifySocket, clean_status
from pbhost.health.thresholds import Result, Threshold, probe_loop, ran_healthy
from pbhost.process.spawn import RESOURCE_ERRNOS, SpawnError, describe_oserror
from pbhost.process.supervisor import RunHooks

if TYPE_CHECKING:
    from pbhost.config.loader import ProcessSpec
    from pbhost.config.probekeys import ProbeSpec
    from pbhost.logs.stream import LogRecord, LogStream
    from pbhost.process.runtime import Runtime
    from pbhost.process.spawn import Child
    from pbhost.process.supervisor import Launch, Supervisor

log = logging.getLogger("pbhost")


def secs(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:g}s"


class RunMonitor(RunHooks):
    def __init__(self, spec: ProcessSpec, runtime: Runtime, stream: LogStream,
                 socket_name: str) -> None:
        self.spec = spec
        self._runtime = runtime
        self._stream = stream
        self._socket_name = socket_name  # unique to this pbhost and process; + the run's number
        self._runs = 0
        self._sock: NotifySocket | None = None  # bound for the next run, before its spawn
        self._run: _Run | None = None

    def env(self) -> Mapping[str, str]:
        self._close_socket()  # one bound for a spawn that failed
        self._runs += 1
        try:
            self._sock = NotifySocket(f"{self._socket_name}-{self._runs}")
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:  # out of fds: this start fails, and is retried
                raise SpawnError(exc.errno, describe_oserror(exc, "notify socket",
                                                             str(self.spec.cwd))) from None
            log.debug("%s: no notify socket: %s", self.spec.id, exc)  # not Linux
            return {}
        env = {"NOTIFY_SOCKET": self._sock.address}
        if self.spec.watchdog is not None:
            env["WATCHDOG_USEC"] = str(int(self.spec.watchdog * 1_000_000))
        return env

    def begin(self, sup: Supervisor, child: Child, launch: Launch | None) -> None:
        sock, self._sock = self._sock, None  # the one env() bound for this run
        self.end()
        env = launch.env if launch is not None else {}
        cwd = launch.cwd if launch is not None else str(self.spec.cwd)
        self._run = _Run(self.spec, sup, child, self._runtime, self._stream, sock, env, cwd)

    def end(self) -> None:
        run, self._run = self._run, None
        if run is not None:
            run.close()
        self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _Run:
    """One run being watched."""

    def __init__(self, spec: ProcessSpec, sup: Supervisor, child: Child, runtime: Runtime,
                 stream: LogStream, sock: NotifySocket | None, env: Mapping[str, str],
                 cwd: str) -> None:
        self.spec, self.sup, self.child, self.runtime = spec, sup, child, runtime
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.live_task: asyncio.Task[None] | None = None
        self.gate_task: asyncio.Task[None] | None = None
        self.unsubscribe: Callable[[], None] | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.ready = spec.readiness is None
        self.ready_text: str | None = None   # "not ready: ..." while the gate is shut
        self.live_text: str | None = None    # "liveness failing 1/3 (...)"
        self.last_live_ok: float | None = None
        self.last_ping: float | None = None  # the last WATCHDOG=1
        self.closed = False
        if sock is not None:
            sock.start(self.loop, self.on_message)
        if spec.liveness is not None:
            live = for_run(spec.liveness, env, readiness=False)
            self.live_task = self._poll(live, self.on_liveness(live), env, cwd)
        if spec.readiness is not None and not self.ready:
            self._gate(for_run(spec.readiness, env, readiness=True), stream, env, cwd)
        if spec.watchdog is not None:
            self.watchdog = self.loop.call_later(spec.watchdog, self.watchdog_due)

    # -- setting up -------------------------------------------------------------------------
    def _poll(self, probe: ProbeSpec, on_result: Callable[[Result], bool],
              env: Mapping[str, str], cwd: str) -> asyncio.Task[None]:
        from pbhost.health.probes import make_check  # only processes with probes load it

        check = make_check(probe, self.runtime, env, cwd)
        said = False

        def skipped(reason: str) -> None:
            nonlocal said
            if not said:  # once a run: pbhost's own exhaustion is said where it happens too
                said = True
                log.warning("%s: probe %s skipped: %s; it is tried again every %s, and "
                            "counts neither as a pass nor as a failure meanwhile",
                            self.spec.id, probe.label, reason, secs(probe.period))
        task = self.loop.create_task(probe_loop(
            check, probe.initial_delay, probe.period, probe.timeout, on_result,
            f"{probe.label}: timed out after {secs(probe.timeout)}", skipped))
        task.add_done_callback(self._task_done)
        return task

    def _gate(self, probe: ProbeSpec, stream: LogStream, env: Mapping[str, str],
              cwd: str) -> None:
        self.ready_text = f"not ready: waiting for {probe.label}"
        if probe.kind == "logLine":
            pattern = re.compile(probe.target)
            proc_id = self.spec.id

            def wants(rec_id: str, _stream: str, n: int) -> int:
                return n if rec_id == proc_id else 0  # other processes' lines are never decoded

            def on_line(rec: LogRecord) -> None:
                if pattern.search(rec.text) and self.unsubscribe is not None:
                    self.unsubscribe()
                    self.unsubscribe = None
                    # Next turn: the matching line is queued for output only after this call,
                    # and pbhost's "ready" line should follow it.
                    self.loop.call_soon(self.passed, f"{probe.label} matched")
            self.unsubscribe = stream.subscribe(on_line, wants)
        elif probe.polled:
            counter = Threshold(1, probe.success_threshold, passing=False)

            def on_result(result: Result) -> bool:
                if counter.feed(result.ok):
                    self.passed(result.detail)
                    return False
                self.ready_text = f"not ready: {result.detail}" + (
                    f" ({counter.oks}/{probe.success_threshold} passes)" if result.ok else "")
                self.show()
                return not self.closed
            self.gate_task = self._poll(probe, on_result, env, cwd)
        self.show()  # "notify": READY=1 opens the gate (on_message)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: a probe failed unexpectedly: %r", self.spec.id, task.exception())

    # -- what the run says ------------------------------------------------------------------
    def show(self) -> None:
        """The supervisor's probe text: a liveness problem first, else the readiness wait."""
        if not self.closed:
            self.sup.probe_text = self.live_text or (None if self.ready else self.ready_text)

    def passed(self, how: str) -> None:
        """The readiness gate opened: stop whatever was waiting for it."""
        if self.ready or self.closed:
            return
        self.ready = True
        self._stop_gate()
        self.sup.mark_ready(self.child, how)
        self.show()

    def _stop_gate(self) -> None:
        if self.unsubscribe is not None:
            self.unsubscribe()
            self.unsubscribe = None
        _cancel(self.gate_task)

    def on_liveness(self, probe: ProbeSpec) -> Callable[[Result], bool]:
        counter = Threshold(probe.failure_threshold, probe.success_threshold, passing=True)

        def on_result(result: Result) -> bool:
            if self.closed:
                return False
            if result.ok:
                self.last_live_ok = self.runtime.now()
            if counter.feed(result.ok):  # passing -> failing: act
                self.fail(f"liveness failed {counter.fails} times ({result.detail})",
                          self.last_live_ok)
                return False
            if result.ok:
                self.live_text = None
            else:
                self.live_text = (f"liveness failing {counter.fails}/{probe.failure_threshold}"
                                  f" ({result.detail})")
                # Before its first success a failure is mostly a server still binding its
                # port: said in `pbhost ls`; a warning only for one that was alive.
                log.log(logging.WARNING if self.last_live_ok is not None else logging.DEBUG,
                        "%s: %s", self.spec.id, self.live_text)
            self.show()
            return True
        return on_result

    def on_message(self, msg: Message) -> None:
        if self.closed:
            return
        if "STATUS" in msg:
            self.sup.notify_status = clean_status(msg["STATUS"]) or None
        if msg.get("READY") == "1":
            self.passed("READY=1")
        watchdog = msg.get("WATCHDOG")
        if watchdog == "1":
            self.last_ping = self.runtime.now()
        elif watchdog == "trigger":
            self.fail("watchdog: the process sent WATCHDOG=trigger", self.last_ping)

    def watchdog_due(self) -> None:
        assert self.spec.watchdog is not None
        self.watchdog = None
        since = self.last_ping if self.last_ping is not None else self.child.started
        left = since + self.spec.watchdog - self.runtime.now()
        if left > 0:
            self.watchdog = self.loop.call_later(left, self.watchdog_due)
            return
        self.fail(f"watchdog: no WATCHDOG=1 for {secs(self.spec.watchdog)}", self.last_ping)

    def fail(self, reason: str, last_ok: float | None) -> None:
        healthy = ran_healthy(self.child.started, last_ok, self.sup.policy.healthy_run)
        self.sup.fail_run(self.child, reason, healthy)  # ends this run's watch (close)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_gate()
        _cancel(self.live_task)
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.sock is not None:
            self.sock.close()


def _cancel(task: asyncio.Task[None] | None) -> None:
    # Not the task that is reporting: it returns on its own right after (a task cancelled from
    # inside would end up cancelled rather than done).
    if task is not None and task is not asyncio.current_task():
        task.cancel()

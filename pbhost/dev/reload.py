"""Dev-mode hot reload: one Watcher per devMode sidecar; a change restarts that sidecar.

A reload is a requested restart (`Supervisor.restart`): no backoff, failure count untouched,
restart count +1, the whole group stopped before the new one starts. A sidecar that is crashed
or waiting in backoff starts at once (the developer just fixed the bug); one stopped on request
stays stopped.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pbhost.dev.watcher import Watcher
from pbhost.process.hostview import Companion

if TYPE_CHECKING:
    from pbhost.config.loader import ProcessSpec
    from pbhost.process.hostview import HostView
    from pbhost.process.supervisor import Supervisor

log = logging.getLogger("pbhost")


class Reloader:
    def __init__(self, spec: ProcessSpec, sup: Supervisor, project: Path) -> None:
        self._sup = sup
        self._project = project
        self._tasks: set[asyncio.Task[int | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher = Watcher(spec.watch_paths, ignore=spec.watch_ignore,
                                debounce=spec.debounce, on_change=self._changed, log=log)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watcher.start(loop)

    def close(self) -> None:
        """Stop watching; a reload already under way finishes (or yields to the host's stop)."""
        self._watcher.close()

    def _display(self, path: Path) -> str:
        # Named relative to the project, as the developer thinks of it: agent/main.py.
        try:
            return path.relative_to(self._project).as_posix()
        except ValueError:
            return str(path)

    def _changed(self, path: Path) -> None:
        assert self._loop is not None
        sup = self._sup
        if sup.held:  # stopped on request (even if the stop is still under way)
            log.info("%s: %s changed; not reloading, it is stopped", sup.id, self._display(path))
            return
        if sup.waiting_for:  # not started yet: it starts (with the new code) once they are met
            log.info("%s: %s changed; not reloading, it is %s", sup.id, self._display(path),
                     sup.waiting_text)
            return
        task = self._loop.create_task(sup.restart(f"{self._display(path)} changed"))
        self._tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[int | None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: reload failed: %s", self._sup.id, task.exception())


class DevReload(Companion):
    """Dev mode on the host: a started Reloader for each devMode sidecar, once PocketBase has
    been spawned (scanning a big tree never delays it); the others get no watch, no inotify
    fd. Closed first at shutdown, so no reload starts a sidecar the shutdown is stopping."""

    def __init__(self, project: Path) -> None:
        self._project = project
        self.reloaders: list[Reloader] = []

    def started(self, host: HostView) -> None:
        loop = asyncio.get_running_loop()
        for sup in host.sidecars:
            spec = host.specs[sup.id]
            if spec.dev_mode:
                reloader = Reloader(spec, sup, self._project)
                reloader.start(loop)
                self.reloaders.append(reloader)

    def shutting_down(self) -> None:
        for reloader in self.reloaders:
            reloader.close()

"""Dev-mode hot reload: one Watcher per devMode sidecar; a change restarts that sidecar. And
one on the process file itself: saving pb_processes.json reloads it (process/reconfig.py).

A reload is a requested restart (`Supervisor.restart`): no backoff, failure count untouched,
restart count +1, the whole group stopped before the new one starts. A sidecar that is crashed
or waiting in backoff starts at once (the developer just fixed the bug); one stopped on request
stays stopped.

The process file is not a sidecar's code: a sidecar's watch leaves it out (its reload restarts
only what the edit changed). A reload of the file brings the watchers in line (`reloaded`):
devMode turned on or off, watchPaths, watchIgnore or debounce changed, all without restarting
the sidecar; with no devMode sidecar left, nothing is watched at all.
"""

from __future__ import annotations

import asyncio
import glob
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from pbhost.dev.watcher import Watcher
from pbhost.process.hostview import Companion

if TYPE_CHECKING:
    from pbhost.config.loader import ProcessSpec
    from pbhost.process.hostview import HostView
    from pbhost.process.supervisor import Supervisor

log = logging.getLogger("pbhost")
CONFIG_DEBOUNCE = 0.5  # seconds after the last write of a save of the process file


def watching(spec: ProcessSpec) -> tuple[object, ...]:
    """What a sidecar's watch is made of: a change here replaces its watcher, nothing else."""
    return (spec.watch_paths, spec.watch_ignore, spec.debounce)


def leave_out(config: Path | None, roots: Sequence[Path]) -> list[str]:
    """Ignore patterns that keep the process file out of watches of `roots` it lies under."""
    if config is None:
        return []
    return [glob.escape(config.relative_to(root).as_posix()) for root in roots
            if config.is_relative_to(root)]


class Reloader:
    def __init__(self, spec: ProcessSpec, sup: Supervisor, project: Path,
                 config: Path | None = None) -> None:
        self._sup = sup
        self._project = project
        self.watching = watching(spec)
        self._tasks: set[asyncio.Task[int | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        ignore = [*spec.watch_ignore, *leave_out(config, spec.watch_paths)]
        self._watcher = Watcher(spec.watch_paths, ignore=ignore,
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
    been spawned (scanning a big tree never delays it), and a watch on the process file that
    reloads it; the others get no watch, no inotify fd. Closed first at shutdown, so no reload
    starts a sidecar the shutdown is stopping."""

    def __init__(self, project: Path, config: Callable[[], Path | None] = lambda: None,
                 on_config_change: Callable[[Path], None] | None = None) -> None:
        self._project = project
        self._config = config                  # the process file, as the last reload found it
        self._on_config_change = on_config_change
        self.reloaders: dict[str, Reloader] = {}
        self._config_watch: tuple[Path, Watcher] | None = None
        self._closed = False

    def started(self, host: HostView) -> None:
        self.reloaded(host)

    def reloaded(self, host: HostView) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        config = self._config()
        for proc_id in list(self.reloaders):  # gone, dev mode off, or watching otherwise
            spec = host.specs.get(proc_id)
            if spec is None or not spec.dev_mode or \
                    watching(spec) != self.reloaders[proc_id].watching:
                self.reloaders.pop(proc_id).close()
        for sup in host.sidecars:
            spec = host.specs[sup.id]
            if spec.dev_mode and sup.id not in self.reloaders:
                reloader = Reloader(spec, sup, self._project, config)
                reloader.start(loop)
                self.reloaders[sup.id] = reloader
        self._watch_config(loop, config if self.reloaders else None)

    def _watch_config(self, loop: asyncio.AbstractEventLoop, config: Path | None) -> None:
        """Watch the process file while some sidecar is in dev mode (and only then)."""
        if self._config_watch is not None and self._config_watch[0] != config:
            self._config_watch[1].close()
            self._config_watch = None
        if config is None or self._on_config_change is None or self._config_watch is not None:
            return
        watcher = Watcher([config], debounce=CONFIG_DEBOUNCE, on_change=self._on_config_change,
                          log=log)
        watcher.start(loop)
        self._config_watch = (config, watcher)

    def shutting_down(self) -> None:
        self._closed = True
        for reloader in self.reloaders.values():
            reloader.close()
        if self._config_watch is not None:
            self._config_watch[1].close()
            self._config_watch = None

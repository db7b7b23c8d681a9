"""Dev-mode file watching: a backend (inotify, or stat polling where inotify cannot work), an
ignore filter and a trailing-edge debounce that turns a burst of events into one `on_change`.

The inotify backend is one non-blocking fd per Watcher, read by `loop.add_reader`: while nothing
changes there is no thread, no timer and no wake-up at all. `inotify_simple` is imported only
when a Watcher starts, so a pbhost without devMode sidecars never loads it.
"""

from __future__ import annotations

import asyncio
import errno
import fnmatch
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

# linux/inotify.h values (kernel ABI), spelled out so nothing is imported until a Watcher starts.
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

# Every save style ends in one of these: write in place -> CLOSE_WRITE; temp file renamed over
# the original (vim, JetBrains) -> MOVED_TO; delete + create -> DELETE, CREATE. IN_MODIFY is left
# out on purpose: it fires once per write() (hundreds per save) and for files a process keeps
# open, such as pbhost's own redirected output, none of which is a finished save.
DIR_MASK = (IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
            | IN_ONLYDIR | IN_EXCL_UNLINK)

DEFAULT_IGNORE: tuple[str, ...] = (
    # version control, caches, environments and PocketBase's data: never the sidecar's code
    ".git", ".hg", ".svn", "__pycache__", "*.pyc", "*.pyo", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", ".tox", "node_modules", ".venv", "venv", "pb_data", ".DS_Store",
    ".idea", ".vscode",
    # editor swap, backup, lock and probe files; a save still shows under the file's real name
    "*.swp", "*.swo", "*.swx", "*~", ".#*", "#*#", "4913", "*___jb_tmp___", "*___jb_old___",
    # files a running sidecar writes itself: reloading on them would restart it forever
    "*.log", "*.db", "*.db-*", "*.sqlite", "*.sqlite3", "*.sqlite-*",
)

POLL_INTERVAL = 1.0


class IgnoreFilter:
    """Glob patterns matched against every component of a path and against the whole path
    relative to its watched root (so both `generated` and `data/*.json` work)."""

    def __init__(self, extra: Sequence[str] = ()) -> None:
        patterns = DEFAULT_IGNORE + tuple(p.strip("/") for p in extra if p.strip("/"))
        self.patterns = patterns
        self._re = re.compile("|".join(fnmatch.translate(p) for p in patterns))

    def ignored(self, rel: str) -> bool:
        """`rel`: a '/'-separated path relative to the watched root."""
        match = self._re.match
        return bool(match(rel)) or any(match(part) for part in rel.split("/"))


@dataclass(frozen=True)
class _Root:
    """A watched path: a directory (recursive), or a single file (its folder, that name only)."""

    dir: Path
    only: str | None = None

    @classmethod
    def of(cls, path: Path) -> _Root:
        return cls(path.parent, path.name) if path.is_file() else cls(path)

    def rel(self, path: Path) -> str:
        return path.relative_to(self.dir).as_posix()


class _InotifyUnavailable(Exception):
    """inotify cannot be used here: missing, or a system limit reached (not a bug)."""


def _walk(root: _Root, top: Path, filt: IgnoreFilter, enter: Callable[[Path], bool],
          files: bool = True) -> Iterator[os.DirEntry[str]]:
    """Yield the non-ignored files under `top` (symlinks not followed). `enter(dir)` is called
    before a directory is listed, so a watch added there sees files created during the scan;
    it returns False to skip the directory. `files=False`: only walk (and enter) the
    directories, yielding nothing: the ignore filter then runs per directory, not per file
    (a 100,000-file tree took 1.1 s of pbhost's loop at start-up, 0.1 s this way)."""
    stack = [top]
    while stack:
        folder = stack.pop()
        if not enter(folder):
            continue
        try:
            entries = list(os.scandir(folder))
        except OSError:  # vanished or unreadable since we saw it: nothing to watch there
            continue
        for entry in entries:
            if root.only is not None and entry.name != root.only:
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            if not (is_dir or files):
                continue
            if filt.ignored(root.rel(Path(entry.path))):
                continue
            if is_dir:
                if root.only is None:
                    stack.append(Path(entry.path))
            else:
                yield entry


class _InotifyBackend:
    """One inotify fd, a watch per non-ignored directory, read on the loop."""

    def __init__(self, roots: Sequence[_Root], filt: IgnoreFilter, notify: Callable[[Path], None],
                 on_limit: Callable[[str], None], log: logging.Logger) -> None:
        try:
            from inotify_simple import INotify
            self._ino = INotify(nonblocking=True)
        except ImportError as exc:
            raise _InotifyUnavailable(f"inotify is not available here ({exc})") from None
        except OSError as exc:
            hint = " (fs.inotify.max_user_instances)" if exc.errno == errno.EMFILE else ""
            raise _InotifyUnavailable(
                f"cannot create an inotify instance: {exc.strerror}{hint}") from None
        self._roots, self._filter, self._notify, self._log = roots, filt, notify, log
        self._on_limit = on_limit
        self._dirs: dict[int, tuple[Path, _Root]] = {}  # wd -> (directory, its root)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for root in self._roots:
                self._add_tree(root, root.dir, want_file=False)
        except _InotifyUnavailable:
            self.close()
            raise
        self._loop = loop
        loop.add_reader(self._ino.fileno(), self._on_readable)

    def close(self) -> None:
        if self._loop is not None and not self._ino.closed:
            self._loop.remove_reader(self._ino.fileno())
        self._ino.close()  # the kernel drops every watch with the fd

    def watched_dirs(self) -> list[Path]:
        return [d for d, _ in self._dirs.values()]

    def _add_watch(self, folder: Path, root: _Root) -> bool:
        # The root itself may be a symlink the user chose; below it, links are not followed.
        mask = DIR_MASK if folder == root.dir else DIR_MASK | IN_DONT_FOLLOW
        try:
            wd = self._ino.add_watch(folder, mask)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise _InotifyUnavailable("the inotify watch limit is reached (raise it with "
                                          "`sysctl fs.inotify.max_user_watches=524288`)") from None
            self._log.debug("not watching %s: %s", folder, exc.strerror)
            return False
        self._dirs[wd] = (folder, root)
        return True

    def _add_tree(self, root: _Root, top: Path, want_file: bool = True) -> Path | None:
        """Watch `top` and every directory below it; return a file found there, if any (and
        if `want_file`)."""
        found = None
        for entry in _walk(root, top, self._filter, lambda d: self._add_watch(d, root),
                           files=want_file):
            found = found or Path(entry.path)
        return found

    def _drop_tree(self, top: Path) -> None:
        """Stop watching a directory that moved away, and everything below it."""
        for wd, (folder, _) in list(self._dirs.items()):
            if folder == top or top in folder.parents:
                del self._dirs[wd]
                try:
                    self._ino.rm_watch(wd)
                except OSError:  # already gone with its directory
                    pass

    def _on_readable(self) -> None:
        try:
            self._read_events()
        except _InotifyUnavailable as exc:  # a new directory past the limit: switch to polling
            self._on_limit(str(exc))

    def _read_events(self) -> None:
        for event in self._ino.read(timeout=0):
            if event.mask & IN_Q_OVERFLOW:
                self._overflowed()
            elif event.mask & IN_IGNORED:  # directory deleted, or watch removed by us
                self._dirs.pop(event.wd, None)
            elif event.wd in self._dirs:
                self._handle(event.wd, event.mask, event.name)

    def _overflowed(self) -> None:
        # Events were lost, possibly directory creations too: re-add watches and assume a change.
        self._log.warning("file watcher: the inotify event queue overflowed; "
                          "treating it as a change")
        for root in self._roots:
            self._add_tree(root, root.dir, want_file=False)
        self._notify(self._roots[0].dir / (self._roots[0].only or ""))

    def _handle(self, wd: int, mask: int, name: str) -> None:
        folder, root = self._dirs[wd]
        if root.only is not None and name != root.only:
            return
        path = folder / name
        if self._filter.ignored(root.rel(path)):
            return
        if mask & IN_ISDIR and root.only is None:
            if mask & (IN_CREATE | IN_MOVED_TO):
                # Files may have been written before the watch existed: the scan finds them.
                # A new empty directory is not a change; one moved in is.
                found = self._add_tree(root, path)
                if found or mask & IN_MOVED_TO:
                    self._notify(found or path)
                return
            if mask & IN_MOVED_FROM:
                self._drop_tree(path)
        self._notify(path)


class _PollBackend:
    """Stat every non-ignored file each interval and report the ones that differ. Used only where
    inotify cannot work; this timer is the only one a Watcher ever runs while idle."""

    def __init__(self, roots: Sequence[_Root], filt: IgnoreFilter,
                 notify: Callable[[Path], None], interval: float) -> None:
        self._roots, self._filter, self._notify, self._interval = roots, filt, notify, interval
        self._snap: dict[str, tuple[int, int, int]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._snap = self._snapshot()
        self._timer = loop.call_later(self._interval, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _snapshot(self) -> dict[str, tuple[int, int, int]]:
        snap = {}
        for root in self._roots:
            for entry in _walk(root, root.dir, self._filter, lambda d: True):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                snap[entry.path] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return snap

    def _tick(self) -> None:
        assert self._loop is not None
        old, new = self._snap, self._snapshot()
        self._snap = new
        changed = [p for p in new if old.get(p) != new[p]] or [p for p in old if p not in new]
        if changed:
            self._notify(Path(changed[-1]))
        self._timer = self._loop.call_later(self._interval, self._tick)


class Watcher:
    """Watch `paths` recursively; `debounce` seconds after the last relevant change of a burst,
    call `on_change(path)` once with the LAST path that changed (the final name of an atomic
    save comes after its temp file, so the last path is the one the developer edited).

    The backend is inotify; `backend="poll"` or `PBHOST_WATCH=poll` forces stat polling, which is
    also the fallback where inotify is missing or its limits are reached (one warning says so).
    """

    def __init__(self, paths: Sequence[Path], *, ignore: Sequence[str] = (),
                 debounce: float = 0.5, on_change: Callable[[Path], None],
                 log: logging.Logger, backend: str | None = None,
                 poll_interval: float = POLL_INTERVAL) -> None:
        self._roots: list[_Root] = []
        self._filter = IgnoreFilter(ignore)
        self._debounce = debounce
        self._on_change = on_change
        self._log = log
        self._paths = [Path(p) for p in paths]
        self._backend_name = (backend or os.environ.get("PBHOST_WATCH") or "auto").lower()
        self._poll_interval = poll_interval
        self._backend: _InotifyBackend | _PollBackend | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._pending: Path | None = None

    @property
    def backend(self) -> str:
        """"inotify" or "poll" once started."""
        return "poll" if isinstance(self._backend, _PollBackend) else "inotify"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._roots = self._existing_roots()
        if self._backend_name == "poll":
            self._fall_back("PBHOST_WATCH=poll asks for it")
            return
        try:
            backend = _InotifyBackend(self._roots, self._filter, self._changed,
                                      self._fall_back, self._log)
            backend.start(loop)
        except _InotifyUnavailable as exc:
            self._fall_back(str(exc))
            return
        self._backend = backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _existing_roots(self) -> list[_Root]:
        roots = []
        for path in self._paths:
            if path.exists():
                roots.append(_Root.of(path))
            else:  # config validation rejects these; the path may have gone since
                self._log.warning("not watching %s: it does not exist", path)
        return roots

    def _fall_back(self, reason: str) -> None:
        assert self._loop is not None
        if self._backend is not None:
            self._backend.close()
        self._log.warning("watching %s by polling every %gs instead of inotify: %s",
                          ", ".join(map(str, self._paths)), self._poll_interval, reason)
        self._backend = _PollBackend(self._roots, self._filter, self._changed, self._poll_interval)
        self._backend.start(self._loop)

    def _changed(self, path: Path) -> None:
        """A relevant change: (re)start the debounce window. The timer is not cancelled and
        re-armed per event (a burst would churn the loop's heap); it re-arms itself lazily."""
        assert self._loop is not None
        self._pending = path
        self._deadline = self._loop.time() + self._debounce
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._fire)

    def _fire(self) -> None:
        assert self._loop is not None
        if self._deadline - self._loop.time() > 0.001:  # more events came in meanwhile
            self._timer = self._loop.call_at(self._deadline, self._fire)
            return
        self._timer = None
        path, self._pending = self._pending, None
        if path is None:
            return
        try:
            self._on_change(path)
        except Exception:  # a bug in the reload callback must not stop watching
            self._log.exception("reload after a change to %s failed", path)

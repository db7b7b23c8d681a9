"""The Watcher on real files with real inotify, driven by a real asyncio loop.

"Nothing happened" is asserted by waiting past the debounce window plus a margin on an event
(a bounded wait for a negative), then proving the watcher was alive with a positive control.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import pytest

from pbhost.dev.watcher import IgnoreFilter, Watcher
from support import inotify_fds

DEBOUNCE = 0.2
QUIET = DEBOUNCE + 0.5  # past the window plus a margin for a busy machine
LOG = logging.getLogger("pbhost.test_watcher")


class Recorder:
    """on_change callback: remembers every call and wakes whoever waits for the next one."""

    def __init__(self) -> None:
        self.calls: list[Path] = []
        self._event = asyncio.Event()

    def __call__(self, path: Path) -> None:
        self.calls.append(path)
        self._event.set()

    async def next(self, timeout: float = 10.0) -> Path:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"no change reported within {timeout}s; calls: {self.calls}") from None
        self._event.clear()
        return self.calls[-1]

    async def quiet(self, seconds: float = QUIET) -> None:
        """Assert that no call comes within `seconds`."""
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected change reported: {self.calls}")


Scenario = Callable[[Watcher, Recorder], Awaitable[None]]


def run(tree: Path, scenario: Scenario, *, debounce: float = DEBOUNCE,
        paths: Sequence[Path] | None = None, **kwargs: Any) -> None:
    """Start a Watcher on `tree` inside a fresh loop, run `scenario`, always close it."""
    async def main() -> None:
        rec = Recorder()
        watcher = Watcher(paths or [tree], debounce=debounce, on_change=rec, log=LOG, **kwargs)
        watcher.start(asyncio.get_running_loop())
        try:
            await scenario(watcher, rec)
        finally:
            watcher.close()
    asyncio.run(main())


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "agent"
    (root / "pkg").mkdir(parents=True)
    (root / "main.py").write_text("print('v1')\n")
    (root / "pkg" / "util.py").write_text("X = 1\n")
    for ignored in ("__pycache__", "node_modules/lib", ".git", ".venv/lib"):
        (root / ignored).mkdir(parents=True)
    return root


def test_write_in_place_triggers_once(tree: Path) -> None:
    async def scenario(w: Watcher, rec: Recorder) -> None:
        (tree / "pkg" / "util.py").write_text("X = 2\n")
        assert await rec.next() == tree / "pkg" / "util.py"
        await rec.quiet()
        assert len(rec.calls) == 1
        assert w.backend == "inotify"
    run(tree, scenario)


def test_burst_of_20_writes_gives_one_call(tree: Path) -> None:
    async def scenario(w: Watcher, rec: Recorder) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        last_write = start
        for i in range(20):  # the burst's shape: 20 saves 10 ms apart, all inside the window
            if i:
                await asyncio.sleep(0.01)
            (tree / "main.py").write_text(f"print({i})\n")
            last_write = loop.time()
        assert await rec.next() == tree / "main.py"
        # Trailing edge: the call comes a debounce after the last write, not the first.
        assert loop.time() - last_write >= 0.5 - 0.01
        assert loop.time() - start >= 0.5 + 0.19
        await rec.quiet(0.5 + 0.5)
        assert len(rec.calls) == 1
    run(tree, scenario, debounce=0.5)


def _save_vim(path: Path, text: str) -> None:
    """vim with `backupcopy=no`: probe file, original renamed to a backup, new file written."""
    probe = path.parent / "4913"
    probe.write_text("")
    probe.unlink()
    backup = path.with_name(path.name + "~")
    path.rename(backup)
    path.write_text(text)
    backup.unlink()


def _save_jetbrains(path: Path, text: str) -> None:
    """JetBrains "safe write": temp file, original renamed away, temp renamed in, old deleted."""
    tmp = path.with_name(path.name + "___jb_tmp___")
    old = path.with_name(path.name + "___jb_old___")
    tmp.write_text(text)
    path.rename(old)
    tmp.rename(path)
    old.unlink()


def _save_atomic(path: Path, text: str) -> None:
    """The usual library atomic write: a hidden temp file in the same folder, os.replace."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save_delete_create(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text)


@pytest.mark.parametrize("save", [_save_vim, _save_jetbrains, _save_atomic, _save_delete_create])
def test_every_save_style_triggers_once_naming_the_file(tree: Path,
                                                       save: Callable[[Path, str], None]) -> None:
    async def scenario(w: Watcher, rec: Recorder) -> None:
        save(tree / "main.py", "print('v2')\n")
        assert await rec.next() == tree / "main.py"
        await rec.quiet()
        assert len(rec.calls) == 1
    run(tree, scenario)


@pytest.mark.parametrize("rel", [
    "__pycache__/main.cpython-311.pyc", "node_modules/lib/index.js", ".git/index",
    ".venv/lib/site.py", "pkg/util.pyc", ".main.py.swp", "main.py~", "pb_data/data.db",
    "new_deps/node_modules/x/index.js",  # an ignored folder created after start
])
def test_ignored_paths_do_not_trigger(tree: Path, rel: str) -> None:
    async def scenario(w: Watcher, rec: Recorder) -> None:
        target = tree / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("x")
        target.write_text("y")
        await rec.quiet()
        (tree / "main.py").write_text("print('alive')\n")  # positive control
        assert await rec.next() == tree / "main.py"
        assert rec.calls == [tree / "main.py"]
    run(tree, scenario)


def test_ignored_folders_cost_no_watch(tree: Path) -> None:
    async def scenario(w: Watcher, rec: Recorder) -> None:
        backend: Any = w._backend
        watched = {p.relative_to(tree).as_posix() for p in backend.watched_dirs()}
        assert watched == {".", "pkg"}
    run(tree, scenario)


def test_custom_ignore_patterns(tree: Path) -> None:
    (tree / "generated").mkdir()
    (tree / "data").mkdir()

    async def scenario(w: Watcher, rec: Recorder) -> None:
        (tree / "generated" / "schema.py").write_text("x")
        (tree / "data" / "cache.json").write_text("{}")
        (tree / "pkg" / "notes.md").write_text("x")
        await rec.quiet()
        (tree / "data" / "prompt.txt").write_text("hi")  # not matched by data/*.json
        assert await rec.next() == tree / "data" / "prompt.txt"
        assert len(rec.calls) == 1
    run(tree, scenario, ignore=["generated/", "data/*.json", "*.md"])


def test_file_in_directory_created_after_start_triggers(tree: Path) -> None:
    async def scenario(w: Watcher, rec: Recorder) -> None:
        (tree / "tools").mkdir()
        await rec.quiet()  # an empty new folder is not a code change
        (tree / "tools" / "search.py").write_text("def search(): ...\n")
        assert await rec.next() == tree / "tools" / "search.py"
        # The new folder is watched now, not just scanned once.
        (tree / "tools" / "search.py").write_text("def search(): return 1\n")
        assert await rec.next() == tree / "tools" / "search.py"
        assert len(rec.calls) == 2
    run(tree, scenario)


def test_files_written_before_the_new_folder_is_watched_are_found(tree: Path) -> None:
    async def scenario(w: Watcher, rec: Recorder) -> None:
        # Created elsewhere with content, then moved in: no event inside it ever happens.
        staging = tree.parent / "staging"
        (staging / "deep").mkdir(parents=True)
        (staging / "deep" / "mod.py").write_text("x = 1\n")
        staging.rename(tree / "plugin")
        assert await rec.next() in (tree / "plugin", tree / "plugin" / "deep" / "mod.py")
        (tree / "plugin" / "deep" / "mod.py").write_text("x = 2\n")
        assert await rec.next() == tree / "plugin" / "deep" / "mod.py"
    run(tree, scenario)


def test_deleted_and_moved_directories_drop_their_watches(tree: Path) -> None:
    (tree / "pkg" / "sub").mkdir()
    (tree / "old").mkdir()

    async def scenario(w: Watcher, rec: Recorder) -> None:
        backend: Any = w._backend
        shutil.rmtree(tree / "pkg")
        gone = await rec.next()
        assert gone == tree / "pkg" or tree / "pkg" in gone.parents, gone
        (tree / "old").rename(tree.parent / "outside")
        await rec.next()
        dirs = {p.relative_to(tree).as_posix() for p in backend.watched_dirs()}
        assert dirs == {"."}, dirs
        (tree.parent / "outside" / "x.py").write_text("x")  # moved out: no longer watched
        await rec.quiet()
        (tree / "main.py").write_text("print('alive')\n")
        assert await rec.next() == tree / "main.py"
    run(tree, scenario)


def test_watching_a_single_file(tree: Path) -> None:
    async def scenario(w: Watcher, rec: Recorder) -> None:
        (tree / "pkg" / "util.py").write_text("X = 3\n")
        await rec.quiet()
        _save_atomic(tree / "main.py", "print('v3')\n")
        assert await rec.next() == tree / "main.py"
    run(tree, scenario, paths=[tree / "main.py"])


def test_forced_polling_detects_changes_and_warns_once(tree: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(w: Watcher, rec: Recorder) -> None:
        assert w.backend == "poll"
        (tree / "pkg" / "util.py").write_text("X = 22\n")
        assert await rec.next() == tree / "pkg" / "util.py"
        (tree / "node_modules" / "lib" / "x.js").write_text("x")
        await rec.quiet(0.2 * 2 + QUIET)
        (tree / "pkg" / "util.py").unlink()
        assert await rec.next() == tree / "pkg" / "util.py"
    with caplog.at_level(logging.WARNING, LOG.name):
        run(tree, scenario, backend="poll", poll_interval=0.2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "polling" in warnings[0], warnings


def test_watch_limit_falls_back_to_polling(tree: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    # The kernel limit cannot be lowered for one test without touching the whole machine, so
    # add_watch is made to fail the way it does at the limit; the rest is real.
    import inotify_simple

    def at_limit(self: Any, path: Any, mask: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(inotify_simple.INotify, "add_watch", at_limit)

    async def scenario(w: Watcher, rec: Recorder) -> None:
        assert w.backend == "poll"
        (tree / "main.py").write_text("print('polled')\n")
        assert await rec.next() == tree / "main.py"
    with caplog.at_level(logging.WARNING, LOG.name):
        run(tree, scenario, poll_interval=0.2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fs.inotify.max_user_watches" in warnings[0], warnings


def test_close_leaves_no_fd_and_no_timer(tree: Path) -> None:
    before = inotify_fds()

    async def scenario(w: Watcher, rec: Recorder) -> None:
        assert inotify_fds() == before + 1
        (tree / "main.py").write_text("x")  # leave a debounce timer armed at close
        await asyncio.sleep(0)
    run(tree, scenario)
    assert inotify_fds() == before


def test_ignore_filter_matches_components_and_relative_paths() -> None:
    f = IgnoreFilter(["build", "data/*.json"])
    assert f.ignored("a/__pycache__/x.py")
    assert f.ignored("build/out.js")
    assert f.ignored("data/x.json")
    assert f.ignored(".#main.py") and f.ignored("4913") and f.ignored("main.py~")
    assert not f.ignored("main.py")
    assert not f.ignored("src/data/x.json")  # a relative pattern is anchored at the root
    assert not f.ignored("builder.py")

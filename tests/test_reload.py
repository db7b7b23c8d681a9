"""Dev-mode hot reload through a real `pbhost serve` (story 4, FR-008).

The sidecar prints `pid=<pid>` when it starts, so each restart shows up in the stream with the
new process's pid. "Nothing happened" is a bounded wait past the debounce window.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from support import IDLE, PbhostRun, Project, inotify_fds, pid_alive, printed_pids, wait_for

QUIET = 2.0  # the 500 ms window plus a restart, with a margin for a busy machine


def agent(project: Project, **extra: Any) -> PbhostRun:
    project.write("agent/main.py", IDLE)
    project.config([{"id": "ai-agent", "script": "./agent/main.py", "cwd": "./agent",
                     "devMode": True, **extra}])
    return project.serve()


def pids(run: PbhostRun) -> list[int]:
    return printed_pids(run, "ai-agent")


def wait_pid(run: PbhostRun, count: int, timeout: float = 15.0) -> int:
    run.wait_line("pid=", timeout=timeout, count=count)
    return pids(run)[count - 1]


def reload_lines(run: PbhostRun) -> list[str]:
    return [ln for ln in run.lines() if "ai-agent: restarting (" in ln]


def stays(run: PbhostRun, count: int, seconds: float = QUIET) -> None:
    """Bounded wait for a negative: no more than `count` pid lines appear within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert len(pids(run)) <= count, f"unexpected restart:\n{run.output()[-2000:]}"
        time.sleep(0.05)


def edit(path: Path, note: str) -> None:
    path.write_text(IDLE + f"# {note}\n")


def test_edit_restarts_once_with_a_new_pid(project: Project) -> None:
    run = agent(project)
    old = wait_pid(run, 1)
    edit(project.root / "agent" / "main.py", "v2")
    new = wait_pid(run, 2)
    assert new != old
    wait_for(lambda: not pid_alive(old), 10, f"old pid {old} gone")
    stays(run, 2)
    assert pid_alive(new)
    lines = reload_lines(run)
    assert len(lines) == 1 and "agent/main.py changed" in lines[0], lines


def test_twenty_writes_in_the_window_restart_once(project: Project) -> None:
    run = agent(project)
    wait_pid(run, 1)
    main_py = project.root / "agent" / "main.py"
    for i in range(20):  # a burst of saves 10 ms apart, well inside 500 ms
        edit(main_py, f"write {i}")
        time.sleep(0.01)
    wait_pid(run, 2)
    stays(run, 2)
    assert len(reload_lines(run)) == 1


def test_dev_mode_off_watches_nothing(project: Project) -> None:
    project.write("agent/main.py", IDLE)
    project.config([{"id": "ai-agent", "script": "./agent/main.py", "cwd": "./agent"}])
    run = project.serve()
    old = wait_pid(run, 1)
    assert inotify_fds(run.proc.pid) == 0
    edit(project.root / "agent" / "main.py", "v2")
    stays(run, 1)
    assert pid_alive(old) and reload_lines(run) == []


def test_atomic_rename_save_triggers(project: Project) -> None:
    run = agent(project)
    wait_pid(run, 1)
    main_py = project.root / "agent" / "main.py"
    tmp = main_py.with_name(".main.py.tmp42")
    tmp.write_text(IDLE + "# atomic\n")
    os.replace(tmp, main_py)
    wait_pid(run, 2)
    lines = reload_lines(run)
    assert len(lines) == 1 and "agent/main.py changed" in lines[0], lines


@pytest.mark.parametrize("rel", ["agent/__pycache__/main.cpython-311.pyc",
                                 "agent/node_modules/dep/index.js"])
def test_ignored_changes_do_not_restart(project: Project, rel: str) -> None:
    run = agent(project)
    wait_pid(run, 1)
    project.write(rel, "x")
    project.write(rel, "y")
    stays(run, 1)
    assert reload_lines(run) == []


def test_file_in_a_new_directory_triggers(project: Project) -> None:
    run = agent(project)
    wait_pid(run, 1)
    project.write("agent/tools/search.py", "def search(): ...\n")
    wait_pid(run, 2)
    assert "agent/tools/search.py changed" in reload_lines(run)[0]


@pytest.mark.parametrize("policy", [{"maxRetries": 1}, {"backoff": "30s"}],
                         ids=["crashed", "backoff"])
def test_edit_revives_a_failing_sidecar_at_once(project: Project, policy: dict[str, Any]) -> None:
    project.write("agent/main.py", "import os\nprint(f'pid={os.getpid()}', flush=True)\n"
                                   "raise SystemExit('broken')\n")
    project.config([{"id": "ai-agent", "script": "./agent/main.py", "cwd": "./agent",
                     "devMode": True, **policy}])
    run = project.serve()
    wait_pid(run, 1)
    run.wait_line("giving up" if "maxRetries" in policy else "restarting in 30s")
    fixed_at = time.monotonic()
    edit(project.root / "agent" / "main.py", "fixed")
    new = wait_pid(run, 2)
    assert time.monotonic() - fixed_at < 10  # at once, not after the 30 s backoff
    stays(run, 2)
    assert pid_alive(new)

"""pytest fixtures (and the one report hook); the helpers they use live in support.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from support import ARTIFACTS, Project


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    proj = Project(tmp_path)
    yield proj
    for run in proj.runs:
        run.stop()


SESSION_START = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say where the browser tests left their screenshots (those of this run)."""
    shots = [p for p in ARTIFACTS.rglob("*.png") if p.stat().st_mtime >= SESSION_START] \
        if ARTIFACTS.is_dir() else []
    if shots:
        terminalreporter.write_line(f"screenshots ({len(shots)}): {ARTIFACTS}")

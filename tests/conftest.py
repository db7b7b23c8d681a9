"""pytest fixtures (and the one report hook); the helpers they use live in support.py."""

from __future__ import annotations

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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say where the browser tests left their screenshots."""
    shots = sorted(ARTIFACTS.rglob("*.png")) if ARTIFACTS.is_dir() else []
    if shots:
        terminalreporter.write_line(f"screenshots ({len(shots)}): {ARTIFACTS}")

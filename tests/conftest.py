"""pytest fixtures; the helpers they use live in support.py."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from support import Project


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    proj = Project(tmp_path)
    yield proj
    for run in proj.runs:
        run.stop()

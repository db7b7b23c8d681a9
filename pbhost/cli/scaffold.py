"""`pbhost init`: a pb_processes.json with one Python sidecar, and that sidecar's source."""

from __future__ import annotations

from pathlib import Path

from pbhost.config.loader import CONFIG_NAMES
from pbhost.errors import PbhostError

CONFIG_FILE = "pb_processes.json"
AGENT_FILE = "agent/main.py"

# The spec's own example, minus the API key a fresh project does not have yet. Written by hand
# rather than by json.dumps so that short lists stay on one line, as a person would write them.
SAMPLE_CONFIG = """\
[
  {
    "id": "ai-agent",
    "script": "./agent/main.py",
    "cwd": "./agent",
    "env": { "PORT": "8001" },
    "devMode": true,
    "watchPaths": ["./agent"]
  }
]
"""


def sample_agent_text() -> str:
    from importlib import resources  # only `pbhost init` needs it; keep `serve` start-up lean

    return resources.files("pbhost.cli").joinpath("templates/agent_main.py").read_text("utf-8")


def init_project(root: Path, force: bool = False) -> list[Path]:
    """Write the sample config and agent under `root`; return the files written.

    Refuses to overwrite anything (including an existing .yaml/.yml config, which the new
    JSON file would silently shadow) unless `force`.
    """
    files = {root / CONFIG_FILE: SAMPLE_CONFIG, root / AGENT_FILE: sample_agent_text()}
    if not force:
        _refuse_existing(root, [*files, *(root / name for name in CONFIG_NAMES)])
    try:  # folders first: `agent` being a file then fails before anything is written
        for path in files:
            path.parent.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            path.write_text(text, encoding="utf-8")
    except OSError as exc:  # a read-only folder, `agent` being a file: the user's to fix
        raise PbhostError(f"cannot write {exc.filename}: {exc.strerror}") from None
    return list(files)


def _refuse_existing(root: Path, paths: list[Path]) -> None:
    existing = sorted({str(p.relative_to(root)) for p in paths if p.exists()})
    if existing:
        raise PbhostError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}"
                          f" in {root} (use --force to overwrite)")

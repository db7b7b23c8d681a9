"""One exception family for user mistakes: caught once in the CLI, shown as one line."""

from __future__ import annotations


class PbhostError(Exception):
    """A problem the user can fix; the CLI prints it without a traceback."""

    exit_code = 1


class ConfigError(PbhostError):
    """pb_processes.json (or .yaml) is broken; `problems` lists every finding."""

    exit_code = 2

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


class BinaryNotFound(PbhostError):
    """No pocketbase binary in any of the places we look."""

    exit_code = 127


class UnknownProcess(PbhostError):
    """A request named a process id that is not configured."""

    def __init__(self, proc_id: str) -> None:
        self.proc_id = proc_id
        super().__init__(f"unknown process {proc_id!r}")

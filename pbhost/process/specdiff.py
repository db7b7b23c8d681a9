"""What a reload of pb_processes.json changes, process by process: pure policy.

Each process of the new file is compared with the one running under the same id, fully
resolved: the spec's fields (paths are absolute and probes expanded by the loader already) and
what a start resolves the spec to (the argv, the whole environment with the envFile contents
and `${VAR}` expanded, the cwd). The host hands both in (`launched`: what the current or last
start of each id resolved to; `resolved`: what a start would resolve to now), so this module
never touches a file or a process and is tested in-process.

A difference in a field only pbhost itself looks at (dev-mode watching, the log bridge,
`autostart`, `dependsOn`) is applied in place: the process keeps running. Any other difference
restarts it. Nothing here knows a Launch: resolved values only need `==`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from pbhost.config.loader import ProcessSpec

ADDED, REMOVED, RESTARTED, UPDATED, UNCHANGED = (
    "added", "removed", "restarted", "updated", "unchanged")

# The file's key for each ProcessSpec field (where the two are not spelt the same).
KEYS = {"env_files": "envFile", "max_retries": "maxRetries", "dev_mode": "devMode",
        "watch_paths": "watchPaths", "watch_ignore": "watchIgnore", "stop_timeout": "stopTimeout",
        "pb_logs": "pbLogs", "max_memory": "maxMemory", "max_memory_for": "maxMemoryFor",
        "liveness": "livenessProbe", "readiness": "readinessProbe", "depends_on": "dependsOn"}
# Fields a running process never sees: pbhost's watchers, its log bridge, and what decides
# when a process starts (for one already running, `dependsOn` only orders the shutdown).
SOFT = frozenset({"dev_mode", "watch_paths", "watch_ignore", "debounce", "pb_logs", "autostart",
                  "depends_on"})
# Fields a start turns into the argv, the environment and the cwd: compared resolved, so
# `${A}` -> `${B}` with equal values, or an envFile moved with the same contents, is no change.
LAUNCHED = frozenset({"script", "command", "args", "cwd", "env", "env_files", "interpreter"})
RESOLVED = "environment"  # the key named when only the resolved launch differs


def key(name: str) -> str:
    return KEYS.get(name, name)


@dataclass(frozen=True)
class Change:
    """One id's fate in a reload; `keys`: the file's keys that differ (never a value)."""

    proc_id: str
    kind: str
    keys: tuple[str, ...] = ()

    @property
    def hard(self) -> bool:
        """Its run must end for the new spec to apply (if it has a run)."""
        return self.kind == RESTARTED


@dataclass(frozen=True)
class ReloadPlan:
    """Every id of the old and the new file: the new file's order, then the removed ones."""

    changes: tuple[Change, ...]

    def ids(self, kind: str) -> list[str]:
        return [c.proc_id for c in self.changes if c.kind == kind]

    def get(self, proc_id: str) -> Change:
        return next(c for c in self.changes if c.proc_id == proc_id)


def differences(old: ProcessSpec, new: ProcessSpec, old_launch: object | None,
                new_launch: object | None) -> tuple[list[str], list[str]]:
    """(fields whose change needs a restart, fields that apply in place). With both launches
    known the launched fields are compared resolved; otherwise as written."""
    resolved = old_launch is not None and new_launch is not None
    hard: list[str] = []
    soft: list[str] = []
    for f in fields(old):
        if resolved and f.name in LAUNCHED:
            continue
        if getattr(old, f.name) != getattr(new, f.name):
            (soft if f.name in SOFT else hard).append(f.name)
    if resolved and old_launch != new_launch:
        written = [f for f in LAUNCHED if getattr(old, f) != getattr(new, f)]
        hard.extend(sorted(written) or [RESOLVED])
    return hard, soft


def plan(old: Mapping[str, ProcessSpec], new: Sequence[ProcessSpec],
         launched: Mapping[str, object], resolved: Mapping[str, object]) -> ReloadPlan:
    """The plan from the running set `old` to the file's `new` (a restart is only planned: the
    host decides whether there is a run to restart)."""
    changes: list[Change] = []
    for spec in new:
        before = old.get(spec.id)
        if before is None:
            changes.append(Change(spec.id, ADDED))
            continue
        hard, soft = differences(before, spec, launched.get(spec.id), resolved.get(spec.id))
        kind = RESTARTED if hard else UPDATED if soft else UNCHANGED
        changes.append(Change(spec.id, kind, tuple(key(name) for name in hard + soft)))
    wanted = {spec.id for spec in new}
    changes.extend(Change(proc_id, REMOVED) for proc_id in old if proc_id not in wanted)
    return ReloadPlan(tuple(changes))

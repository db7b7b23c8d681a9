"""pb_processes.json / .yaml / .yml -> frozen ProcessSpecs, validated once.

Every problem in the file is collected first and reported together in one ConfigError, so a
user fixes the whole file in one round instead of one error per run. Each message names the
process (by id, or `#n` when it has no usable id) and the key.
"""

from __future__ import annotations

import json
import os
from collections import ChainMap, Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from pbhost.config import probekeys, template
from pbhost.config.keys import FIELDS as VALUE_FIELDS
from pbhost.config.keys import Context, FieldContext, Invalid, describe, suggest
from pbhost.config.probekeys import ProbeSpec
from pbhost.errors import ConfigError
from pbhost.order.depends import graph_problems
from pbhost.process.ending import STOP_TIMEOUT

__all__ = ["CONFIG_NAMES", "LoadedConfig", "ProcessSpec", "find_config", "load_config"]

CONFIG_NAMES = ("pb_processes.json", "pb_processes.yaml", "pb_processes.yml")
# Every key of a process object, parsed in this order: the health and order keys come after
# "env", whose values their `${VAR}` may use.
FIELDS = {**VALUE_FIELDS, **probekeys.FIELDS}
DEFAULT_BACKOFF = 1.0
DEFAULT_DEBOUNCE = 0.5
DEFAULT_MAX_MEMORY_FOR = 10.0  # seconds over maxMemory before pbhost restarts the process


@dataclass(frozen=True)
class ProcessSpec:
    """One sidecar as configured. Paths are absolute; durations are seconds."""

    id: str
    script: Path | None            # absolute (relative to the config file's folder)
    command: str | None            # as written; a relative path containing "/" is made absolute
    args: tuple[str, ...]
    cwd: Path                      # absolute; default: the config file's folder
    # As written, `${VAR}` unexpanded: process/launch.py resolves it at each start, with the
    # envFile values. A read-only view: specs are shared by the host, the API and the watcher.
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False,
                                   repr=False)
    env_files: tuple[Path, ...] = ()  # absolute; read at every start, a later file wins
    interpreter: str = "auto"      # "auto" or a name / path (a path relative to cwd)
    max_retries: int | None = None  # None = unlimited
    backoff: float = DEFAULT_BACKOFF
    dev_mode: bool = False
    watch_paths: tuple[Path, ...] = ()  # empty means (cwd,), filled in below
    watch_ignore: tuple[str, ...] = ()
    debounce: float = DEFAULT_DEBOUNCE
    stop_timeout: float = STOP_TIMEOUT
    autostart: bool = True
    pb_logs: str = "stderr"
    max_memory: int | None = None  # bytes over the whole process tree; None: no limit
    max_memory_for: float = DEFAULT_MAX_MEMORY_FOR
    liveness: ProbeSpec | None = None
    readiness: ProbeSpec | None = None
    watchdog: float | None = None  # seconds without WATCHDOG=1 before it counts as hung
    # {"redis": "ready", "migrate": "completed"}, as written (no implicit pocketbase here).
    depends_on: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}),
                                          hash=False)

    def __post_init__(self) -> None:
        # The default watch set depends on cwd, which a field default cannot express.
        if not self.watch_paths:
            object.__setattr__(self, "watch_paths", (self.cwd,))
        if not isinstance(self.env, MappingProxyType):
            object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        if not isinstance(self.depends_on, MappingProxyType):
            object.__setattr__(self, "depends_on", MappingProxyType(dict(self.depends_on)))


@dataclass(frozen=True)
class LoadedConfig:
    path: Path | None              # None: no config file, PocketBase alone
    processes: tuple[ProcessSpec, ...]
    warnings: tuple[str, ...] = ()  # worth showing, not worth refusing to start


# ---------------------------------------------------------------------------------------------
# Public helpers


def find_config(explicit: str | None, cwd: Path) -> Path | None:
    """The config to use: the explicit one (which must exist), else the first default name."""
    if explicit:
        path = Path(os.path.abspath(cwd / Path(explicit).expanduser()))
        if path.is_dir():
            found = _first_config_in(path)
            if found is None:
                raise ConfigError(str(path), [f"no {'/'.join(CONFIG_NAMES)} in this folder"])
            return found
        if not path.exists():
            raise ConfigError(str(path), ["not found"])
        return path
    return _first_config_in(Path(os.path.abspath(cwd)))


def _first_config_in(folder: Path) -> Path | None:
    for name in CONFIG_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def load_config(path: Path, environ: Mapping[str, str]) -> LoadedConfig:
    """Read and validate the whole file; raise one ConfigError listing every problem."""
    path = Path(os.path.abspath(path))
    data = _read_document(path)
    ctx = Context(base=path.parent, environ=environ)
    specs = _parse_top_level(data, ctx)
    if ctx.problems:
        raise ConfigError(str(path), ctx.problems)
    return LoadedConfig(path, tuple(specs), tuple(ctx.warnings))


# ---------------------------------------------------------------------------------------------
# Reading the document


def _read_document(path: Path) -> Any:
    try:
        # utf-8-sig: Windows editors (Notepad) start the file with a BOM, which JSON refuses.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(str(path), ["not found"]) from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ConfigError(str(path), [f"not UTF-8 text (line {line})"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    if not text.strip():
        # json's own "Expecting value: line 1 column 1" would not tell the user what to write.
        raise ConfigError(str(path), ["the file is empty (write [] for no sidecars)"])
    if path.suffix in (".yaml", ".yml"):
        return _parse_yaml(path, text)
    return _parse_json(path, text)


TOO_DEEP = "nested too deeply to be a process list (brackets that never close?)"


class _JsonObject(dict):  # type: ignore[type-arg]
    """A JSON object that remembers keys it saw twice (json.loads keeps the last silently)."""

    duplicates: tuple[str, ...] = ()


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) < len(pairs):
        counts = Counter(key for key, _ in pairs)
        obj.duplicates = tuple(key for key, n in counts.items() if n > 1)
    return obj


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as exc:
        problem = f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise ConfigError(str(path), [problem]) from None
    except RecursionError:
        raise ConfigError(str(path), [TOO_DEEP]) from None


def _parse_yaml(path: Path, text: str) -> Any:
    import yaml  # only YAML users pay for importing it: startup time matters

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        detail = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"YAML syntax error{where}: {detail}"]) from None
    except RecursionError:
        raise ConfigError(str(path), [TOO_DEEP]) from None


# ---------------------------------------------------------------------------------------------
# Validating


def _parse_top_level(data: Any, ctx: Context) -> list[ProcessSpec]:
    if not isinstance(data, list):
        ctx.problems.append(
            f"the top level must be an array of process objects, got {describe(data)}")
        return []
    specs: list[ProcessSpec] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(data, start=1):
        _check_unique_id(index, raw, first_index, ctx)
        spec = _parse_entry(index, raw, ctx)
        if spec is not None:
            specs.append(spec)
    _check_dependencies(specs, first_index, ctx)
    return specs


def _check_dependencies(specs: list[ProcessSpec], first_index: Mapping[str, int],
                        ctx: Context) -> None:
    """Across processes, once every entry has parsed: ids that exist (any entry with that id,
    even one with problems of its own), and no cycle."""
    graph = {spec.id: spec.depends_on for spec in specs}
    for proc_id, problem in graph_problems(graph, first_index):
        ctx.problems.append(f'process "{proc_id}": "dependsOn" {problem}')


def _check_unique_id(index: int, raw: Any, first_index: dict[str, int], ctx: Context) -> None:
    # On the raw id, so that a duplicate is reported even when either entry has other problems.
    proc_id = raw.get("id") if isinstance(raw, dict) else None
    if not isinstance(proc_id, str):
        return
    if proc_id in first_index:
        ctx.problems.append(f'process #{index}: id "{proc_id}" is already used by '
                            f"process #{first_index[proc_id]}")
    else:
        first_index[proc_id] = index


def _label(index: int, raw: Mapping[Any, Any]) -> str:
    proc_id = raw.get("id")
    if isinstance(proc_id, str) and proc_id:
        return f'process "{proc_id}"'
    return f"process #{index}"


def _parse_entry(index: int, raw: Any, ctx: Context) -> ProcessSpec | None:
    if not isinstance(raw, dict):
        ctx.problems.append(f"process #{index} must be an object, got {describe(raw)}")
        return None
    label = _label(index, raw)
    before = len(ctx.problems)
    _check_keys(label, raw, ctx)
    values: dict[str, Any] = {}
    own_env: Mapping[str, str] | None = None
    for key, parse in FIELDS.items():
        if key not in raw:
            continue
        if key in probekeys.FIELDS and own_env is None:
            own_env = _own_env(values, ctx)  # "env" and "envFile" are parsed by now
        try:
            values[key] = parse(raw[key], FieldContext(ctx, label, own_env or {}))
        except Invalid as exc:
            for sub, problem in exc.parts:
                ctx.problems.append(f'{label}: "{key}.{sub}" {problem}' if sub
                                    else f'{label}: "{key}" {problem}')
    _check_combinations(label, raw, values, ctx)
    if len(ctx.problems) > before:
        return None
    _warn(label, values, ctx)
    return _build_spec(values, ctx)


def _own_env(values: Mapping[str, Any], ctx: Context) -> dict[str, str]:
    """The process's own variables as its probes' `${PORT}` see them, once, at load: its
    envFile values under its `env` (expanded). Each start reads the files again for the
    environment itself; a file that cannot be read is reported there and by `pbhost check`."""
    files: dict[str, str] = {}
    if values.get("envFile"):
        from pbhost.config.envfile import EnvFileError, read_env_files  # python-dotenv
        try:
            files = read_env_files(values["envFile"], ctx.environ)
        except (EnvFileError, OSError):  # OSError: out of fds; the start says it and retries
            pass
    lookup = ChainMap(files, dict(ctx.environ))
    env = {name: template.expand(text, lookup)[0] for name, text in values.get("env", {}).items()}
    return {**files, **env}


def _check_keys(label: str, raw: Mapping[Any, Any], ctx: Context) -> None:
    for key in getattr(raw, "duplicates", ()):
        ctx.problems.append(f'{label}: key "{key}" appears twice')
    for key in raw:
        if key not in FIELDS:
            ctx.problems.append(f'{label}: unknown key "{key}"{suggest(str(key), FIELDS)}')


def _check_combinations(label: str, raw: Mapping[Any, Any], values: Mapping[str, Any],
                    ctx: Context) -> None:
    if "id" not in raw:
        ctx.problems.append(f'{label}: "id" is required')
    if "script" in raw and "command" in raw:
        ctx.problems.append(f'{label}: set "script" or "command", not both')
    elif "script" not in raw and "command" not in raw:
        ctx.problems.append(f'{label}: "script" or "command" is required')
    if "command" in values and values.get("interpreter", "auto") != "auto":
        ctx.problems.append(f'{label}: "interpreter" applies to "script" only; '
                            f'a "command" runs as written')
    readiness = values.get("readinessProbe")
    if "NOTIFY_SOCKET" in values.get("env", {}) and (
            "watchdog" in values or (readiness is not None and readiness.kind == "notify")):
        ctx.problems.append(f'{label}: "env" sets NOTIFY_SOCKET, so pbhost cannot hear the '
                            f'process\'s READY=1 / WATCHDOG=1 (remove it from "env")')


def _warn(label: str, values: Mapping[str, Any], ctx: Context) -> None:
    """What is worth a warning, not a refusal to start.

    A `${VAR}` naming a variable pbhost's environment does not have is one; for a process with
    an envFile that depends on the files as they are at each start, so the start warns then
    instead, and `pbhost check` reads the files."""
    if "maxMemoryFor" in values and values.get("maxMemory") is None:
        ctx.warnings.append(f'{label}: "maxMemoryFor" has no effect without "maxMemory"')
    if "envFile" in values:
        return
    for name, text in values.get("env", {}).items():
        for var in template.expand(text, ctx.environ)[1]:
            ctx.warnings.append(template.unset_warning(label, name, var))


def _build_spec(values: Mapping[str, Any], ctx: Context) -> ProcessSpec:
    cwd = values.get("cwd", ctx.base)
    return ProcessSpec(
        id=values["id"],
        script=values.get("script"),
        command=values.get("command"),
        args=values.get("args", ()),
        cwd=cwd,
        env=values.get("env", {}),
        interpreter=values.get("interpreter", "auto"),
        max_retries=values.get("maxRetries"),
        backoff=values.get("backoff", DEFAULT_BACKOFF),
        dev_mode=values.get("devMode", False),
        watch_paths=values.get("watchPaths", (cwd,)),
        watch_ignore=values.get("watchIgnore", ()),
        debounce=values.get("debounce", DEFAULT_DEBOUNCE),
        stop_timeout=values.get("stopTimeout", STOP_TIMEOUT),
        autostart=values.get("autostart", True),
        pb_logs=values.get("pbLogs", "stderr"),
        env_files=values.get("envFile", ()),
        max_memory=values.get("maxMemory"),
        max_memory_for=values.get("maxMemoryFor", DEFAULT_MAX_MEMORY_FOR),
        liveness=values.get("livenessProbe"),
        readiness=values.get("readinessProbe"),
        watchdog=values.get("watchdog"),
        depends_on=values.get("dependsOn", {}),
    )



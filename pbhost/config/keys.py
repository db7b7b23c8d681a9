"""One parser per key of a process object in pb_processes.json: value in, typed value out.

A parser raises `Invalid("must be ...")`; loader.py puts the process and the key in front, so
every message reads `process "ai-agent": "backoff" must be ...`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from pbhost.config import template

# Ids that would be confused with pbhost's own log prefixes `[pocketbase]` and `[pbhost]`,
# or that the control API's own routes (`/api/pm/list`, `/metrics`, `/logs`, `/reload`) would
# shadow.
RESERVED_IDS = frozenset({"pocketbase", "pbhost"})
API_ROUTE_IDS = frozenset({"list", "metrics", "logs", "reload"})
PB_LOGS_CHOICES = ("stderr", "all", "none")

_ID_RE = re.compile(r"[A-Za-z0-9_.-]+\Z")
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\Z")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_DURATION_HINT = 'a duration such as "500ms", "1s", "1.5s", "2m" or a number of seconds'
# Binary units, as PM2's max_memory_restart and Docker's --memory read them; the unit is
# required: a bare 512 could mean bytes or megabytes (PM2 #2488).
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMGT])(?:i?B)?\Z", re.I)
_BARE_NUMBER_RE = re.compile(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)\s*\Z")
_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_HINT = 'a size with its unit, such as "512M" or "2G" (K, M, G, T: KiB, MiB, GiB, TiB)'


class Invalid(Exception):
    """One problem with one value; the caller adds the process and key in front. A value with
    keys of its own (a probe) may carry several, each under its key: `parts`."""

    def __init__(self, message: str = "", parts: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message or "; ".join(text for _, text in parts))
        self.parts: tuple[tuple[str, str], ...] = tuple(parts) or (("", message),)


@dataclass
class Context:
    """What parsing one file needs and collects."""

    base: Path                     # the config file's folder: relative paths start here
    environ: Mapping[str, str]     # pbhost's own environment, for ${VAR}
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FieldContext:
    ctx: Context
    label: str                     # `process "ai-agent"`, for warnings (which are not raised)
    # The process's own `env` as parsed so far ("env" comes before the keys that use it), for
    # `${PORT}` in probe values: the process's own value first, then pbhost's environment.
    own_env: Mapping[str, str] = field(default_factory=dict)


def parse_duration(value: object) -> float:
    """"1s", "500ms", "1.5s", "2m", "1h" or a bare number of seconds -> seconds.

    Raises ValueError with a message that completes `"<key>" ...` (loader.py re-exports this).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be {_DURATION_HINT}, got {describe(value)}")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"must not be negative, got {describe(value)}")
        match = _DURATION_RE.match(text)
        if not match:
            raise ValueError(f"must be {_DURATION_HINT}, got {describe(value)}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"must be {_DURATION_HINT}, got {describe(value)}")
    if seconds < 0:
        raise ValueError(f"must not be negative, got {describe(value)}")
    return seconds


def _parse_id(value: Any, fc: FieldContext) -> str:
    text = _string(value)
    if not _ID_RE.match(text):
        raise Invalid(f"may contain only letters, digits, '_', '.' and '-', got {describe(value)}")
    if text.lower() in RESERVED_IDS:
        raise Invalid(f'must not be "{text}": that name is reserved for pbhost\'s own log lines')
    if text in API_ROUTE_IDS:
        raise Invalid(f'must not be "{text}": the control API uses /api/pm/{text} for itself')
    return text


def _parse_script(value: Any, fc: FieldContext) -> Path:
    path = _path(value, fc.ctx.base)
    if not path.exists():
        raise Invalid(f"file not found: {path}")
    if path.is_dir():
        raise Invalid(f"is a folder, not a file: {path}")
    return path


def _parse_command(value: Any, fc: FieldContext) -> str:
    text = _string(value)
    resolved = _path(text, fc.ctx.base) if "/" in text else None
    if any(ch.isspace() for ch in text) and (resolved is None or not resolved.exists()):
        # PM2 habits: there is no shell, so "npm run start" would be one program name.
        program, *rest = text.split()
        raise Invalid(f'"{text}" is run as one program name (there is no shell): write '
                      f'"command": {json.dumps(program)}, "args": {json.dumps(rest)}')
    return str(resolved) if resolved is not None else text


def _parse_args(value: Any, fc: FieldContext) -> tuple[str, ...]:
    return _string_list(value)


def _parse_cwd(value: Any, fc: FieldContext) -> Path:
    path = _path(value, fc.ctx.base)
    if not path.exists():
        raise Invalid(f"folder not found: {path}")
    if not path.is_dir():
        raise Invalid(f"is not a folder: {path}")
    return path


def _parse_env(value: Any, fc: FieldContext) -> dict[str, str]:
    """The values as written: `${VAR}` is expanded at each start (template.py), when the
    envFile values it may refer to are read."""
    if not isinstance(value, dict):
        raise Invalid(f"must be an object of strings, got {describe(value)}")
    env: dict[str, str] = {}
    for name, raw in value.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise Invalid(f"has an invalid variable name {describe(name)}")
        text = _env_string(name, raw)
        if "\0" in text:
            raise Invalid(f"entry {name} contains a NUL character")
        try:
            template.check(text)
        except ValueError as exc:
            raise Invalid(f"entry {name} has {exc}") from None
        env[name] = text
    return env


def _parse_env_file(value: Any, fc: FieldContext) -> tuple[Path, ...]:
    # Not opened here: the files are read at every start, so a missing one fails that start
    # (with the reason in lastError) and `pbhost check` reports it.
    hint = "must be a path or a non-empty array of paths"
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise Invalid(f"{hint}, got {describe(value)}")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            where = f"but item {i} is" if items is value else "got"
            raise Invalid(f"{hint}, {where} {describe(item)}")
    return tuple(_path(item, fc.ctx.base) for item in items)


def _env_string(name: str, raw: Any) -> str:
    # Numbers and booleans are accepted because YAML turns `PORT: 8001` into an int; they are
    # written the way JSON writes them ("8001", "true"), which is what a program would expect.
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (bool, int, float)):
        return json.dumps(raw)
    raise Invalid(f'entry {name} must be a string, number or boolean, got {describe(raw)}')


def expand(text: str, lookup: Mapping[str, str], what: str, fc: FieldContext) -> str:
    """${VAR} and ${VAR:-default} from `lookup` (config/template.py's language); $$ is a
    literal $. `what` names the value in messages: `env PORT`, `livenessProbe`. An unset
    name becomes an empty string, with a warning."""
    try:
        value, unset = template.expand(text, lookup)
    except ValueError as exc:
        raise Invalid(f"{_entry(what)}has {exc}") from None
    for var in unset:
        fc.ctx.warnings.append(f"{fc.label}: {what} refers to ${{{var}}}, "
                               f"which is not set (using an empty string)")
    return value


def _entry(what: str) -> str:
    # Inside "env" the message names the variable; elsewhere the key is in front already.
    return f"entry {what[4:]} " if what.startswith("env ") else ""


def _parse_interpreter(value: Any, fc: FieldContext) -> str:
    text = _string(value)
    # A path stays relative here: process/launch.py resolves it against the process's cwd.
    return os.path.expanduser(text)


def _parse_max_retries(value: Any, fc: FieldContext) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid(f"must be an integer >= 0, or null for unlimited, got {describe(value)}")
    return value


def _parse_backoff(value: Any, fc: FieldContext) -> float:
    seconds = _duration(value)
    if seconds <= 0:
        # Zero would restart a crashing process in a tight loop.
        raise Invalid(f"must be greater than 0, got {describe(value)}")
    return seconds


def _parse_duration_field(value: Any, fc: FieldContext) -> float:
    return _duration(value)


def _parse_bool(value: Any, fc: FieldContext) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, got {describe(value)}")
    return value


def _parse_watch_paths(value: Any, fc: FieldContext) -> tuple[Path, ...]:
    paths = tuple(_path(item, fc.ctx.base) for item in _string_list(value))
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise Invalid(f"entry not found: {', '.join(missing)}")
    return paths  # [] means "the default": ProcessSpec fills in (cwd,)


def _parse_watch_ignore(value: Any, fc: FieldContext) -> tuple[str, ...]:
    return _string_list(value)


def parse_size(value: object) -> int:
    """"512M", "2G", "1.5G", "512MiB" -> bytes. Raises ValueError completing `"<key>" ...`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be {_SIZE_HINT}, got {describe(value)}")
    if not isinstance(value, str) or _BARE_NUMBER_RE.match(value):
        raise ValueError(f"needs a unit, as in \"512M\" or \"2G\" (K, M, G, T: KiB, MiB, GiB, "
                         f"TiB): {describe(value)} alone could be bytes or megabytes")
    match = _SIZE_RE.match(value.strip())
    if match is None:
        raise ValueError(f"must be {_SIZE_HINT}, got {describe(value)}")
    size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    if size <= 0:
        raise ValueError(f"must be greater than 0, got {describe(value)}")
    return size


def _parse_max_memory(value: Any, fc: FieldContext) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _parse_pb_logs(value: Any, fc: FieldContext) -> str:
    if value not in PB_LOGS_CHOICES:
        choices = ", ".join(f'"{c}"' for c in PB_LOGS_CHOICES)
        raise Invalid(f"must be one of {choices}, got {describe(value)}")
    return str(value)


# Problems are reported in this order, the order the keys are documented in.
FIELDS: dict[str, Callable[[Any, FieldContext], Any]] = {
    "id": _parse_id,
    "script": _parse_script,
    "command": _parse_command,
    "args": _parse_args,
    "cwd": _parse_cwd,
    "env": _parse_env,
    "envFile": _parse_env_file,
    "interpreter": _parse_interpreter,
    "maxRetries": _parse_max_retries,
    "backoff": _parse_backoff,
    "devMode": _parse_bool,
    "watchPaths": _parse_watch_paths,
    "watchIgnore": _parse_watch_ignore,
    "debounce": _parse_duration_field,
    "stopTimeout": _parse_duration_field,
    "maxMemory": _parse_max_memory,
    "maxMemoryFor": _parse_duration_field,
    "autostart": _parse_bool,
    "pbLogs": _parse_pb_logs,
}


# ---------------------------------------------------------------------------------------------
# Small value checks shared by the parsers


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():  # "  " names no program, path or id
        raise Invalid(f"must be a non-empty string, got {describe(value)}")
    return value


def _string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise Invalid(f"must be an array of strings, got {describe(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise Invalid(f"must be an array of strings, but item {i} is {describe(item)}")
    return tuple(value)


def _path(value: Any, base: Path) -> Path:
    """A path from the file, absolute: relative ones start at the config file's folder."""
    text = os.path.expanduser(_string(value))
    return Path(os.path.normpath(base / text))


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def suggest(key: str, known: Iterable[str]) -> str:
    """` (did you mean "devMode"?)` for a misspelt key, else ""."""
    known = list(known)
    # Case and separators first: "devmode", "dev_mode" and "max-retries" are the usual slips.
    folded = {_fold(name): name for name in known}
    match = folded.get(_fold(key))
    if match is None:
        import difflib  # only a misspelt key pays for it

        close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
        match = close[0] if close else None
    return f' (did you mean "{match}"?)' if match else ""


def _fold(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def describe(value: Any) -> str:
    """The value as the user wrote it, with its JSON type: `string "5"`, `number 3`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"string {json.dumps(shown)}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__

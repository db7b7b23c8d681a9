"""The health and order keys of a process: `livenessProbe`, `readinessProbe`, `dependsOn`,
`watchdog`. Parsers in the shape of keys.py (value in, typed value out, `Invalid` out).

A probe is one object with exactly one kind and optional timing keys named as in Kubernetes:

    {"http": "http://127.0.0.1:${PORT}/health", "period": "5s", "failureThreshold": 3}
    {"tcp": "127.0.0.1:8001"}   {"exec": ["python", "check.py"]}
    {"logLine": "Uvicorn running on"}   {"notify": true}     (readiness only)

`${VAR}` in http, tcp and exec values expands from the process's own `env`, then from pbhost's
environment, so a port is written once. Hosts are IP addresses or `localhost`: a probe checks a
process on this machine (or in this pod), and pbhost resolves no names on its loop.
"""

from __future__ import annotations

import functools
import json
import re
from collections import ChainMap
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from pbhost.config.keys import (
    Context,
    FieldContext,
    Invalid,
    describe,
    expand,
    parse_duration,
    suggest,
)
from pbhost.order.depends import CONDITIONS, PB_CONDITIONS, PB_ID

POLLED = ("http", "tcp", "exec")         # run every `period`
WAITED = ("logLine", "notify")           # readiness only: a line, or READY=1, ends the wait
TIMING = ("initialDelay", "period", "timeout", "failureThreshold", "successThreshold")
MIN_PERIOD = 0.1                         # seconds; a shorter period is a busy loop
_ID_RE = re.compile(r"[A-Za-z0-9_.-]+\Z")


@dataclass(frozen=True)
class ProbeSpec:
    """One probe as configured. Durations are seconds."""

    kind: str                      # "http", "tcp", "exec", "logLine" or "notify"
    target: str = ""               # the URL, HOST:PORT, the command line or the pattern
    host: str = ""                 # http, tcp: the IP address to connect to
    port: int = 0
    path: str = "/"                # http: path and query
    argv: tuple[str, ...] = ()     # exec
    status: int | None = None      # http: the one status that counts as success
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1
    # The probe object as the file has it: for `for_run` (its ${VAR}s again from each run's
    # environment, as an envFile is read at every start) and for `label`. Not compared: the
    # same probe written with another variable of the same value is the same probe.
    written: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def polled(self) -> bool:
        return self.kind in POLLED

    @functools.cached_property
    def label(self) -> str:
        """How messages (lastError, the log, the API's health) name it: `GET /health`,
        `TCP 127.0.0.1:${PORT}`, `exec check.py`. As written, its `${VAR}`s not expanded:
        they may come from an envFile's secrets."""
        value = self.written.get(self.kind) if self.written is not None else None
        if self.kind == "http":
            return f"GET {_path_of(value.strip()) if isinstance(value, str) else self.path}"
        if self.kind == "tcp":
            return f"TCP {value.strip() if isinstance(value, str) else self.target}"
        if self.kind == "exec":
            argv = value if isinstance(value, list) else self.argv
            return "exec " + " ".join(str(item).strip() for item in argv)[:80]
        if self.kind == "logLine":
            return f"log line /{self.target}/"
        return "READY=1"


# Kubernetes' defaults, but for readiness's period: readiness gates the start of dependents and
# stops once it passed, so it is checked every second (Kubernetes: 10 s) while it waits.
LIVENESS_DEFAULTS = {"initialDelay": 0.0, "period": 10.0, "timeout": 1.0, "failureThreshold": 3,
                     "successThreshold": 1}
READINESS_DEFAULTS = {"initialDelay": 0.0, "period": 1.0, "timeout": 1.0, "successThreshold": 1}


def parse_liveness(value: Any, fc: FieldContext) -> ProbeSpec:
    return _parse_probe(value, fc, POLLED, LIVENESS_DEFAULTS)


def parse_readiness(value: Any, fc: FieldContext) -> ProbeSpec:
    return _parse_probe(value, fc, POLLED + WAITED, READINESS_DEFAULTS)


def _parse_probe(value: Any, fc: FieldContext, kinds: tuple[str, ...],
                 defaults: Mapping[str, float]) -> ProbeSpec:
    if not isinstance(value, dict):
        raise Invalid(f"must be an object such as {{\"http\": \"http://127.0.0.1:8001/health\"}}, "
                      f"got {describe(value)}")
    known = (*kinds, "status", *defaults)
    problems: list[tuple[str, str]] = []
    for key in value:
        if key == "failureThreshold" and key not in known:
            problems.append((key, "does not apply to a readiness probe: it is tried until it "
                                  "passes, then it stops (a livenessProbe restarts on failures)"))
        elif key in WAITED and key not in known:
            problems.append((key, "is for a readinessProbe only: it says when a process has "
                                  "come up, not whether it is still alive"))
        elif key not in known:
            problems.append((str(key), f"is not a key of this probe{suggest(str(key), known)}"))
    chosen = [k for k in kinds if k in value]
    if problems and not chosen:
        raise Invalid(parts=problems)  # the kind was misspelt or misplaced: said above
    if len(chosen) != 1:
        names = ", ".join(f'"{k}"' for k in kinds)
        problems.append(("", f"needs exactly one of {names}" if not chosen else
                         f"has {len(chosen)} kinds ({', '.join(chosen)}); choose one"))
        raise Invalid(parts=problems)
    kind = chosen[0]
    lookup = ChainMap(dict(fc.own_env), dict(fc.ctx.environ))
    fields: dict[str, Any] = {}
    try:
        fields.update(_KIND_PARSERS[kind](value[kind], lookup, fc))
    except Invalid as exc:
        problems.append((kind, str(exc)))
    if "status" in value:
        try:
            fields["status"] = _status(value["status"], kind)
        except Invalid as exc:
            problems.append(("status", str(exc)))
    if kind in WAITED:
        waits_for = "the line" if kind == "logLine" else "READY=1"
        problems += [(key, f'does not apply to a "{kind}" probe (it waits for {waits_for}, '
                           "without polling)") for key in TIMING if key in value and key in known]
    else:
        for key, default in defaults.items():
            try:
                fields[_FIELD[key]] = _timing(key, value.get(key, default),
                                              defaults is LIVENESS_DEFAULTS)
            except Invalid as exc:
                problems.append((key, str(exc)))
    if problems:
        raise Invalid(parts=problems)
    return ProbeSpec(kind=kind, written=MappingProxyType(dict(value)), **fields)


def for_run(probe: ProbeSpec, env: Mapping[str, str], readiness: bool) -> ProbeSpec:
    """`probe` with its `${VAR}`s expanded from one run's environment (its envFile as read for
    that start, its `env`, pbhost's): `.env` says PORT=8002 now, `pbhost restart` moves the
    server, and the probe follows it. What cannot be parsed so keeps the probe as loaded."""
    raw = probe.written
    if raw is None or probe.kind not in POLLED or "${" not in json.dumps(raw.get(probe.kind)):
        return probe
    fc = FieldContext(Context(Path("/"), env), "", env)
    try:
        return (parse_readiness if readiness else parse_liveness)(dict(raw), fc)
    except Invalid:
        return probe


_FIELD = {"initialDelay": "initial_delay", "period": "period", "timeout": "timeout",
          "failureThreshold": "failure_threshold", "successThreshold": "success_threshold"}


def _timing(key: str, raw: Any, liveness: bool) -> float | int:
    if key.endswith("Threshold"):
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
            raise Invalid(f"must be a whole number >= 1, got {describe(raw)}")
        if key == "successThreshold" and liveness and raw != 1:
            raise Invalid(f"must be 1 for a liveness probe (as in Kubernetes: one success "
                          f"clears its failures), got {describe(raw)}")
        return raw
    try:
        seconds = parse_duration(raw)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    if key == "period" and seconds < MIN_PERIOD:
        raise Invalid(f"must be at least 100ms, got {describe(raw)}")
    if key == "timeout" and seconds <= 0:
        raise Invalid(f"must be greater than 0, got {describe(raw)}")
    return seconds


def _status(raw: Any, kind: str) -> int:
    if kind != "http":
        raise Invalid('applies to an "http" probe only')
    if isinstance(raw, bool) or not isinstance(raw, int) or not 100 <= raw <= 599:
        raise Invalid(f"must be an HTTP status code such as 200, got {describe(raw)}")
    return raw


def _text(raw: Any, lookup: Mapping[str, str], fc: FieldContext, what: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise Invalid(f"must be a non-empty string, got {describe(raw)}")
    return expand(raw.strip(), lookup, what, fc)


def _http(raw: Any, lookup: Mapping[str, str], fc: FieldContext) -> dict[str, Any]:
    from urllib.parse import urlsplit  # only a process with an http probe pays for it

    url = _text(raw, lookup, fc, "http probe")
    written = raw.strip()  # messages quote it as written: an expanded value may be a secret
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise Invalid(f"must be an http:// URL such as http://127.0.0.1:8001/health, got "
                      f"{describe(written)}")
    try:
        port = parts.port or 80
    except ValueError:
        raise Invalid(f"has an invalid port: {describe(written)}") from None
    host = _host(parts.hostname or "", written)
    return {"target": url, "host": host, "port": port, "path": _path_of(url)}


def _path_of(url: str) -> str:
    """The path and query an HTTP probe asks for."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _tcp(raw: Any, lookup: Mapping[str, str], fc: FieldContext) -> dict[str, Any]:
    text = _text(raw, lookup, fc, "tcp probe")
    written = raw.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text  # a bare port: on loopback
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(f'must be "HOST:PORT" such as "127.0.0.1:8001", got {describe(written)}')
    return {"target": text, "host": _host(host.strip("[]") or "127.0.0.1", written),
            "port": int(port)}


def _host(host: str, shown: str) -> str:
    import ipaddress  # only a process with a probe pays for it

    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise Invalid(f"must name an IP address or localhost (pbhost probes processes on this "
                      f"machine and resolves no names), got {describe(shown)}") from None


def _exec(raw: Any, lookup: Mapping[str, str], fc: FieldContext) -> dict[str, Any]:
    if isinstance(raw, str):
        raise Invalid(f'must be an array such as ["python", "check.py"] (there is no shell; '
                      f'for one, write ["sh", "-c", {json.dumps(raw)}])')
    if not isinstance(raw, list) or not raw:
        raise Invalid(f'must be a non-empty array such as ["python", "check.py"], got '
                      f"{describe(raw)}")
    argv = tuple(_text(item, lookup, fc, "exec probe") if isinstance(item, str) and item.strip()
                 else _bad_item(i, item) for i, item in enumerate(raw))
    return {"target": " ".join(argv), "argv": argv}


def _bad_item(index: int, item: Any) -> str:
    raise Invalid(f"must be an array of non-empty strings, but item {index} is {describe(item)}")


def _log_line(raw: Any, lookup: Mapping[str, str], fc: FieldContext) -> dict[str, Any]:
    # A regular expression, taken literally: `$` means end of line here, not a variable.
    if not isinstance(raw, str) or not raw:
        raise Invalid(f"must be a regular expression (a non-empty string), got {describe(raw)}")
    try:
        re.compile(raw)
    except re.error as exc:
        raise Invalid(f"is not a valid regular expression: {exc}") from None
    return {"target": raw}


def _notify(raw: Any, lookup: Mapping[str, str], fc: FieldContext) -> dict[str, Any]:
    if raw is not True:
        raise Invalid(f"must be true (ready when the process sends READY=1 to its "
                      f"NOTIFY_SOCKET), got {describe(raw)}")
    return {}


_KIND_PARSERS: dict[str, Callable[[Any, Mapping[str, str], FieldContext], dict[str, Any]]] = {
    "http": _http, "tcp": _tcp, "exec": _exec, "logLine": _log_line, "notify": _notify,
}


def parse_depends_on(value: Any, fc: FieldContext) -> Mapping[str, str]:
    """{"redis": "ready", "migrate": "completed"}; ids are checked against the whole file by
    the loader, once every entry has parsed."""
    if not isinstance(value, dict):
        raise Invalid(f'must be an object such as {{"redis": "ready"}}, got {describe(value)}')
    problems: list[tuple[str, str]] = []
    deps: dict[str, str] = {}
    for dep, cond in value.items():
        if not isinstance(dep, str) or not _ID_RE.match(dep):
            problems.append(("", f"has an invalid process id {describe(dep)}"))
            continue
        choices = PB_CONDITIONS if dep == PB_ID else CONDITIONS
        if cond not in choices:
            hint = suggest(cond, choices) if isinstance(cond, str) else ""
            names = ", ".join(f'"{c}"' for c in choices)
            why = " (PocketBase never completes)" if dep == PB_ID and cond == "completed" else ""
            problems.append((dep, f"must be one of {names}{why}, got {describe(cond)}{hint}"))
            continue
        deps[dep] = cond
    if problems:
        raise Invalid(parts=problems)
    return MappingProxyType(deps)


def parse_watchdog(value: Any, fc: FieldContext) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    if seconds < MIN_PERIOD:
        raise Invalid(f"must be at least 100ms, got {describe(value)}")
    return seconds


# Added to keys.FIELDS by the loader, after the keys they may use (`env`).
FIELDS: dict[str, Callable[[Any, FieldContext], Any]] = {
    "livenessProbe": parse_liveness,
    "readinessProbe": parse_readiness,
    "watchdog": parse_watchdog,
    "dependsOn": parse_depends_on,
}

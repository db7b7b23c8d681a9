"""`${VAR}` and `${VAR:-default}` in a process's `env` values; `$$` is a literal `$`.

A value is checked when the config is loaded (a malformed reference is a config error) and
expanded at every start, against pbhost's environment and the process's envFile values, which
are read again at each start (process/launch.py). Messages never quote the value: it may be a
secret.
"""

from __future__ import annotations

import re
from typing import Mapping

# `${...}` is a reference whose body is checked separately so that a typo such as
# `${OPENAI KEY}` or a missing `}` is reported instead of passed through silently.
_REF_RE = re.compile(r"\$\$|\$\{(?P<body>[^}]*)(?P<close>\}?)")
_REF_BODY_RE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?\Z", re.S)
HINT = "write ${NAME} or ${NAME:-default}, or $$ for a literal $"


def check(text: str) -> None:
    """Raise ValueError (completing `entry X has ...`) for a malformed reference."""
    expand(text, {})


def expand(text: str, lookup: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
    """The value with its references replaced, and the names it refers to that are not set
    (each replaced by an empty string). `${NAME:-default}` uses the default when NAME is unset
    or empty, as in sh."""
    unset: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        body = _REF_BODY_RE.match(match.group("body"))
        if not match.group("close") or body is None:
            raise ValueError(f"a malformed reference at character {match.start() + 1} ({HINT})")
        var, default = body.group("name"), body.group("default")
        current = lookup.get(var)
        if default is not None:
            return current if current else default
        if current is None:
            unset.append(var)
            return ""
        return current

    return _REF_RE.sub(replace, text), tuple(unset)


def unset_warning(label: str, name: str, var: str, where: str = "") -> str:
    """The warning for `${var}` in env entry `name` when var is unset (names only)."""
    return (f"{label}: env {name} refers to ${{{var}}}, which is not set{where} "
            f"(using an empty string)")

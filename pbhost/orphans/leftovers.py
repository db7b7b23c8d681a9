"""`<data dir>/.pbhost/state.json`: what this run has spawned, so the next run can end what a
killed pbhost left behind.

The file holds the boot id, this pbhost's pid and start time, a random run id (also given to
every child as PBHOST_RUN_ID, which their own children inherit), and for each live child its
id, pid, process group and start time (field 22 of /proc/<pid>/stat). It is rewritten
atomically (temp file + rename) whenever that set changes, and removed on a clean exit.

A new `pbhost serve` with the same data dir reads it first. A process is a leftover of that
run when, in the same boot and with that pbhost gone:
- it leads a recorded process group and still has the recorded start time (a recycled pid has
  another start time), and then its whole group is ended; or
- its environment carries that run's PBHOST_RUN_ID (group members whose leader is gone,
  descendants that escaped with setsid()).
Leftovers get SIGTERM, then SIGKILL after a grace period; each one ended is logged.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pbhost.errors import PbhostError
from pbhost.orphans import proctable
from pbhost.orphans.proctable import ProcInfo
from pbhost.pocketbase.binary import PB_ID
from pbhost.process.ending import alive, end_blocking, ending
from pbhost.process.runenv import RUN_ENV
from pbhost.statedir import KeptFile, state_path

log = logging.getLogger("pbhost")

LEFTOVER_GRACE = 3.0           # seconds between SIGTERM and SIGKILL for a previous run's leftovers


@dataclass(frozen=True)
class Recorded:
    id: str
    pid: int
    pgid: int
    start: int


class Ledger:
    """Keeps state.json equal to the set of live children; a write only when that set changes.

    A disk that refuses the write (full, read-only) is said once and retried (statedir.KeptFile);
    supervising goes on meanwhile."""

    def __init__(self, data_dir: Path, run_id: str) -> None:
        self.path = state_path(data_dir)
        self.run_id = run_id
        me = proctable.proc_info(os.getpid())
        self._head = {"version": 1, "boot": proctable.boot_id(), "run": run_id,
                      "pbhost": {"pid": os.getpid(), "start": me.start if me else 0}}
        self._starts: dict[int, int] = {}   # pid -> start ticks, read once per child
        self._last: tuple[tuple[str, int], ...] | None = None
        self._file = KeptFile(self.path, "a pbhost killed outright may leave processes behind")

    def record(self, children: Iterable[tuple[str, int]]) -> None:
        """`children`: (process id, pid) of every live child; their pgid is their pid."""
        current = tuple(children)
        if current == self._last:
            return
        self._last = current
        starts = {pid: self._starts.get(pid) or proctable.start_time(pid) or 0
                  for _, pid in current}
        self._starts = starts
        body = dict(self._head, children=[
            {"id": proc_id, "pid": pid, "pgid": pid, "start": starts[pid]}
            for proc_id, pid in current])
        self._file.put(json.dumps(body, separators=(",", ":")).encode())

    def clear(self) -> None:
        """A clean exit: nothing of ours is left, the next run has nothing to check."""
        self._file.close()
        try:
            if _read(self.path).get("run") == self.run_id:
                self.path.unlink()
        except (OSError, ValueError):
            pass


def _read(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_bytes())
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return data


def _recorded(data: dict[str, Any]) -> list[Recorded]:
    out = []
    for item in data.get("children") or ():
        try:
            out.append(Recorded(str(item["id"]), int(item["pid"]), int(item["pgid"]),
                                int(item["start"])))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def find_leftovers(data: dict[str, Any]) -> list[tuple[ProcInfo, str]]:
    """The previous run's processes still alive, each with the id of the child it came from."""
    procs = [p for p in proctable.all_processes() if p.state != "Z"]
    by_pid = {p.pid: p for p in procs}
    # Never us or what started us (a shell that a sidecar of that run opened, say).
    ours = _lineage(os.getpid(), by_pid)
    procs = [p for p in procs if p.pid not in ours]
    found: dict[int, tuple[ProcInfo, str]] = {}
    for rec in _recorded(data):
        leader = by_pid.get(rec.pgid)
        if leader is not None and leader.start == rec.start:
            for p in procs:
                if p.pgid == rec.pgid:
                    found[p.pid] = (p, rec.id)
    run = data.get("run")
    if isinstance(run, str) and run:
        for p in procs:
            if p.pid not in found:
                env = proctable.environ(p.pid)
                if env.get(RUN_ENV) == run:
                    found[p.pid] = (p, env.get("PBHOST_PROCESS_ID", PB_ID))
    return list(found.values())


def _lineage(pid: int, by_pid: dict[int, ProcInfo]) -> set[int]:
    out: set[int] = set()
    while pid > 0 and pid not in out:
        out.add(pid)
        pid = by_pid[pid].ppid if pid in by_pid else 0
    return out


def end_previous_run(data_dir: Path, grace: float = LEFTOVER_GRACE) -> int:
    """Before anything is spawned: end what a previous pbhost on this data dir left behind.

    Raises PbhostError when that pbhost is still running. Returns how many processes it ended.
    """
    path = state_path(data_dir)
    try:
        data = _read(path)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return 0
    if data.get("boot") != proctable.boot_id():
        return 0  # written before a reboot: none of it can be alive
    owner = _live_owner(data)
    if owner is not None:
        raise PbhostError(f"another pbhost (pid {owner}) is running with the data dir "
                          f"{data_dir}; stop it first")
    leftovers = find_leftovers(data)
    for p, proc_id in leftovers:
        log.warning("ending a leftover of the previous run (pbhost was killed): pid %d (%s: %s)",
                    p.pid, proc_id, proctable.cmdline(p.pid))
    end_processes([p for p, _ in leftovers], grace)
    return len(leftovers)


def running_owner(data_dir: Path) -> int | None:
    """The pid of the pbhost running with `data_dir` now, as its state.json says, or None."""
    try:
        data = _read(state_path(data_dir))
    except (OSError, ValueError):
        return None
    return _live_owner(data) if data.get("boot") == proctable.boot_id() else None


def _live_owner(data: dict[str, Any]) -> int | None:
    owner = data.get("pbhost") or {}
    if isinstance(owner, dict) and proctable.is_alive(int(owner.get("pid", 0)),
                                                     int(owner.get("start", -1))):
        return int(owner["pid"])
    return None


def end_processes(procs: list[ProcInfo], grace: float) -> list[ProcInfo]:
    """SIGTERM each, wait up to `grace` for all to go, SIGKILL the rest; return those killed.

    Synchronous: used before the event loop runs. A pid is signalled only while it still has
    the start time it had when found, so a recycled pid is never hit.
    """
    def told(p: ProcInfo, sig: int) -> None:
        if sig == signal.SIGKILL:
            log.warning("pid %d ignored SIGTERM for %gs: killed", p.pid, grace)
    killed: list[ProcInfo] = end_blocking(ending(alive(procs), grace, kill_wait=0,
                                                 on_signal=told)).killed
    return killed

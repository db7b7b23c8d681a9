"""The policies behind issue 12, in-process: which tokens are worth asking PocketBase about and
how often, spawns that fail for want of resources, files the disk refuses.

The real-process side (a 1024-fd pbhost under a flood, a full tmpfs, `| head -1`) is in
test_limits.py; here a fake clock and a tiny fake PocketBase make the rules checkable exactly.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pytest

from pbhost import statedir
from pbhost.control.auth import (
    BUDGET_BURST,
    BUDGET_RATE,
    CHECKS_AT_ONCE,
    Authenticator,
    Budget,
    auth_claims,
)
from pbhost.process.reaper import ExitCallback
from pbhost.process.spawn import Child, SpawnError
from pbhost.process.state import ProcessState
from pbhost.process.supervisor import Launch, Policy, Supervisor
from support import ROOT, pbhost_env

S = ProcessState
NOW = 1_800_000_000.0


def b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def jwt(payload: Mapping[str, Any], header: Mapping[str, Any] | None = None,
        sig: bytes = b"s" * 32) -> bytes:
    head = header if header is not None else {"alg": "HS256", "typ": "JWT"}
    return b".".join([b64(json.dumps(head).encode()), b64(json.dumps(payload).encode()),
                      b64(sig)])


def claims(record: str = "r1", exp: float = NOW + 3600, kind: str = "auth") -> dict[str, Any]:
    return {"collectionId": "pbc_3142635823", "exp": exp, "id": record, "refreshable": True,
            "type": kind}


# -- the shape of a PocketBase token ------------------------------------------------------
def test_a_token_shaped_like_pocketbases_passes_with_its_claims() -> None:
    # The shape of a real superuser token from `pocketbase` 0.40 (its signature changed).
    real = (b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJjb2xsZWN0aW9uSWQiOiJwYmNfMzE0MjYzNTgyMyIs"
            b"ImV4cCI6MTc5NjI0MzcxNywiaWQiOiJmbWVqeHg3eGJ3bGFxcmsiLCJyZWZyZXNoYWJsZSI6dHJ1ZSwidH"
            b"lwZSI6ImF1dGgifQ.bjdicD6TV6z3CgLHi8gJ7IV8FRqCD6k92wKFCqhIhiX")
    got = auth_claims(real, 1_796_243_000.0)
    assert got is not None and got["id"] == "fmejxx7xbwlaqrk" and got["type"] == "auth"
    assert auth_claims(real, 1_796_243_717.0) is None  # at its exp it is dead


@pytest.mark.parametrize("token", [
    b"", b"random-garbage", b"a.b", b"a.b.c.d", b"..", b"%%%.%%%.%%%",
    jwt(claims())[:-1] + b"!",                              # signature not base64url
    b64(b"not json") + b"." + b64(b"{}") + b".c2ln",
    jwt(["a list"]),  # type: ignore[arg-type]              # payload not an object
    jwt(claims(), header={"typ": "JWT"}),                   # no alg
    jwt(claims(kind="refresh")),                            # not an auth token
    jwt(claims(exp=NOW - 1)),                               # expired
    jwt({**claims(), "exp": "tomorrow"}),
    jwt({k: v for k, v in claims().items() if k != "exp"}),
    jwt(claims(record="x" * 5000)),                         # far longer than any real one
], ids=lambda t: t[:24].decode(errors="replace") or "empty")
def test_tokens_that_cannot_be_a_pocketbase_token_are_refused_without_asking(
        token: bytes) -> None:
    assert auth_claims(token, NOW) is None


def test_the_budget_spends_refills_and_takes_back() -> None:
    now = [0.0]
    budget = Budget(3, 0.5, lambda: now[0])
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 1.9
    assert not budget.take()
    now[0] = 2.0
    assert budget.take() and not budget.take()
    budget.give_back()
    assert budget.take()
    now[0] = 1000.0
    assert sum(budget.take() for _ in range(10)) == 3  # never above the burst


# -- the authenticator against a fake PocketBase -----------------------------------------
class FakePocketBase:
    """Answers auth-refresh: 200 for tokens whose record id is in `superusers`, else 401.
    Counts the questions and the most it had in flight at once."""

    def __init__(self, superusers: set[str]) -> None:
        self.superusers = superusers
        self.asked = 0
        self.in_flight = 0
        self.most = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.asked += 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0.02)
        self.in_flight -= 1
        auth = [line.split(b": ", 1)[1] for line in head.split(b"\r\n")
                if line.lower().startswith(b"authorization: ")][0]
        found = auth_claims(auth, time.time())
        ok = found is not None and found["id"] in self.superusers
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n" if ok else b"HTTP/1.0 401 Unauthorized\r\n\r\n")
        await writer.drain()
        writer.close()


def live(record: str) -> str:
    return jwt(claims(record, exp=time.time() + 3600), sig=os.urandom(32)).decode()


def test_guessing_spends_a_budget_a_known_superuser_never_waits_for() -> None:
    async def main() -> None:
        pb = FakePocketBase({"admin"})
        await pb.start()
        now = [0.0]
        auth = Authenticator(["pbhost-token"], "127.0.0.1", pb.port, clock=lambda: now[0])
        try:
            first = live("admin")
            assert (await auth.check(f"Bearer {first}")).status == 200
            assert pb.asked == 1
            # Random strings cost PocketBase nothing; forged JWTs spend the budget, then 429.
            for _ in range(200):
                assert (await auth.check(f"Bearer {os.urandom(24).hex()}")).status == 401
            assert pb.asked == 1
            forged = [(await auth.check(live(f"guess{i}"))).status for i in range(50)]
            assert forged.count(401) == BUDGET_BURST and forged.count(429) == 50 - BUDGET_BURST
            assert pb.asked == 1 + BUDGET_BURST
            # A new login of the superuser PocketBase accepted before is checked at once, and
            # pbhost's own token is never checked.
            assert (await auth.check(live("admin"))).status == 200
            assert (await auth.check("Bearer pbhost-token")).status == 200
            assert (await auth.check(first)).status == 200  # cached: not asked again
            assert pb.asked == 2 + BUDGET_BURST
            # The budget refills with time.
            now[0] += 4 / BUDGET_RATE
            refilled = [(await auth.check(live(f"later{i}"))).status for i in range(10)]
            assert refilled.count(401) == 4
            # At most CHECKS_AT_ONCE questions in flight, however many requests wait.
            many = await asyncio.gather(*(auth.check(live("admin")) for _ in range(20)))
            assert all(v.ok for v in many) and pb.most <= CHECKS_AT_ONCE
        finally:
            await pb.close()
    asyncio.run(main())


# -- spawns that fail for want of resources -----------------------------------------------
class StarvedRuntime:
    """Spawning fails with `err` the first `fail` times, then succeeds (a pretend child)."""

    def __init__(self, fail: int, err: int) -> None:
        self.fail = fail
        self.err = err
        self.spawned: list[Child] = []

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> Child:
        if self.fail > 0:
            self.fail -= 1
            raise SpawnError(self.err, f"out of something ({errno.errorcode[self.err]})")
        child = Child(10_000 + len(self.spawned), None, -1, -1, time.monotonic(), time.time())
        self.spawned.append(child)
        return child

    def signal_group(self, pgid: int, sig: int) -> bool:
        return False

    def watch(self, child: Child, on_exit: ExitCallback) -> None:
        pass

    def attach(self, proc_id: str, child: Child) -> None:
        pass

    def now(self) -> float:
        return time.monotonic()


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM],
                         ids=lambda e: errno.errorcode[e])
def test_a_spawn_failing_for_want_of_resources_is_retried_never_crashed(
        err: int, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        runtime = StarvedRuntime(fail=2, err=err)
        sup = Supervisor("agent", lambda: Launch(["agent"], {}, "/"),
                         Policy(max_retries=1, backoff=0.01), runtime)
        assert sup.spawn_now() is None
        assert sup.state is S.BACKOFF and errno.errorcode[err] in (sup.last_error or "")
        await until(lambda: sup.state is S.RUNNING)
        # Not failures (maxRetries 1 would have given up), not restarts, one child.
        assert (sup.failures, sup.restart_count, sup.starved) == (0, 0, 0)
        assert len(runtime.spawned) == 1
    with caplog.at_level(logging.INFO, logger="pbhost"):
        asyncio.run(main())
    said = [r.getMessage() for r in caplog.records if "cannot start" in r.getMessage()]
    assert len(said) == 2 and "cannot start now" in said[0] and "(attempt 2)" in said[1]


def test_a_spawn_that_cannot_succeed_is_still_crashed_at_once() -> None:
    async def main() -> None:
        sup = Supervisor("agent", lambda: Launch(["agent"], {}, "/"), Policy(),
                         StarvedRuntime(fail=1, err=errno.ENOENT))
        assert sup.spawn_now() is None and sup.state is S.CRASHED
    asyncio.run(main())


STARVED_SPAWN = """
import fcntl, json, os, resource, sys
from pbhost.process.spawn import SpawnError, spawn

def open_fds():  # without opening one (listing /proc/self/fd would)
    found = set()
    for fd in range(1024):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            continue
        found.add(fd)
    return found

room = int(sys.argv[1])
before = open_fds()
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
# RLIMIT_NOFILE bounds fd *numbers*: leave exactly `room` free numbers below the limit.
free = [n for n in range(1024) if n not in before]
resource.setrlimit(resource.RLIMIT_NOFILE, (free[room], hard))
try:
    spawn(["/bin/true"], dict(os.environ), "/")
except SpawnError as exc:
    result = {"errno": exc.errno, "transient": exc.transient, "reason": exc.strerror}
else:
    result = {"errno": None}
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
result["leaked"] = sorted(open_fds() - before)
print(json.dumps(result))
"""


# room: fds left for the spawn. 1: the first pipe fails; 3: the second; 4: Popen's /dev/null;
# 5: Popen's own error pipe.
@pytest.mark.parametrize("room", [1, 3, 4, 5])
def test_spawn_out_of_fds_is_a_transient_spawn_error_and_leaks_no_fd(room: int) -> None:
    done = subprocess.run([sys.executable, "-c", STARVED_SPAWN, str(room)], cwd=ROOT,
                          env=pbhost_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["errno"] == errno.EMFILE and result["transient"], result
    assert "too many open files (EMFILE; its limit is" in result["reason"]
    assert result["leaked"] == []


# -- files the disk refuses ----------------------------------------------------------------
def test_a_refused_write_is_said_once_leaves_no_temp_file_and_is_retried(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statedir, "RETRY_FIRST", 0.05)
    path = tmp_path / ".pbhost" / "state.json"
    (path / "in-the-way").mkdir(parents=True)  # os.replace onto a non-empty folder fails

    async def main() -> None:
        kept = statedir.KeptFile(path, "nothing much")
        assert not kept.put(b'{"n": 1}')
        assert not kept.put(b'{"n": 2}')  # the next change tries again, silently
        assert not kept.current
        assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file
        (path / "in-the-way").rmdir()
        path.rmdir()
        await until(lambda: kept.current)  # the retry timer wrote the latest data
        assert path.read_bytes() == b'{"n": 2}'
        kept.close()
    with caplog.at_level(logging.INFO, logger="pbhost"):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot write" in m for m in messages) == 1
    assert f"wrote {path} again" in messages

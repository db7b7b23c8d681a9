"""A reload's policy, in-process: what counts as a change (process/specdiff.py, pure), and the
two Supervisor moves a reload makes (halt with a new spec, retire), on the virtual-time loop.
The real processes are in test_config_reload.py; these pin the rules down one by one.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from pbhost.config.loader import ProcessSpec
from pbhost.process.specdiff import ADDED, REMOVED, RESTARTED, UNCHANGED, UPDATED, plan
from pbhost.process.state import ProcessState
from pbhost.process.supervisor import Launch, Policy, RunHooks, Supervisor
from vclock import FakeRuntime, run_virtual

S = ProcessState
ROOT = Path("/srv/app")


def spec(proc_id: str = "a", **kw: object) -> ProcessSpec:
    values: dict[str, object] = {"id": proc_id, "script": ROOT / "a.py", "command": None,
                                 "args": (), "cwd": ROOT, **kw}
    return ProcessSpec(**values)  # type: ignore[arg-type]


def launch(colour: str = "red", argv: tuple[str, ...] = ("python", "a.py")) -> Launch:
    return Launch(argv, {"COLOUR": colour}, str(ROOT))


def one(old: ProcessSpec, new: ProcessSpec, before: object | None = None,
        now: object | None = None) -> tuple[str, tuple[str, ...]]:
    launched = {old.id: before} if before is not None else {}
    change = plan({old.id: old}, [new], launched, {new.id: now or launch()}).get(new.id)
    return change.kind, change.keys


# -- specdiff: what is a change --------------------------------------------------------------
def test_the_same_spec_is_unchanged() -> None:
    assert one(spec(), spec(), launch(), launch()) == (UNCHANGED, ())


def test_env_is_compared_resolved() -> None:
    """`${A}` -> `${B}` with equal values, or an envFile moved with the same contents: the
    process would get the very same environment, so it is left alone."""
    old = spec(env={"COLOUR": "${A}"}, env_files=(ROOT / ".env",))
    new = spec(env={"COLOUR": "${B}"}, env_files=(ROOT / "moved.env",))
    assert one(old, new, launch("red"), launch("red")) == (UNCHANGED, ())


def test_a_new_envfile_content_restarts() -> None:
    assert one(spec(), spec(), launch("red"), launch("blue")) == (RESTARTED, ("environment",))


def test_a_written_change_is_named_by_its_key() -> None:
    assert one(spec(), spec(args=("--port", "9")), launch(), launch(argv=("python", "a.py", "9"))
               ) == (RESTARTED, ("args",))
    assert one(spec(), spec(stop_timeout=9.0), launch(), launch()) == (RESTARTED, ("stopTimeout",))
    assert one(spec(), spec(max_memory=1 << 20), launch(), launch()) == (RESTARTED,
                                                                         ("maxMemory",))


def test_what_only_pbhost_looks_at_applies_in_place() -> None:
    new = spec(dev_mode=True, watch_ignore=("*.tmp",), pb_logs="all", autostart=False,
               depends_on={"redis": "ready"})
    kind, keys = one(spec(), new, launch(), launch())
    assert kind == UPDATED
    assert set(keys) == {"devMode", "watchIgnore", "pbLogs", "autostart", "dependsOn"}


def test_a_process_never_started_is_compared_as_written() -> None:
    """No start to compare with: the written env counts, even where a start would resolve it
    to the same values."""
    assert one(spec(env={"X": "${A}"}), spec(env={"X": "${B}"}), None) == (RESTARTED, ("env",))


def test_a_start_that_failed_differs_from_one_that_would_work() -> None:
    """The envFile was missing (the process crashed); now it is there: a change."""
    failed = "envFile /srv/app/.env: not found"
    assert one(spec(), spec(), failed, launch()) == (RESTARTED, ("environment",))


def test_the_plan_follows_the_new_file_then_lists_the_removed() -> None:
    old = {"a": spec("a"), "gone": spec("gone"), "b": spec("b")}
    draft = plan(old, [spec("new"), spec("b"), spec("a")], {}, {})
    assert [(c.proc_id, c.kind) for c in draft.changes] == [
        ("new", ADDED), ("b", UNCHANGED), ("a", UNCHANGED), ("gone", REMOVED)]
    assert draft.ids(REMOVED) == ["gone"]


# -- the supervisor's side ------------------------------------------------------------------
def supervisor(rt: FakeRuntime, label: str = "old", one_shot: bool = False) -> Supervisor:
    return Supervisor("a", lambda: Launch(("python", label), {}, "/"), Policy(one_shot=one_shot),
                      rt)


def test_halt_gives_the_new_spec_before_a_waiting_restart_runs() -> None:
    """A restart asked for while the reload halts the process runs after it, with the new
    spec: nothing squeezed in between starts the old one."""
    async def main() -> None:
        rt = FakeRuntime()
        sup = supervisor(rt)
        sup.spawn_now()
        seen: list[str] = []

        def prepare() -> Launch:
            seen.append("new")
            return Launch(("python", "new"), {}, "/")
        halting = asyncio.ensure_future(sup.halt(lambda: sup.reconfigure(prepare, sup.policy)))
        await asyncio.sleep(0)
        restarted = await sup.restart("requested")
        await halting
        assert restarted is not None and seen == ["new"]
        assert [child.pid for _, child in rt.spawned] == [1001, 1002]
        assert sup.state is S.RUNNING and not sup.held
    run_virtual(main)


def test_halt_leaves_a_completed_job_not_completed() -> None:
    async def main() -> None:
        rt = FakeRuntime()
        sup = supervisor(rt, one_shot=True)
        sup.spawn_now()
        rt.exit(rt.last.pid, 0)
        assert sup.completed and sup.state is S.STOPPED
        await sup.halt()
        assert not sup.completed and sup.state is S.STOPPED  # its dependents wait again
    run_virtual(main)


def test_a_retired_process_never_starts_again() -> None:
    async def main() -> None:
        rt = FakeRuntime()
        sup = supervisor(rt)
        sup.spawn_now()
        retiring = asyncio.ensure_future(sup.retire())
        await asyncio.sleep(0)
        assert await sup.start() is None  # asked for while it was being removed
        await retiring
        assert sup.restart_count == 0 and await sup.restart() is None
        assert len(rt.spawned) == 1 and sup.state is S.STOPPED and sup.child is None
    run_virtual(main)


def test_reconfigure_refuses_new_run_hooks_during_a_run() -> None:
    """A live run's hooks must see it end; its prepare step and policy may change any time."""
    async def main() -> None:
        rt = FakeRuntime()
        sup = supervisor(rt)
        sup.spawn_now()
        prepare = lambda: Launch(("python", "new"), {}, "/")  # noqa: E731
        sup.reconfigure(prepare, replace(sup.policy, one_shot=True))
        assert sup.policy.one_shot
        with pytest.raises(RuntimeError, match="new run hooks during a run"):
            sup.reconfigure(prepare, sup.policy, RunHooks())
    run_virtual(main)

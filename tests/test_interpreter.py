"""interpreter.py: which program runs a sidecar, and the environment it gets.

Real folders with real virtualenvs (`venv.create`, no pip: milliseconds) and real PATH
folders; the last tests run the planned argv as real processes and read what the child saw.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path
from typing import Any

import pytest

from pbhost.config.loader import ProcessSpec
from pbhost.pocketbase.binary import PocketBaseInfo
from pbhost.process.launch import (
    DIRECT,
    LaunchPlan,
    find_venv,
    plan_launch,
    prepare_launch,
    sidecar_env,
)


def PB(url: str = "http://127.0.0.1:8090", port: int = 8090,
       data_dir: Path = Path("/srv/app/pb_data")) -> PocketBaseInfo:
    """The PocketBase these tests' sidecars run next to, unless a test says otherwise."""
    return PocketBaseInfo(url, "127.0.0.1", port, data_dir, Path("/srv/app/pb_hooks"))


def make_venv(folder: Path) -> Path:
    venv.create(folder, with_pip=False, symlinks=True)
    return folder


def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def fake_path(tmp_path: Path) -> str:
    """A PATH folder with python3, node and sh, so that lookups do not depend on the machine."""
    bin_dir = tmp_path / "fakebin"
    for name in ("python3", "node", "sh"):
        executable(bin_dir / name)
    return str(bin_dir)


def spec(cwd: Path, script: str | None = None, *, command: str | None = None,
         args: tuple[str, ...] = (), **kw: Any) -> ProcessSpec:
    return ProcessSpec(id="ai-agent", script=cwd / script if script else None, command=command,
                       args=args, cwd=cwd, **kw)


# ---------------------------------------------------------------------------------------------
# Choosing the program


def test_python_prefers_dot_venv_then_venv_then_python3(tmp_path: Path, fake_path: str) -> None:
    s = spec(tmp_path, "main.py", args=("--port", "1"))
    assert plan_launch(s, fake_path) == LaunchPlan(
        (f"{fake_path}/python3", str(tmp_path / "main.py"), "--port", "1"),
        f"{fake_path}/python3", True, None)

    make_venv(tmp_path / "venv")
    plan = plan_launch(s, fake_path)
    assert plan.argv[0] == str(tmp_path / "venv" / "bin" / "python")
    assert plan.venv == tmp_path / "venv" and plan.interpreter == plan.argv[0]

    make_venv(tmp_path / ".venv")
    plan = plan_launch(s, fake_path)
    assert plan.argv[0] == str(tmp_path / ".venv" / "bin" / "python")
    assert (plan.venv, plan.is_python) == (tmp_path / ".venv", True)


def test_venv_is_looked_for_in_cwd_not_next_to_the_script(tmp_path: Path, fake_path: str) -> None:
    make_venv(tmp_path / "agent" / ".venv")
    (tmp_path / "agent" / "main.py").write_text("")
    s = spec(tmp_path, "agent/main.py")                  # cwd: the project root, no venv there
    assert plan_launch(s, fake_path).argv[0] == f"{fake_path}/python3"
    s = spec(tmp_path / "agent", "main.py")
    assert plan_launch(s, fake_path).argv[0] == str(tmp_path / "agent" / ".venv/bin/python")


def test_broken_venv_is_skipped(tmp_path: Path, fake_path: str) -> None:
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to("/nonexistent/python3")  # copied venv
    assert find_venv(tmp_path) is None
    assert plan_launch(spec(tmp_path, "main.py"), fake_path).argv[0] == f"{fake_path}/python3"


def test_python3_missing_keeps_the_plain_name(tmp_path: Path) -> None:
    plan = plan_launch(spec(tmp_path, "main.py"), str(tmp_path / "empty"))
    assert plan.argv[0] == "python3" and plan.is_python   # spawn fails with ENOENT: reported


@pytest.mark.parametrize("name, program", [
    ("server.js", "node"), ("server.mjs", "node"), ("server.cjs", "node"), ("run.sh", "sh"),
])
def test_by_suffix(tmp_path: Path, fake_path: str, name: str, program: str) -> None:
    make_venv(tmp_path / ".venv")                        # irrelevant for non-Python scripts
    plan = plan_launch(spec(tmp_path, name, args=("a",)), fake_path)
    assert plan == LaunchPlan((f"{fake_path}/{program}", str(tmp_path / name), "a"),
                              f"{fake_path}/{program}", False, None)


def test_other_files_run_directly(tmp_path: Path, fake_path: str) -> None:
    executable(tmp_path / "server", "#!/bin/sh\n")
    executable(tmp_path / "tool", "#!/usr/bin/env python3\nprint(1)\n")
    assert plan_launch(spec(tmp_path, "server", args=("x",)), fake_path) == LaunchPlan(
        (str(tmp_path / "server"), "x"), DIRECT, False, None)
    assert plan_launch(spec(tmp_path, "tool"), fake_path).is_python  # its #! runs python


def test_explicit_interpreter_wins(tmp_path: Path, fake_path: str) -> None:
    make_venv(tmp_path / ".venv")
    executable(Path(fake_path) / "python3.12")
    plan = plan_launch(spec(tmp_path, "main.py", interpreter="python3.12"), fake_path)
    assert plan.argv == (f"{fake_path}/python3.12", str(tmp_path / "main.py"))
    assert (plan.is_python, plan.venv) == (True, None)
    plan = plan_launch(spec(tmp_path, "main.js", interpreter="bun"), fake_path)
    assert plan.argv[0] == "bun" and not plan.is_python  # not on PATH: ENOENT at spawn


def test_explicit_interpreter_path_is_relative_to_cwd(tmp_path: Path, fake_path: str) -> None:
    make_venv(tmp_path / "envs" / "py")
    plan = plan_launch(spec(tmp_path, "main.py", interpreter="./envs/py/bin/python"), fake_path)
    assert plan.argv[0] == str(tmp_path / "envs" / "py" / "bin" / "python")
    assert plan.venv == tmp_path / "envs" / "py"         # an explicit venv python is activated too


def test_command_runs_as_written_with_the_cwd_venv_active(tmp_path: Path, fake_path: str) -> None:
    assert plan_launch(spec(tmp_path, command="node", args=("srv.js",)), fake_path) == LaunchPlan(
        (f"{fake_path}/node", "srv.js"), DIRECT, False, None)
    assert plan_launch(spec(tmp_path, command="npm"), fake_path).argv == ("npm",)
    make_venv(tmp_path / ".venv")
    executable(tmp_path / ".venv" / "bin" / "uvicorn", "#!/x/.venv/bin/python\nimport uvicorn\n")
    plan = plan_launch(spec(tmp_path, command="python", args=("-m", "app")), fake_path)
    assert plan.argv == (str(tmp_path / ".venv/bin/python"), "-m", "app")
    assert (plan.is_python, plan.venv) == (True, tmp_path / ".venv")
    plan = plan_launch(spec(tmp_path, command="uvicorn", args=("app:app",)), fake_path)
    assert plan.argv == (str(tmp_path / ".venv/bin/uvicorn"), "app:app") and plan.is_python


def test_path_from_the_process_env_is_searched(tmp_path: Path, fake_path: str) -> None:
    other = executable(tmp_path / "other" / "node").parent
    s = spec(tmp_path, "a.js", env={"PATH": str(other)})
    plan, env, _ = prepare_launch(s, {"PATH": fake_path}, PB())
    assert plan.argv[0] == str(other / "node") and env["PATH"] == str(other)


# ---------------------------------------------------------------------------------------------
# The environment


def test_injected_environment(tmp_path: Path, fake_path: str) -> None:
    s = spec(tmp_path, "main.py", env={"PORT": "8001"})
    env = sidecar_env(s, {"HOME": "/home/u", "PATH": "/usr/bin"}, PB(), plan_launch(s, fake_path))
    assert env == {
        "HOME": "/home/u", "PATH": "/usr/bin", "PORT": "8001",
        "PB_URL": "http://127.0.0.1:8090", "PB_PORT": "8090", "PB_DATA_DIR": "/srv/app/pb_data",
        "DB_DSN": "sqlite:////srv/app/pb_data/data.db", "PBHOST_PROCESS_ID": "ai-agent",
        "PYTHONUNBUFFERED": "1",
    }


def test_non_python_gets_no_pythonunbuffered(tmp_path: Path, fake_path: str) -> None:
    s = spec(tmp_path, "srv.js")
    env = sidecar_env(s, {}, PB(), plan_launch(s, fake_path))
    assert "PYTHONUNBUFFERED" not in env and env["PB_PORT"] == "8090"


def test_user_keys_win_and_base_is_overridden(tmp_path: Path, fake_path: str) -> None:
    s = spec(tmp_path, "main.py", env={"PB_URL": "http://pb.internal:80", "PYTHONUNBUFFERED": "0"})
    base = {"PB_URL": "stale", "PBHOST_PROCESS_ID": "stale", "DB_DSN": "stale"}
    env = sidecar_env(s, base, PB(), plan_launch(s, fake_path))
    assert env["PB_URL"] == "http://pb.internal:80" and env["PYTHONUNBUFFERED"] == "0"
    assert env["PBHOST_PROCESS_ID"] == "ai-agent" and env["DB_DSN"].startswith("sqlite:////")


def test_venv_is_activated(tmp_path: Path, fake_path: str) -> None:
    make_venv(tmp_path / ".venv")
    s = spec(tmp_path, "main.py")
    env = sidecar_env(s, {"PATH": "/usr/bin:/bin", "PYTHONHOME": "/opt/py"}, PB(),
                      plan_launch(s, fake_path))
    assert env["VIRTUAL_ENV"] == str(tmp_path / ".venv")
    assert env["PATH"] == f"{tmp_path}/.venv/bin:/usr/bin:/bin" and "PYTHONHOME" not in env


# ---------------------------------------------------------------------------------------------
# Real processes: the planned argv runs, and the child sees what the plan promised

REPORT_PY = """\
import json, os, shutil, sys
print(json.dumps({"executable": sys.executable, "prefix": sys.prefix, "cwd": os.getcwd(),
                  "argv": sys.argv[1:], "tool": shutil.which("mytool"),
                  "env": {k: os.environ.get(k) for k in (
                      "PB_URL", "PB_PORT", "PB_DATA_DIR", "DB_DSN", "PBHOST_PROCESS_ID",
                      "PYTHONUNBUFFERED", "VIRTUAL_ENV", "PORT")}}))
"""


def run_plan(s: ProcessSpec, pb: PocketBaseInfo) -> dict[str, Any]:
    base = dict(os.environ)
    base.pop("VIRTUAL_ENV", None)  # the test runner's own venv must not leak into the check
    plan = plan_launch(s, base.get("PATH"))
    out = subprocess.run(plan.argv, cwd=s.cwd, env=sidecar_env(s, base, pb, plan),
                         capture_output=True, text=True, timeout=30, check=True)
    seen: dict[str, Any] = json.loads(out.stdout)
    return seen


def test_real_run_in_the_venv(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    make_venv(agent / ".venv")
    executable(agent / ".venv" / "bin" / "mytool")       # a console script pip would install
    (agent / "main.py").write_text(REPORT_PY)
    pb = PB(url="http://127.0.0.1:8123", port=8123, data_dir=tmp_path / "pb_data")
    seen = run_plan(spec(agent, "main.py", args=("--x",), env={"PORT": "8001"}), pb)
    assert seen["executable"] == str(agent / ".venv" / "bin" / "python")
    assert seen["prefix"] == str(agent / ".venv")        # really running inside that venv
    assert seen["cwd"] == str(agent) and seen["argv"] == ["--x"]
    assert seen["tool"] == str(agent / ".venv" / "bin" / "mytool")
    assert seen["env"] == {
        "PB_URL": "http://127.0.0.1:8123", "PB_PORT": "8123",
        "PB_DATA_DIR": str(tmp_path / "pb_data"),
        "DB_DSN": f"sqlite:///{tmp_path}/pb_data/data.db", "PBHOST_PROCESS_ID": "ai-agent",
        "PYTHONUNBUFFERED": "1", "VIRTUAL_ENV": str(agent / ".venv"), "PORT": "8001"}


def test_real_run_without_a_venv_uses_python3(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(REPORT_PY)
    seen = run_plan(spec(tmp_path, "main.py"), PB())
    assert seen["env"]["VIRTUAL_ENV"] is None and seen["env"]["PYTHONUNBUFFERED"] == "1"
    assert os.path.basename(str(seen["executable"])).startswith("python3")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_real_run_node_and_sh(tmp_path: Path) -> None:
    (tmp_path / "a.js").write_text(
        "console.log(JSON.stringify({url: process.env.PB_URL, id: process.env.PBHOST_PROCESS_ID,"
        " unbuffered: process.env.PYTHONUNBUFFERED || null}))\n")
    (tmp_path / "a.sh").write_text('echo "{\\"url\\": \\"$PB_URL\\", \\"arg\\": \\"$1\\"}"\n')
    for name, expected in (("a.js", {"url": PB().url, "id": "ai-agent", "unbuffered": None}),
                           ("a.sh", {"url": PB().url, "arg": "x"})):
        s = spec(tmp_path, name, args=("x",))
        plan = plan_launch(s, os.environ.get("PATH"))
        out = subprocess.run(plan.argv, cwd=tmp_path, env=sidecar_env(s, {}, PB(), plan),
                             capture_output=True, text=True, timeout=30, check=True)
        assert json.loads(out.stdout) == expected, name

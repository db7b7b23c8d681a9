"""How to run a sidecar (venv python, node, sh, or the program itself) and the environment it gets.

Nothing here starts a process: a program that cannot be found keeps its plain name in argv, so
the spawn fails with ENOENT and the supervisor reports that reason in `lastError`. The
environment is built at every start from the spec and the envFiles as they are then, so an
edited `.env` reaches the next start; nothing here logs or shows a value.
"""

from __future__ import annotations

import os
import shutil
from collections import ChainMap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from pbhost.config import template
from pbhost.process.spawn import RESOURCE_ERRNOS

if TYPE_CHECKING:  # value objects only; this module must not import the supervision core
    from pbhost.config.loader import ProcessSpec
    from pbhost.pocketbase.binary import PocketBaseInfo

VENV_DIRS = (".venv", "venv")  # searched in this order in the process's cwd
_BY_SUFFIX = {".js": "node", ".mjs": "node", ".cjs": "node", ".sh": "sh"}
DIRECT = "direct"  # LaunchPlan.interpreter when the program runs without an interpreter


@dataclass(frozen=True)
class LaunchPlan:
    argv: tuple[str, ...]
    interpreter: str               # shown: "/abs/.venv/bin/python", "/usr/bin/node", "direct"
    is_python: bool                # gets PYTHONUNBUFFERED=1
    venv: Path | None = None       # a virtualenv to activate (VIRTUAL_ENV, PATH) in its env


@dataclass(frozen=True)
class OwnEnv:
    """What a process's own config adds to the environment it inherits: its envFile values
    and its `env`, expanded. A value of the spec and the files' contents: two starts with the
    same files give equal ones. Never in a repr: it holds secrets."""

    files: Mapping[str, str] = field(default_factory=dict, repr=False)  # later file wins
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    unset: tuple[tuple[str, str], ...] = ()  # (env key, the unset ${VAR} it refers to)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.env.get(name, self.files.get(name, default))


def resolve_env(spec: ProcessSpec, environ: Mapping[str, str]) -> OwnEnv:
    """Read `spec`'s envFiles (raises EnvFileError) and expand its `env` against `environ`
    (pbhost's environment) and those files' values."""
    files: dict[str, str] = {}
    if spec.env_files:
        from pbhost.config.envfile import read_env_files  # python-dotenv: only when used
        files = read_env_files(spec.env_files, environ)
    lookup = ChainMap(files, dict(environ))
    env: dict[str, str] = {}
    unset: list[tuple[str, str]] = []
    for name, text in spec.env.items():
        env[name], missing = template.expand(text, lookup)
        unset.extend((name, var) for var in missing)
    return OwnEnv(files, env, tuple(unset))


def check_env_files(specs: Sequence[ProcessSpec], environ: Mapping[str, str]
                    ) -> tuple[list[str], list[str]]:
    """Read every envFile as a start would, for `pbhost check` and a reload: (problems, as
    `process "x": "envFile" <file>:<line>: <reason>`; warnings for the `${VAR}` they leave
    unset). Names only, never a value."""
    from pbhost.config.envfile import EnvFileError  # python-dotenv: only when used

    problems: list[str] = []
    warnings: list[str] = []
    for spec in specs:
        if not spec.env_files:
            continue  # load_config checked its ${VAR}s already
        label = f'process "{spec.id}"'
        try:
            own = resolve_env(spec, environ)
        except EnvFileError as exc:
            problems += [f'{label}: "envFile" {problem}' for problem in exc.problems]
            continue
        warnings += [template.unset_warning(label, name, var,
                                            " in this environment or its envFile")
                     for name, var in own.unset]
    return problems, warnings


def prepare_launch(spec: ProcessSpec, environ: Mapping[str, str], pb: PocketBaseInfo
                   ) -> tuple[LaunchPlan, dict[str, str], OwnEnv]:
    """What one start needs, from the spec and the envFiles as they are now: the plan, the
    child's whole environment, and the config's part of it (for its warnings)."""
    own = resolve_env(spec, environ)
    # The PATH the child will run with is the one its program is looked up on.
    plan = plan_launch(spec, own.get("PATH", environ.get("PATH")))
    return plan, sidecar_env(spec, environ, pb, plan, own), own


def plan_launch(spec: ProcessSpec, path: str | None) -> LaunchPlan:
    """The argv for `spec`. `path` is the PATH to search, the one the child will run with
    (None: pbhost's own)."""
    search = path if path is not None else os.environ.get("PATH", os.defpath)
    if spec.script is None:
        assert spec.command is not None  # config guarantees exactly one of the two
        return _plan_command(spec, spec.command, search)
    if spec.interpreter != "auto":
        return _plan_explicit(spec, spec.script, search)
    return _plan_auto(spec, spec.script, search)


def _plan_auto(spec: ProcessSpec, script: Path, search: str) -> LaunchPlan:
    suffix = script.suffix.lower()
    if suffix == ".py":
        venv = find_venv(spec.cwd)
        python = str(venv / "bin" / "python") if venv else _which("python3", search)
        return LaunchPlan((python, str(script), *spec.args), python, True, venv)
    if suffix in _BY_SUFFIX:
        program = _which(_BY_SUFFIX[suffix], search)
        return LaunchPlan((program, str(script), *spec.args), program, False)
    return LaunchPlan((str(script), *spec.args), DIRECT, _is_python_program(str(script)))


def _plan_explicit(spec: ProcessSpec, script: Path, search: str) -> LaunchPlan:
    # A name is looked up on PATH; a path is relative to the process's cwd, like a shell in cwd.
    if "/" in spec.interpreter:
        program = os.path.normpath(spec.cwd / spec.interpreter)
    else:
        program = _which(spec.interpreter, search)
    return LaunchPlan((program, str(script), *spec.args), program,
                      _is_python_program(program), _venv_of(program))


def _plan_command(spec: ProcessSpec, command: str, search: str) -> LaunchPlan:
    # The cwd's venv is active for commands too, as after `source .venv/bin/activate`: so
    # "python", "uvicorn" or "celery" resolve to the project's own copies when it has a venv.
    venv = find_venv(spec.cwd)
    if "/" not in command:
        if venv is not None:
            search = str(venv / "bin") + os.pathsep + search
        command = _which(command, search)
    return LaunchPlan((command, *spec.args), DIRECT, _is_python_program(command), venv)


def find_venv(cwd: Path) -> Path | None:
    """`<cwd>/.venv`, then `<cwd>/venv`, whichever has an executable bin/python."""
    for name in VENV_DIRS:
        python = cwd / name / "bin" / "python"
        if python.is_file() and os.access(python, os.X_OK):
            return cwd / name
    return None


def _venv_of(program: str) -> Path | None:
    """The virtualenv an explicit interpreter lives in (its bin's parent has pyvenv.cfg)."""
    bin_dir = Path(program).parent
    if bin_dir.name == "bin" and (bin_dir.parent / "pyvenv.cfg").is_file():
        return bin_dir.parent
    return None


def _which(name: str, search: str) -> str:
    return shutil.which(name, path=search) or name


def _is_python_program(program: str) -> bool:
    """A python interpreter, or a script whose #! line runs one (uvicorn, celery, ...)."""
    if os.path.basename(program).startswith("python"):
        return True
    if "/" not in program:
        return False
    try:
        with open(program, "rb") as f:
            first = f.readline(256)
    except OSError as exc:
        if exc.errno in RESOURCE_ERRNOS:
            raise  # out of fds: the start is retried, not made without PYTHONUNBUFFERED
        return False
    return first.startswith(b"#!") and b"python" in first


def sidecar_env(spec: ProcessSpec, base: Mapping[str, str], pb: PocketBaseInfo,
                plan: LaunchPlan, own: OwnEnv | None = None) -> dict[str, str]:
    """pbhost's environment, then the envFile values, then what pbhost injects, then the
    process's own `env` (it wins). `own`: resolve_env(spec, base), read here if not given."""
    own = own if own is not None else resolve_env(spec, base)
    inherited = {**base, **own.files}
    env = dict(inherited)
    if plan.venv is not None:
        # What `source <venv>/bin/activate` does: console scripts installed by pip resolve.
        env["VIRTUAL_ENV"] = str(plan.venv)
        env["PATH"] = str(plan.venv / "bin") + os.pathsep + inherited.get("PATH", os.defpath)
        env.pop("PYTHONHOME", None)
    env.update(
        PB_URL=pb.url,
        PB_PORT=str(pb.port),
        PB_DATA_DIR=str(pb.data_dir),
        DB_DSN="sqlite:///" + str(Path(pb.data_dir) / "data.db"),
        PBHOST_PROCESS_ID=spec.id,
    )
    if plan.is_python:
        env["PYTHONUNBUFFERED"] = "1"
    env.update(own.env)
    return env

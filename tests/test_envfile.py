"""envFile: the .env format (python-dotenv's), its problems as file:line: reason, the key in
pb_processes.json, the precedence of the layers, and `pbhost check`. Real files throughout;
what a running pbhost does with them is in test_envfile_e2e.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pbhost.config.envfile import EnvFileError, read_env_files
from pbhost.config.loader import ProcessSpec, load_config
from pbhost.errors import ConfigError
from pbhost.pocketbase.binary import PocketBaseInfo
from pbhost.process.launch import prepare_launch, resolve_env
from support import pbhost_env

SECRET = "sk-live-7f3a9c1e5b"


PB = PocketBaseInfo("http://127.0.0.1:8090", "127.0.0.1", 8090, Path("/srv/app/pb_data"),
                    Path("/srv/app/pb_hooks"))


def env_file(tmp_path: Path, text: str, name: str = ".env") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(paths: list[Path]) -> list[str]:
    with pytest.raises(EnvFileError) as info:
        read_env_files(paths, {})
    return [str(p) for p in info.value.problems]


# ---------------------------------------------------------------------------------------------
# The format


def test_the_usual_dotenv_forms(tmp_path: Path) -> None:
    path = env_file(tmp_path, (
        "# a comment\n"
        "export EXPORTED=yes\n"
        "PLAIN=value # trailing comment\n"
        "DOUBLE=\"two words # not a comment\"\n"
        "SINGLE='kept as ${IS} $x'\n"
        "\n"
        "EMPTY=\n"
        "EMPTY_QUOTED=\"\"\n"
        "HASH=abc#def\n"
        "ESCAPED=\"line1\\nline2\"\n"
        "MULTI=\"first\nsecond\"\n"
        "  INDENTED = spaced  \n"
        "REF=${PLAIN}-${UNSET:-dflt}-${FROM_HOST}\n"))
    assert read_env_files([path], {"FROM_HOST": "h"}) == {
        "EXPORTED": "yes", "PLAIN": "value", "DOUBLE": "two words # not a comment",
        # python-dotenv expands ${VAR} in every value, single-quoted ones included.
        "SINGLE": "kept as  $x", "EMPTY": "", "EMPTY_QUOTED": "", "HASH": "abc#def",
        "ESCAPED": "line1\nline2", "MULTI": "first\nsecond", "INDENTED": "spaced",
        "REF": "value-dflt-h"}


def test_a_later_file_wins_and_may_refer_to_an_earlier_one(tmp_path: Path) -> None:
    base = env_file(tmp_path, "A=1\nB=base\n", ".env")
    local = env_file(tmp_path, "B=local\nC=${A}${B}\n", ".env.local")
    assert read_env_files([base, local], {}) == {"A": "1", "B": "local", "C": "1local"}


def test_a_file_value_wins_over_pbhost_environment_in_references(tmp_path: Path) -> None:
    path = env_file(tmp_path, "HOST=from-file\nURL=http://${HOST}\n")
    assert read_env_files([path], {"HOST": "from-env"})["URL"] == "http://from-file"


def test_a_bom_and_crlf_line_ends_are_read(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes("\ufeffA=1\r\nB=2\r\n".encode())
    assert read_env_files([path], {}) == {"A": "1", "B": "2"}


# ---------------------------------------------------------------------------------------------
# Problems: file, line and reason, never the line's text


@pytest.mark.parametrize("text,line,reason", [
    ("A=1\n\n\nBROKEN LINE " + SECRET + "\n", 4, "not NAME=VALUE (no '=' after the name)"),
    ("A=1\nKEY=\"" + SECRET + "\n", 2, "the value's opening quote (\") is never closed"),
    ("KEY='" + SECRET + "\n", 1, "the value's opening quote (') is never closed"),
    ("KEY=\"" + SECRET + "\nB=2\nC=\"x\"y\n", 1,
     "the quoted value opened here closes 2 lines below, with text after it "
     "(a closing \" missing here?)"),
    ("KEY=\"" + SECRET + "\"junk\n", 1, "text after the closing quote"),
    ("=" + SECRET + "\n", 1, "no name before '='"),
    ("MY KEY=" + SECRET + "\n", 1, "a space in the name (write NAME=VALUE)"),
    ("'KEY=" + SECRET + "\n", 1, "a quoted name without its closing quote"),
    (SECRET + "\n", 1, "a name without '=' (write NAME=VALUE, or NAME= for an empty value)"),
    ("A=1\r\n\r\nBAD " + SECRET + "\r\n", 3, "not NAME=VALUE (no '=' after the name)"),
])
def test_a_malformed_line_is_named_by_file_and_line_without_its_text(
        tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = env_file(tmp_path, text)
    with pytest.raises(EnvFileError) as info:
        read_env_files([path], {})
    assert [str(p) for p in info.value.problems] == [f"{path}:{line}: {reason}"]
    assert str(info.value) == f"envFile {path}:{line}: {reason}"
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_every_problem_of_every_file_is_listed(tmp_path: Path) -> None:
    bad = env_file(tmp_path, "A=1\nNO EQUALS\nB=2\n=x\n")
    missing = tmp_path / "nope.env"
    with pytest.raises(EnvFileError) as info:
        read_env_files([bad, missing], {})
    assert str(info.value) == (f"envFile {bad}:2: not NAME=VALUE (no '=' after the name) "
                               "(and 2 more problems)")
    assert [str(p) for p in info.value.problems] == [
        f"{bad}:2: not NAME=VALUE (no '=' after the name)", f"{bad}:4: no name before '='",
        f"{missing}: not found"]


def test_files_that_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    binary = tmp_path / "binary"
    binary.write_bytes(b"A=1\nB=\xff\xfe\n")
    assert problems_of([tmp_path / "folder", tmp_path / "file" / "x", binary]) == [
        f"{tmp_path / 'folder'}: is a folder, not a file",
        f"{tmp_path / 'file' / 'x'}: cannot read: Not a directory",
        f"{binary}:2: not UTF-8 text"]


# ---------------------------------------------------------------------------------------------
# The key, and the layers of the environment


def load(tmp_path: Path, **keys: Any) -> ProcessSpec:
    (tmp_path / "a.py").write_text("")
    path = tmp_path / "pb_processes.json"
    path.write_text(json.dumps([{"id": "ai-agent", "script": "a.py", **keys}]))
    return load_config(path, {}).processes[0]


def test_env_file_is_a_path_or_a_list_relative_to_the_config_folder(tmp_path: Path) -> None:
    assert load(tmp_path, envFile=".env").env_files == (tmp_path / ".env",)
    assert load(tmp_path, envFile=["a/.env", "/etc/app.env"]).env_files == (
        tmp_path / "a" / ".env", Path("/etc/app.env"))
    assert load(tmp_path).env_files == ()


@pytest.mark.parametrize("value,message", [
    (3, "must be a path or a non-empty array of paths, got number 3"),
    ([], "must be a path or a non-empty array of paths, got an array"),
    ([".env", 1], "must be a path or a non-empty array of paths, but item 1 is number 1"),
    ("  ", "must be a path or a non-empty array of paths, got string \"  \""),
])
def test_env_file_errors(tmp_path: Path, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, envFile=value)
    assert info.value.problems == [f'process "ai-agent": "envFile" {message}']


def test_a_missing_env_file_is_no_config_error(tmp_path: Path) -> None:
    # It is read at every start: that start fails, and `pbhost check` reports it.
    assert load(tmp_path, envFile="later.env").env_files == (tmp_path / "later.env",)


def test_precedence_pbhost_env_then_files_then_injected_then_env(tmp_path: Path) -> None:
    env_file(tmp_path, "LAYER=file\nFILE_ONLY=f\nPB_URL=http://from-file\nHOME=/file\n"
                       "KEY=from-file\n", ".env")
    env_file(tmp_path, "LAYER=second-file\n", ".env.local")
    spec = load(tmp_path, envFile=[".env", ".env.local"],
                env={"KEY": "env:${KEY}", "DSN": "${FILE_ONLY}:${HOME}", "PB_PORT": "1"})
    base = {"HOME": "/home/u", "LAYER": "pbhost", "PATH": "/usr/bin"}
    _, env, _ = prepare_launch(spec, base, PB)
    assert env["LAYER"] == "second-file"           # a file over pbhost's env; the later file
    assert env["HOME"] == "/file"
    assert env["PB_URL"] == "http://127.0.0.1:8090"  # what pbhost injects over a file
    assert env["PB_PORT"] == "1"                    # the process's env over everything
    assert env["KEY"] == "env:from-file"            # ${VAR} in env sees the files
    assert env["DSN"] == "f:/file"


def test_files_are_read_again_at_each_resolve(tmp_path: Path) -> None:
    path = env_file(tmp_path, "TOKEN=one\n")
    spec = load(tmp_path, envFile=".env", env={"COPY": "${TOKEN}"})
    first = resolve_env(spec, {})
    assert resolve_env(spec, {}) == first           # a value: same files, equal result
    path.write_text("TOKEN=two\n")
    second = resolve_env(spec, {})
    assert (second.files["TOKEN"], second.env["COPY"]) == ("two", "two") and second != first


def test_unset_references_are_reported_by_name(tmp_path: Path) -> None:
    env_file(tmp_path, "A=1\n")
    spec = load(tmp_path, envFile=".env", env={"X": "${A}${NOPE}"})
    own = resolve_env(spec, {})
    assert own.env["X"] == "1" and own.unset == (("X", "NOPE"),)


def test_resolved_values_never_show_in_a_repr(tmp_path: Path) -> None:
    env_file(tmp_path, f"SECRET={SECRET}\n")
    spec = load(tmp_path, envFile=".env", env={"TOKEN": SECRET})
    own = resolve_env(spec, {})
    assert own.files["SECRET"] == SECRET
    assert SECRET not in repr(own) and SECRET not in repr(spec)


# ---------------------------------------------------------------------------------------------
# pbhost check


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pbhost", "check"], cwd=root, env=pbhost_env(),
                          capture_output=True, text=True, timeout=30)


def test_check_reports_env_file_problems_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("")
    env_file(tmp_path, f"OK=1\nAPI_KEY=\"{SECRET}\n")
    (tmp_path / "pb_processes.json").write_text(json.dumps([
        {"id": "agent", "script": "a.py", "envFile": ".env"},
        {"id": "other", "script": "a.py", "envFile": ["gone.env"]},
        {"id": "fine", "script": "a.py"}]))
    out = check(tmp_path)
    assert out.returncode == 2, out
    config = tmp_path / "pb_processes.json"
    assert out.stderr.splitlines() == [
        f'pbhost: error: {config}: process "agent": "envFile" {tmp_path / ".env"}:2: '
        "the value's opening quote (\") is never closed",
        f'pbhost: error: {config}: process "other": "envFile" {tmp_path / "gone.env"}: '
        "not found"]
    assert SECRET not in out.stdout + out.stderr


def test_check_warns_of_references_neither_environment_nor_file_sets(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("")
    env_file(tmp_path, f"KEY={SECRET}\n")
    (tmp_path / "pb_processes.json").write_text(json.dumps([
        {"id": "agent", "script": "a.py", "envFile": ".env",
         "env": {"A": "${KEY}", "B": "${NOT_ANYWHERE}"}}]))
    out = check(tmp_path)
    assert out.returncode == 0, out
    assert out.stderr.splitlines() == [
        'warning: process "agent": env B refers to ${NOT_ANYWHERE}, which is not set in this '
        "environment or its envFile (using an empty string)"]
    assert "1 process(es) OK: agent" in out.stdout and SECRET not in out.stdout + out.stderr

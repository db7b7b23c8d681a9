"""`pbhost pocketbase ARGS...`: the binary `serve` would run, ARGS passed through, serve's data
dir unless ARGS name one, PocketBase's exit code."""

from __future__ import annotations

import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

from pbhost.pocketbase.banner import superuser_command
from pbhost.pocketbase.binary import describe
from support import Project, login, pbhost_env

PY = sys.executable
FAKE = "#!/bin/sh\necho \"$0 $*\"\nexit 7\n"  # says how it was called, exits 7


def pbhost(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "pbhost", *args], cwd=cwd, env=pbhost_env(**env),
                          capture_output=True, text=True, timeout=60)


def fake(path: Path) -> Path:
    path.write_text(FAKE)
    path.chmod(0o755)
    return path


def test_superuser_upsert_lands_in_serves_data_dir(tmp_path: Path) -> None:
    done = pbhost(tmp_path, "pocketbase", "superuser", "upsert", "root@example.com",
                  "password123")
    assert done.returncode == 0, done.stderr
    assert 'Successfully saved superuser "root@example.com"' in done.stdout
    db = tmp_path / "pb_data" / "data.db"  # ./pb_data of the current folder, as for serve
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        emails = [row[0] for row in conn.execute("SELECT email FROM _superusers")]
    assert emails == ["root@example.com"]


def test_pocketbase_exit_code_and_message_pass_through(tmp_path: Path) -> None:
    done = pbhost(tmp_path, "pocketbase", "superuser", "upsert", "not-an-email", "password123")
    assert done.returncode == 1
    assert "missing or invalid email address" in done.stderr
    assert "Traceback" not in done.stderr
    # --help is PocketBase's, not pbhost's.
    done = pbhost(tmp_path, "pocketbase", "--help")
    assert done.returncode == 0 and "pocketbase [command]" in done.stdout


def test_the_binary_is_found_as_serve_finds_it(tmp_path: Path) -> None:
    here = fake(tmp_path / "pocketbase")  # ./pocketbase comes before PATH
    done = pbhost(tmp_path, "pocketbase", "migrate", "up")
    assert done.returncode == 7
    assert done.stdout.split() == [str(here), f"--dir={tmp_path / 'pb_data'}", "migrate", "up"]
    other = fake(tmp_path / "other-pb")
    done = pbhost(tmp_path, "pocketbase", "serve", PBHOST_POCKETBASE=str(other))
    assert done.stdout.split()[0] == str(other)
    done = pbhost(tmp_path, "--pocketbase", "./other-pb", "pocketbase", "--dir", "x", "serve")
    assert done.returncode == 7
    assert done.stdout.split() == [str(other), "--dir", "x", "serve"]  # its own --dir wins
    done = pbhost(tmp_path, "--pocketbase", "./missing", "pocketbase", "serve")
    assert done.returncode == 127
    assert "--pocketbase names './missing', which is not an executable file" in done.stderr


def test_serve_answers_pocketbase_s_first_run_banner_with_the_command_that_works(
        project: Project) -> None:
    project.config([])
    # BROWSER: PocketBase hands its installer URL to xdg-open; nothing is to be opened here.
    run = project.serve("--dir", "data", env={"BROWSER": "true"})
    hint = run.wait_line("PocketBase has no superuser yet", timeout=20)
    lines = run.lines()
    banner = max(i for i, ln in enumerate(lines) if "create your first superuser" in ln
                 and ln.startswith("[pocketbase]"))
    assert lines.index(hint) > banner  # after PocketBase's own words, not in the middle
    match = re.search(r"`([^`]+)`", hint)
    assert match is not None, hint
    assert match.group(1) == "pbhost pocketbase superuser upsert EMAIL PASS --dir=data", hint
    # Follow it as a user would, from the same folder: the superuser can sign in to the
    # PocketBase that is running (same binary, same data dir).
    words = shlex.split(match.group(1))
    words[words.index("EMAIL")] = "first@example.com"
    words[words.index("PASS")] = "a-long-password"
    done = pbhost(project.root, *words[1:])
    assert done.returncode == 0, done.stderr
    assert login(run, identity="first@example.com", password="a-long-password")
    assert hint.count("no superuser yet") == 1 and run.output().count("no superuser yet") == 1

    run.stop()
    again = project.serve("--dir", "data", env={"BROWSER": "true"})
    again.wait_line("PocketBase hook answers", timeout=20)
    assert "create your first superuser" not in again.output()
    assert "no superuser yet" not in again.output()


def test_the_command_names_serve_s_binary_and_data_dir(tmp_path: Path) -> None:
    def command(*serve_args: str, binary: str | None = None) -> str:
        return superuser_command(describe(serve_args, tmp_path), tmp_path, binary)

    assert command() == "pbhost pocketbase superuser upsert EMAIL PASS"
    assert command("--dir", "./pb_data") == command()  # the default, spelled out
    assert command("--dir=my data/pb") == \
        "pbhost pocketbase superuser upsert EMAIL PASS '--dir=my data/pb'"
    assert command("--dir", "/srv/pb") == "pbhost pocketbase superuser upsert EMAIL PASS " \
        "--dir=/srv/pb"
    assert command(binary="./bin/pocketbase") == \
        "pbhost --pocketbase ./bin/pocketbase pocketbase superuser upsert EMAIL PASS"

"""`pbhost pocketbase ARGS...`: the binary `serve` would run, ARGS passed through, serve's data
dir unless ARGS name one, PocketBase's exit code."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from support import pbhost_env

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

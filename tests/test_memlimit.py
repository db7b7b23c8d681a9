"""maxMemory's policy (limits/memlimit.py) with a fake clock, and the key's parser.

The same rules on real processes, real workers and real memory: test_memory_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest

from pbhost.config.keys import parse_size
from pbhost.config.loader import load_config
from pbhost.errors import ConfigError
from pbhost.limits.memlimit import Breach, RunWatch, size

MIB = 1 << 20
LIMIT = 512 * MIB


def watch(window: float = 10.0, started: float = 0.0, quick: float = 10.0) -> RunWatch:
    return RunWatch(LIMIT, window, started, quick)


def feed(w: RunWatch, samples: list[tuple[float, int]]) -> list[Breach | None]:
    return [w.observe(t, rss) for t, rss in samples]


def test_acts_only_once_the_whole_window_was_over_the_limit() -> None:
    w = watch(started=-100.0)
    over = 612 * MIB
    verdicts = feed(w, [(float(t), over) for t in range(0, 11)])
    assert verdicts[:10] == [None] * 10           # 0 s .. 9 s over: not yet
    assert verdicts[10] == Breach(over, LIMIT, 10.0, quick=False)


def test_one_sample_under_the_limit_starts_the_window_again() -> None:
    w = watch(started=-100.0)
    over = LIMIT + 1
    feed(w, [(float(t), over) for t in range(0, 9)])
    assert w.observe(9.0, LIMIT) is None              # at the limit is not over it
    assert feed(w, [(float(t), over) for t in range(10, 20)]) == [None] * 10
    assert w.observe(20.0, over) is not None          # 10 s over since t=10


def test_a_spike_shorter_than_the_window_is_left_alone() -> None:
    w = watch(window=5.0, started=-100.0)
    samples = [(0.0, 100 * MIB), (1.0, 900 * MIB), (2.0, 900 * MIB), (3.0, 100 * MIB)]
    samples += [(float(t), 100 * MIB) for t in range(4, 60)]
    assert all(v is None for v in feed(w, samples))


def test_a_zero_window_acts_on_the_first_sample_over() -> None:
    assert watch(window=0.0, started=-100.0).observe(0.0, LIMIT + 1) is not None


def test_a_breach_that_began_soon_after_the_start_is_a_quick_failure() -> None:
    w = watch(window=2.0, started=100.0, quick=10.0)
    assert w.observe(105.0, LIMIT * 2) is None
    breach = w.observe(107.0, LIMIT * 2)
    assert breach is not None and breach.quick     # went over 5 s after the start


def test_a_breach_long_after_the_start_is_not_a_failure() -> None:
    w = watch(window=2.0, started=100.0, quick=10.0)
    assert w.observe(100.0, 10 * MIB) is None
    assert w.observe(111.0, LIMIT * 2) is None     # went over 11 s after the start
    breach = w.observe(113.0, LIMIT * 2)
    assert breach is not None and not breach.quick


def test_the_reason_names_memory_limit_and_window() -> None:
    assert Breach(612 * MIB, 512 * MIB, 10.0, False).reason() == \
        "memory 612 MiB over maxMemory 512 MiB for 10s"
    assert Breach(int(2.5 * (1 << 30)), 2 << 30, 1.5, True).reason() == \
        "memory 2.5 GiB over maxMemory 2 GiB for 1.5s"
    assert Breach(700 << 10, 512 << 10, 0.0, True).reason() == \
        "memory 700 KiB over maxMemory 512 KiB"


def test_sizes_are_shown_the_way_limits_are_written() -> None:
    assert [size(n) for n in (512 * MIB, 1 << 30, 3 << 29, 300 << 10)] == \
        ["512 MiB", "1 GiB", "1.5 GiB", "300 KiB"]


@pytest.mark.parametrize("text,expected", [
    ("512M", 512 * MIB), ("2G", 2 << 30), ("1.5g", 3 << 29), ("512MiB", 512 * MIB),
    ("512mb", 512 * MIB), ("100K", 100 << 10), (" 1 T ", 1 << 40),
])
def test_sizes_with_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("value", [512, 536870912, "512", "1.5", 0.5])
def test_a_bare_number_is_refused_with_the_reason(value: object) -> None:
    with pytest.raises(ValueError, match=r'needs a unit, as in "512M" or "2G" .* alone could '
                                         r"be bytes or megabytes"):
        parse_size(value)


@pytest.mark.parametrize("value,message", [
    ("0M", "must be greater than 0"), ("-1G", "must be a size with its unit"),
    ("lots", "must be a size with its unit"), ("5X", "must be a size with its unit"),
    (True, "must be a size with its unit"), ([1], "got an array"),
])
def test_other_bad_sizes(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(value)


# ---------------------------------------------------------------------------------------------
# In pb_processes.json


def config(tmp_path: Path, **keys: Any) -> Path:
    (tmp_path / "a.py").write_text("")
    path = tmp_path / "pb_processes.json"
    path.write_text(json.dumps([{"id": "ai-agent", "script": "a.py", **keys}]))
    return path


def test_max_memory_keys_reach_the_spec(tmp_path: Path) -> None:
    (spec,) = load_config(config(tmp_path, maxMemory="512M", maxMemoryFor="30s"), {}).processes
    assert (spec.max_memory, spec.max_memory_for) == (512 * MIB, 30.0)
    (spec,) = load_config(config(tmp_path), {}).processes
    assert (spec.max_memory, spec.max_memory_for) == (None, 10.0)  # no limit; 10 s window
    (spec,) = load_config(config(tmp_path, maxMemory=None), {}).processes
    assert spec.max_memory is None


def test_a_bare_number_is_a_config_error_naming_file_process_and_key(tmp_path: Path) -> None:
    path = config(tmp_path, maxMemory=512)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.path == str(path)
    assert info.value.problems == [
        'process "ai-agent": "maxMemory" needs a unit, as in "512M" or "2G" (K, M, G, T: KiB, '
        "MiB, GiB, TiB): number 512 alone could be bytes or megabytes"]


def test_misspelt_and_pointless_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config(tmp_path, max_memory="1G", maxMemoryFor="soon"), {})
    assert info.value.problems == [
        'process "ai-agent": unknown key "max_memory" (did you mean "maxMemory"?)',
        'process "ai-agent": "maxMemoryFor" must be a duration such as "500ms", "1s", "1.5s", '
        '"2m" or a number of seconds, got string "soon"']
    cfg = load_config(config(tmp_path, maxMemoryFor="5s"), {})
    assert cfg.warnings == ('process "ai-agent": "maxMemoryFor" has no effect without '
                            '"maxMemory"',)


def test_ls_shows_memory_against_the_limit() -> None:
    from pbhost.cli.views import table
    procs: list[dict[str, Any]] = [
             {"id": "pocketbase", "pid": 10, "status": "running", "uptime": 5, "cpu": 0.1,
              "memory": 30 * MIB, "memoryLimit": None},
             {"id": "ai-agent", "pid": 11, "status": "running", "uptime": 5, "cpu": 1.0,
              "memory": 88 * MIB, "memoryLimit": 512 * MIB},
             {"id": "big", "pid": 12, "status": "running", "uptime": 5, "cpu": 0.0,
              "memory": 3 << 29, "memoryLimit": 3 << 30},
             {"id": "off", "pid": None, "status": "stopped", "memoryLimit": 512 * MIB}]
    lines = click.unstyle(table(procs)).splitlines()
    start = lines[0].index("memory")  # the column, wherever the others put it
    rows = [line[start:].split("  ")[0].strip() for line in lines[1:]]
    assert rows == ["30.0 MiB", "88.0 MiB / 512 MiB", "1.5 GiB / 3 GiB", "-"]

"""config.py: the file a user writes -> ProcessSpecs, and every message a mistake earns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pbhost.config.keys import parse_duration
from pbhost.config.loader import LoadedConfig, ProcessSpec, find_config, load_config
from pbhost.errors import ConfigError
from pbhost.process.launch import resolve_env
from support import run_pbhost


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A project folder with the files the seed example refers to."""
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "main.py").write_text("print('hi')\n")
    return tmp_path


def write(root: Path, data: Any, name: str = "pb_processes.json") -> Path:
    path = root / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return path


def load(root: Path, data: Any, environ: dict[str, str] | None = None) -> LoadedConfig:
    return load_config(write(root, data), environ or {})


def problems(root: Path, data: Any, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(root, data, environ)
    assert info.value.path == str(root / "pb_processes.json")
    return info.value.problems


def agent(**extra: Any) -> dict[str, Any]:
    return {"id": "ai-agent", "script": "./agent/main.py", **extra}


# ---------------------------------------------------------------------------------------------
# What a valid file becomes


def test_seed_example_from_the_spec(root: Path) -> None:
    (root / "parser-service").mkdir()
    cfg = load(root, [
        {"id": "ai-agent", "script": "./agent/main.py", "cwd": "./agent",
         "env": {"PORT": "8001", "OPENAI_API_KEY": "${OPENAI_API_KEY}"},
         "interpreter": "auto", "maxRetries": 5, "backoff": "1s", "devMode": True,
         "watchPaths": ["./agent"]},
        {"id": "pdf-parser", "command": "npm", "args": ["run", "start"],
         "cwd": "./parser-service", "devMode": False},
    ], {"OPENAI_API_KEY": "sk-test"})
    first, second = cfg.processes
    assert cfg.path == root / "pb_processes.json"
    assert first == ProcessSpec(
        id="ai-agent", script=root / "agent" / "main.py", command=None, args=(),
        cwd=root / "agent", env={"PORT": "8001", "OPENAI_API_KEY": "${OPENAI_API_KEY}"},
        interpreter="auto", max_retries=5, backoff=1.0, dev_mode=True,
        watch_paths=(root / "agent",))
    # ${VAR} is expanded at each start, against pbhost's environment (and envFile values).
    assert resolve_env(first, {"OPENAI_API_KEY": "sk-test"}).env == {
        "PORT": "8001", "OPENAI_API_KEY": "sk-test"}
    assert second.command == "npm" and second.args == ("run", "start")
    assert second.cwd == root / "parser-service" and second.script is None
    assert cfg.warnings == ()


def test_defaults(root: Path) -> None:
    (spec,) = load(root, [agent()]).processes
    assert spec.cwd == root                      # the config file's folder
    assert spec.watch_paths == (root,)           # default: cwd
    assert (spec.interpreter, spec.max_retries, spec.backoff) == ("auto", None, 1.0)
    assert (spec.dev_mode, spec.autostart, spec.pb_logs) == (False, True, "stderr")
    assert (spec.debounce, spec.stop_timeout, spec.watch_ignore) == (0.5, 5.0, ())
    assert dict(spec.env) == {} and spec.args == ()


def test_all_keys(root: Path) -> None:
    (spec,) = load(root, [agent(
        cwd="agent", args=["--x", "1"], maxRetries=0, backoff="250ms", devMode=True,
        watchPaths=["agent", "."], watchIgnore=["*.log"], debounce=0.2, stopTimeout="2m",
        autostart=False, pbLogs="all", interpreter="python3.11")]).processes
    assert spec.args == ("--x", "1") and spec.max_retries == 0
    assert (spec.backoff, spec.debounce, spec.stop_timeout) == (0.25, 0.2, 120.0)
    assert spec.watch_paths == (root / "agent", root) and spec.watch_ignore == ("*.log",)
    assert (spec.autostart, spec.pb_logs, spec.interpreter) == (False, "all", "python3.11")


def test_empty_array_means_no_sidecars(root: Path) -> None:
    assert load(root, []).processes == ()


def test_spec_is_frozen_and_env_read_only(root: Path) -> None:
    (spec,) = load(root, [agent(env={"A": "1"})]).processes
    with pytest.raises(AttributeError):
        spec.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.env["A"] = "2"  # type: ignore[index]
    assert hash(spec) == hash(load(root, [agent(env={"A": "1"})]).processes[0])


def test_relative_paths_start_at_the_config_folder_not_the_caller_cwd(
        root: Path, monkeypatch: pytest.MonkeyPatch,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    (root / "bin").mkdir()
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    (spec, cmd) = load(root, [agent(cwd="./agent", watchPaths=["./bin"]),
                              {"id": "tool", "command": "./bin/tool", "cwd": "agent"}]).processes
    assert spec.script == root / "agent" / "main.py"   # not cwd / script: the config folder
    assert spec.watch_paths == (root / "bin",)          # not <cwd>/bin
    assert cmd.command == str(root / "bin" / "tool")     # a relative path is made absolute
    assert load(root, [{"id": "n", "command": "node"}]).processes[0].command == "node"


def test_absolute_and_home_paths(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(root))
    (spec,) = load(root, [agent(script=str(root / "agent" / "main.py"), cwd="~/agent")]).processes
    assert spec.script == root / "agent" / "main.py" and spec.cwd == root / "agent"


# ---------------------------------------------------------------------------------------------
# ${VAR} expansion


def test_env_expansion(root: Path) -> None:
    environ = {"KEY": "sk-1", "EMPTY": "", "HOST": "db"}
    (spec,) = load(root, [agent(env={
        "A": "${KEY}", "B": "${MISSING:-fallback}", "C": "${EMPTY:-used-when-empty}",
        "D": "postgres://${HOST}:${PORT:-5432}/x", "E": "cost $$5", "F": "plain $HOME",
        "G": "${KEY:-not-used}"})], environ).processes
    assert resolve_env(spec, environ).env == {"A": "sk-1", "B": "fallback", "C": "used-when-empty",
                              "D": "postgres://db:5432/x", "E": "cost $5", "F": "plain $HOME",
                              "G": "sk-1"}


def test_unset_variable_becomes_empty_with_a_warning(root: Path) -> None:
    cfg = load(root, [agent(env={"OPENAI_API_KEY": "${OPENAI_API_KEY}"})], {})
    own = resolve_env(cfg.processes[0], {})
    assert own.env["OPENAI_API_KEY"] == "" and own.unset == (("OPENAI_API_KEY", "OPENAI_API_KEY"),)
    assert cfg.warnings == ('process "ai-agent": env OPENAI_API_KEY refers to ${OPENAI_API_KEY}, '
                            "which is not set (using an empty string)",)


def test_env_numbers_and_booleans_become_strings(root: Path) -> None:
    (spec,) = load(root, [agent(env={"PORT": 8001, "DEBUG": True, "RATIO": 0.5})]).processes
    assert dict(spec.env) == {"PORT": "8001", "DEBUG": "true", "RATIO": "0.5"}


def test_env_errors(root: Path) -> None:
    # The message points at the reference without quoting the value: it may be a secret.
    assert problems(root, [agent(env={"A": "sk-${BAD"})]) == [
        'process "ai-agent": "env" entry A has a malformed reference at character 4 '
        "(write ${NAME} or ${NAME:-default}, or $$ for a literal $)"]
    assert problems(root, [agent(env={"A": "${NOT VALID}"})])[0].startswith(
        'process "ai-agent": "env" entry A has a malformed reference at character 1')
    assert problems(root, [agent(env={"A": None})]) == [
        'process "ai-agent": "env" entry A must be a string, number or boolean, got null']
    assert problems(root, [agent(env=["A=1"])]) == [
        'process "ai-agent": "env" must be an object of strings, got an array']
    assert problems(root, [agent(env={"A=B": "1"})]) == [
        'process "ai-agent": "env" has an invalid variable name string "A=B"']


# ---------------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize("value, seconds", [
    ("1s", 1.0), ("500ms", 0.5), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0), (2, 2.0),
    (0.25, 0.25), ("3", 3.0), (" 10 s ", 10.0), ("0", 0.0), (".5s", 0.5),
])
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value, message", [
    ("-1s", 'must not be negative, got string "-1s"'),
    (-2, "must not be negative, got number -2"),
    ("fast", 'must be a duration such as "500ms", "1s", "1.5s", "2m" or a number of seconds, '
             'got string "fast"'),
    ("1d", 'got string "1d"'), ("1 s s", 'got string "1 s s"'), ("", 'got string ""'),
    (True, "got boolean true"), (None, "got null"), (float("inf"), "got number inf"),
    ([1], "got an array"),
])
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value).endswith(message)


def test_duration_errors_name_process_and_key(root: Path) -> None:
    assert problems(root, [agent(backoff="-1s", stopTimeout="soon", debounce=[])]) == [
        'process "ai-agent": "backoff" must not be negative, got string "-1s"',
        'process "ai-agent": "debounce" must be a duration such as "500ms", "1s", "1.5s", "2m" '
        "or a number of seconds, got an array",
        'process "ai-agent": "stopTimeout" must be a duration such as "500ms", "1s", "1.5s", '
        '"2m" or a number of seconds, got string "soon"',
    ]
    assert problems(root, [agent(backoff=0)]) == [
        'process "ai-agent": "backoff" must be greater than 0, got number 0']


# ---------------------------------------------------------------------------------------------
# Syntax and shape


def test_json_syntax_error_has_line_and_column(root: Path) -> None:
    text = '[\n  {\n    "id": "ai-agent",\n    "script": "./agent/main.py"\n    "cwd": "."\n  }\n]'
    assert problems(root, text) == [
        "JSON syntax error at line 5, column 5: Expecting ',' delimiter"]


def test_yaml_syntax_error_has_line_and_column(root: Path) -> None:
    path = write(root, "- id: ai-agent\n  script: ./agent/main.py\n cwd: bad\n",
                 "pb_processes.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    (problem,) = info.value.problems
    assert problem.startswith("YAML syntax error at line 3, column 2: ")
    assert str(info.value).startswith(f"{path}: YAML syntax error at line 3")


def test_empty_file(root: Path) -> None:
    assert problems(root, "  \n") == ["the file is empty (write [] for no sidecars)"]


def test_not_utf8(root: Path) -> None:
    (root / "pb_processes.json").write_bytes(b'[\n{"id": "\xff"}]')
    with pytest.raises(ConfigError) as info:
        load_config(root / "pb_processes.json", {})
    assert info.value.problems == ["not UTF-8 text (line 2)"]


def test_a_utf8_bom_is_accepted_by_pbhost_check(root: Path) -> None:
    """Notepad saves UTF-8 with a BOM; json.loads refuses it ("decode using utf-8-sig")."""
    (root / "pb_processes.json").write_bytes(
        b'\xef\xbb\xbf[{"id": "ai-agent", "script": "./agent/main.py"}]')
    done = run_pbhost(root, "check")
    assert (done.returncode, done.stderr) == (0, "")
    assert "1 process(es) OK: ai-agent" in done.stdout


@pytest.mark.parametrize("name, text", [
    ("pb_processes.json", "[" * 100_000 + "]" * 100_000),
    ("pb_processes.yaml", "- " * 5_000 + "x\n"),
])
def test_absurdly_deep_nesting_is_a_config_error_not_a_traceback(
        root: Path, name: str, text: str) -> None:
    (root / name).write_text(text)
    done = run_pbhost(root, "check")
    assert (done.returncode, done.stderr) == (
        2, f"pbhost: error: {root / name}: nested too deeply to be a process list "
           "(brackets that never close?)\n")


def test_missing_file(root: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(root / "nope.json", {})
    assert info.value.problems == ["not found"]


def test_top_level_and_entry_shapes(root: Path) -> None:
    assert problems(root, {"apps": []}) == [
        "the top level must be an array of process objects, got an object"]
    assert problems(root, [agent(), "npm start", None]) == [
        'process #2 must be an object, got string "npm start"',
        "process #3 must be an object, got null"]


# ---------------------------------------------------------------------------------------------
# Keys and values


def test_unknown_keys_with_suggestions(root: Path) -> None:
    assert problems(root, [agent(devmode=True, max_retries=3, watchpath=["."], colour="red")]) == [
        'process "ai-agent": unknown key "devmode" (did you mean "devMode"?)',
        'process "ai-agent": unknown key "max_retries" (did you mean "maxRetries"?)',
        'process "ai-agent": unknown key "watchpath" (did you mean "watchPaths"?)',
        'process "ai-agent": unknown key "colour"',
    ]


def test_duplicate_key_in_an_object(root: Path) -> None:
    text = '[{"id": "a", "script": "./agent/main.py", "devMode": true, "devMode": false}]'
    assert problems(root, text) == ['process "a": key "devMode" appears twice']


def test_wrong_types_name_the_expected_type(root: Path) -> None:
    assert problems(root, [agent(args="--fast", maxRetries="5", devMode="yes",
                                 watchIgnore=[1], pbLogs="some", interpreter="")]) == [
        'process "ai-agent": "args" must be an array of strings, got string "--fast"',
        'process "ai-agent": "interpreter" must be a non-empty string, got string ""',
        'process "ai-agent": "maxRetries" must be an integer >= 0, or null for unlimited, '
        'got string "5"',
        'process "ai-agent": "devMode" must be true or false, got string "yes"',
        'process "ai-agent": "watchIgnore" must be an array of strings, but item 0 is number 1',
        'process "ai-agent": "pbLogs" must be one of "stderr", "all", "none", got string "some"',
    ]
    assert problems(root, [agent(maxRetries=-1)])[0].endswith("got number -1")
    assert problems(root, [agent(maxRetries=True)])[0].endswith("got boolean true")
    assert load(root, [agent(maxRetries=None)]).processes[0].max_retries is None


def test_ids(root: Path) -> None:
    assert problems(root, [agent(id="ai agent!")]) == [
        'process "ai agent!": "id" may contain only letters, digits, \'_\', \'.\' and \'-\', '
        'got string "ai agent!"']
    assert problems(root, [agent(id="pocketbase"), agent(id="PBHost")]) == [
        'process "pocketbase": "id" must not be "pocketbase": that name is reserved for '
        "pbhost's own log lines",
        'process "PBHost": "id" must not be "PBHost": that name is reserved for '
        "pbhost's own log lines"]
    assert problems(root, [{"script": "./agent/main.py"}, agent(id=7)]) == [
        'process #1: "id" is required',
        'process #2: "id" must be a non-empty string, got number 7']


def test_duplicate_ids(root: Path) -> None:
    assert problems(root, [agent(), agent(id="other"), agent()]) == [
        'process #3: id "ai-agent" is already used by process #1']
    # Reported even when an entry has other problems too.
    assert problems(root, [agent(devMode=1), {"id": "ai-agent", "command": "node"}]) == [
        'process "ai-agent": "devMode" must be true or false, got number 1',
        'process #2: id "ai-agent" is already used by process #1']


def test_script_or_command(root: Path) -> None:
    assert problems(root, [{"id": "a", "script": "./agent/main.py", "command": "node"},
                           {"id": "b"}]) == [
        'process "a": set "script" or "command", not both',
        'process "b": "script" or "command" is required']
    assert problems(root, [{"id": "c", "command": "npm", "interpreter": "node"}]) == [
        'process "c": "interpreter" applies to "script" only; a "command" runs as written']


def test_command_with_spaces_is_not_a_shell_line(root: Path) -> None:
    assert problems(root, [{"id": "p", "command": "npm run start"}]) == [
        'process "p": "command" "npm run start" is run as one program name (there is no shell): '
        'write "command": "npm", "args": ["run", "start"]']
    (root / "my tools").mkdir()
    (root / "my tools" / "run").write_text("#!/bin/sh\n")
    spec = load(root, [{"id": "p", "command": "./my tools/run"}]).processes[0]
    assert spec.command == str(root / "my tools" / "run")


def test_a_blank_command_is_a_config_error_not_a_traceback(root: Path) -> None:
    write(root, [{"id": "p", "command": "   "}])
    done = run_pbhost(root, "check")
    assert (done.returncode, done.stderr) == (
        2, f'pbhost: error: {root / "pb_processes.json"}: process "p": "command" must be a '
           'non-empty string, got string "   "\n')


def test_paths_that_do_not_exist(root: Path) -> None:
    assert problems(root, [agent(id="a", script="./agent/nope.py"),
                           agent(id="b", cwd="./missing"),
                           agent(id="c", cwd="./agent/main.py"),
                           agent(id="d", watchPaths=["./agent", "./gone", "./gone2"]),
                           agent(id="e", script="./agent")]) == [
        f'process "a": "script" file not found: {root}/agent/nope.py',
        f'process "b": "cwd" folder not found: {root}/missing',
        f'process "c": "cwd" is not a folder: {root}/agent/main.py',
        f'process "d": "watchPaths" entry not found: {root}/gone, {root}/gone2',
        f'process "e": "script" is a folder, not a file: {root}/agent',
    ]


def test_all_problems_reported_at_once_and_message_names_the_file(root: Path) -> None:
    path = write(root, [agent(devmode=True), {"id": "b", "command": 3}])
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).splitlines() == [
        f'{path}: process "ai-agent": unknown key "devmode" (did you mean "devMode"?)',
        f'{path}: process "b": "command" must be a non-empty string, got number 3']


# ---------------------------------------------------------------------------------------------
# YAML and finding the file


def test_yaml_config(root: Path) -> None:
    path = write(root, """\
- id: ai-agent
  script: ./agent/main.py
  cwd: ./agent
  env:
    PORT: 8001
    KEY: ${KEY:-none}
  backoff: 500ms
  devMode: yes
""", "pb_processes.yml")
    (spec,) = load_config(path, {}).processes
    assert spec.cwd == root / "agent" and spec.backoff == 0.5 and spec.dev_mode is True
    assert resolve_env(spec, {}).env == {"PORT": "8001", "KEY": "none"}


def test_yaml_errors_use_the_same_messages(root: Path) -> None:
    path = write(root, "- id: a\n  script: ./agent/main.py\n  devmode: true\n", "pb_processes.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.problems == ['process "a": unknown key "devmode" (did you mean "devMode"?)']


def test_find_config_order(tmp_path: Path) -> None:
    assert find_config(None, tmp_path) is None
    for name in ("pb_processes.yml", "pb_processes.yaml", "pb_processes.json"):
        (tmp_path / name).write_text("[]")
        assert find_config(None, tmp_path) == tmp_path / name   # each one outranks the last


def test_find_config_explicit(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.yaml").write_text("[]")
    (tmp_path / "pb_processes.json").write_text("[]")
    assert find_config("sub/mine.yaml", tmp_path) == tmp_path / "sub" / "mine.yaml"
    assert find_config(str(tmp_path), tmp_path / "sub") == tmp_path / "pb_processes.json"
    with pytest.raises(ConfigError) as info:
        find_config("missing.json", tmp_path)
    assert (info.value.path, info.value.problems) == (str(tmp_path / "missing.json"), ["not found"])
    with pytest.raises(ConfigError) as info:
        find_config("sub", tmp_path)
    assert info.value.problems == [
        "no pb_processes.json/pb_processes.yaml/pb_processes.yml in this folder"]


@pytest.mark.parametrize("name", ["list", "metrics", "logs", "reload"])
def test_ids_that_api_routes_would_shadow_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "a.py").write_text("")
    path = tmp_path / "pb_processes.json"
    path.write_text(json.dumps([{"id": name, "script": "a.py"}]))
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.problems == [
        f'process "{name}": "id" must not be "{name}": the control API uses /api/pm/{name} '
        'for itself']


# ---------------------------------------------------------------------------------------------
# Health and order: probes, watchdog, dependsOn


def test_probes_with_their_defaults_and_port_written_once(root: Path) -> None:
    cfg = load(root, [agent(
        env={"PORT": "8001"},
        livenessProbe={"http": "http://localhost:${PORT}/health?deep=1"},
        readinessProbe={"tcp": "${PORT}", "successThreshold": 2},
        watchdog="30s", dependsOn={"pocketbase": "started"})])
    spec = cfg.processes[0]
    live, ready = spec.liveness, spec.readiness
    assert live is not None and ready is not None
    assert (live.kind, live.host, live.port, live.path) == ("http", "127.0.0.1", 8001,
                                                             "/health?deep=1")
    assert (live.initial_delay, live.period, live.timeout, live.failure_threshold,
            live.success_threshold) == (0.0, 10.0, 1.0, 3, 1)       # Kubernetes' defaults
    assert (ready.kind, ready.host, ready.port, ready.period, ready.success_threshold) == (
        "tcp", "127.0.0.1", 8001, 1.0, 2)                           # readiness: every second
    # Messages name a probe as written: a ${VAR} may hold a secret (an envFile's API key).
    assert live.label == "GET /health?deep=1" and ready.label == "TCP ${PORT}"
    assert spec.watchdog == 30.0 and dict(spec.depends_on) == {"pocketbase": "started"}


def test_a_probe_value_falls_back_to_pbhosts_environment(root: Path) -> None:
    cfg = load(root, [agent(livenessProbe={"exec": ["curl", "-f", "${HEALTH_URL}"],
                                           "timeout": "2s"})],
               environ={"HEALTH_URL": "http://127.0.0.1:9/x"})
    probe = cfg.processes[0].liveness
    assert probe is not None and probe.argv == ("curl", "-f", "http://127.0.0.1:9/x")


def test_waiting_probes_take_no_timing_keys(root: Path) -> None:
    cfg = load(root, [agent(readinessProbe={"logLine": r"Uvicorn running on \S+$"})])
    probe = cfg.processes[0].readiness
    assert probe is not None and probe.kind == "logLine" and probe.label.startswith("log line /")
    assert problems(root, [agent(readinessProbe={"notify": True, "timeout": "1s"})]) == [
        'process "ai-agent": "readinessProbe.timeout" does not apply to a "notify" probe '
        '(it waits for READY=1, without polling)']


def test_probe_errors_name_the_key_inside_the_probe(root: Path) -> None:
    found = problems(root, [agent(
        livenessProbe={"http": "https://127.0.0.1/", "timout": "1s", "period": "10ms",
                       "successThreshold": 2, "failureThreshold": 0},
        readinessProbe={"logLine": "(unclosed", "failureThreshold": 3},
        dependsOn={"redis": "redy"})])
    assert found == [
        'process "ai-agent": "livenessProbe.timout" is not a key of this probe '
        '(did you mean "timeout"?)',
        'process "ai-agent": "livenessProbe.http" must be an http:// URL such as '
        'http://127.0.0.1:8001/health, got string "https://127.0.0.1/"',
        'process "ai-agent": "livenessProbe.period" must be at least 100ms, got string "10ms"',
        'process "ai-agent": "livenessProbe.failureThreshold" must be a whole number >= 1, '
        'got number 0',
        'process "ai-agent": "livenessProbe.successThreshold" must be 1 for a liveness probe '
        '(as in Kubernetes: one success clears its failures), got number 2',
        'process "ai-agent": "readinessProbe.failureThreshold" does not apply to a readiness '
        'probe: it is tried until it passes, then it stops (a livenessProbe restarts on '
        'failures)',
        'process "ai-agent": "readinessProbe.logLine" is not a valid regular expression: '
        'missing ), unterminated subpattern at position 0',
        'process "ai-agent": "dependsOn.redis" must be one of "started", "ready", '
        '"completed", got string "redy" (did you mean "ready"?)',
    ]


@pytest.mark.parametrize("probe,message", [
    ({}, 'needs exactly one of "http", "tcp", "exec"'),
    ({"http": "http://127.0.0.1/", "tcp": "1"}, "has 2 kinds (http, tcp); choose one"),
    ({"logLine": "x"}, "is for a readinessProbe only"),
    ({"htpp": "http://127.0.0.1/"}, 'is not a key of this probe (did you mean "http"?)'),
    ({"tcp": "db.internal:5432"}, "must name an IP address or localhost"),
    ({"tcp": "127.0.0.1:99999"}, 'must be "HOST:PORT"'),
    ({"exec": "curl -f x"}, 'write ["sh", "-c", "curl -f x"]'),
    ({"exec": ["ok", 3]}, "item 1 is number 3"),
    ({"tcp": "1", "status": 200}, 'applies to an "http" probe only'),
    ("http://x", "must be an object"),
])
def test_bad_liveness_probes(root: Path, probe: Any, message: str) -> None:
    found = problems(root, [agent(livenessProbe=probe)])
    assert len(found) == 1 and message in found[0], found


def test_dependency_problems_across_the_file(root: Path) -> None:
    found = problems(root, [
        agent(dependsOn={"workr": "started", "pocketbase": "completed"}),
        {"id": "worker", "script": "./agent/main.py", "dependsOn": {"queue": "ready"}},
        {"id": "queue", "script": "./agent/main.py", "dependsOn": {"worker": "completed"}},
    ])
    assert found == [
        'process "ai-agent": "dependsOn.pocketbase" must be one of "started", "ready" '
        '(PocketBase never completes), got string "completed"',
        'process "worker": "dependsOn" forms a cycle: worker -> queue -> worker',
    ]
    found = problems(root, [agent(dependsOn={"workr": "started"}),
                            {"id": "worker", "script": "./agent/main.py"}])
    assert found == ['process "ai-agent": "dependsOn" names "workr", which is not configured '
                     '(did you mean "worker"?)']


def test_notify_socket_in_env_would_silence_ready_and_watchdog(root: Path) -> None:
    assert problems(root, [agent(env={"NOTIFY_SOCKET": "/run/x"}, watchdog="5s")]) == [
        'process "ai-agent": "env" sets NOTIFY_SOCKET, so pbhost cannot hear the process\'s '
        'READY=1 / WATCHDOG=1 (remove it from "env")']

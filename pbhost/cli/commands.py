"""The command line: `pbhost [OPTIONS] serve [POCKETBASE SERVE ARGS...]` and friends.

A thin click layer: parse, call, map a PbhostError to one line and an exit code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import click

from pbhost import __version__
from pbhost.errors import ConfigError, PbhostError
from pbhost.options import ENV_PREFIX, OPTIONS, Options


def _pbhost_options(f: Any) -> Any:
    """click options from the one declaration in options.py (the fast path reads it too)."""
    for opt in reversed(OPTIONS):
        kwargs: dict[str, Any] = {"help": opt.help, "show_default": opt.show_default}
        if opt.off_names:
            decls = [f"{opt.names[-1]}/{opt.off_names[-1]}", opt.field]
            kwargs["default"] = opt.default
        elif opt.flag:
            decls = [*opt.names, opt.field]
            kwargs["is_flag"] = True
        else:
            decls = [*opt.names, opt.field]
            kwargs.update(metavar=opt.metavar, default=opt.default)
            if opt.choices:
                kwargs["type"] = click.Choice(list(opt.choices))
        f = click.option(*decls, **kwargs)(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "auto_envvar_prefix": ENV_PREFIX.rstrip("_")})
@_pbhost_options
@click.version_option(__version__, prog_name="pbhost")
@click.pass_context
def cli(ctx: click.Context, /, **kwargs: Any) -> None:
    """Run PocketBase and the sidecars of pb_processes.json as one supervised unit."""
    ctx.obj = Options(**kwargs)


@cli.command(context_settings={"ignore_unknown_options": True,
                               "allow_interspersed_args": False})
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def serve(opts: Options, serve_args: Sequence[str]) -> int:
    """Start PocketBase (all SERVE_ARGS go to `pocketbase serve`), then the sidecars."""
    from pbhost.serve import run_serve
    return run_serve(opts, list(serve_args))


@cli.command()
@click.pass_obj
def check(opts: Options) -> int:
    """Validate the process file; exit non-zero on any error."""
    from pbhost.config.loader import find_config, load_config
    path = find_config(opts.config, Path.cwd())
    if path is None:
        click.echo("no pb_processes.json/.yaml/.yml here: pbhost serve runs PocketBase alone")
        return 0
    loaded = load_config(path, os.environ)
    warnings = [*loaded.warnings, *_check_env_files(loaded.processes, str(path))]
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{path}: {len(loaded.processes)} process(es) OK: "
               + (", ".join(p.id for p in loaded.processes) or "none"))
    return 0


def _check_env_files(specs: Sequence[Any], path: str) -> list[str]:
    """Read every envFile as a start would: its problems are errors, `${VAR}` it leaves unset
    warnings (names only, never a value)."""
    from pbhost.process.launch import check_env_files
    problems, warnings = check_env_files(specs, os.environ)
    if problems:
        raise ConfigError(path, problems)
    return warnings


@cli.command("systemd-unit", context_settings={"ignore_unknown_options": True,
                                              "allow_interspersed_args": False})
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def systemd_unit(opts: Options, serve_args: Sequence[str]) -> int:
    """Print a systemd unit that runs `pbhost serve SERVE_ARGS` in this folder."""
    from pbhost.production.unit import make_unit
    click.echo(make_unit(opts, list(serve_args), Path.cwd()), nl=False)
    return 0


@cli.command(context_settings={"ignore_unknown_options": True,
                               "allow_interspersed_args": False},
             add_help_option=False)
@click.argument("pb_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def pocketbase(opts: Options, pb_args: Sequence[str]) -> int:
    """Run the PocketBase binary that `serve` runs with PB_ARGS, e.g. `superuser upsert EMAIL
    PASS`, with serve's data dir (./pb_data) unless PB_ARGS give --dir. Exits as PocketBase
    does."""
    from pbhost.pocketbase.binary import command_line, find_binary
    binary = find_binary(opts.pocketbase, os.environ, Path.cwd())
    argv = command_line(binary, list(pb_args), Path.cwd())
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(binary, argv)  # PocketBase gets the terminal, the signals and the exit code
    except OSError as exc:
        raise PbhostError(f"cannot run {binary}: {exc.strerror or exc}") from exc
    return 0  # not reached


@cli.command()
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def init(force: bool) -> int:
    """Write a pb_processes.json and a sample Python agent into the current folder."""
    from pbhost.cli.scaffold import init_project
    for path in init_project(Path.cwd(), force=force):
        click.echo(f"wrote {path}")
    click.echo("next: pbhost serve")
    return 0


# -- client commands: talk to a running pbhost through its control API --------------------
def _dir_option(f: Any) -> Any:
    return click.option("--dir", "data_dir", metavar="DIR",
                        help="Data dir of the PocketBase that pbhost serves, as given to "
                             "`pbhost serve --dir` (default: ./pb_data).")(f)


def _client(data_dir: str | None) -> Any:
    from pbhost.cli.client import ApiClient, find_endpoint
    return ApiClient(find_endpoint(data_dir, os.environ, Path.cwd()))


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON, for scripts.")
@_dir_option
def ls(as_json: bool, data_dir: str | None) -> int:
    """List the processes: pid, status, uptime, restarts, CPU, memory (alias: list)."""
    procs = _client(data_dir).call("GET", "/api/pm/list")
    if as_json:
        click.echo(json.dumps(procs, indent=2))
    else:
        from pbhost.cli.views import table
        click.echo(table(procs))
    return 0


cli.add_command(ls, "list")


def _action_command(action: str, done: str, help_text: str) -> None:
    @cli.command(action, help=help_text)
    @click.argument("proc_id", metavar="ID")
    @_dir_option
    def command(proc_id: str, data_dir: str | None) -> int:
        client = _client(data_dir)
        proc = client.call("POST", client.process_path(proc_id, action))
        pid = f" (pid {proc['pid']})" if proc.get("pid") else ""
        click.echo(f"{proc['id']} {done}{pid}")
        return 0


_action_command("start", "started", "Start a stopped or crashed process (fresh retry budget).")
_action_command("stop", "stopped", "Stop a process; it stays stopped until started again.")
_action_command("restart", "restarted", "Stop a process's whole group and start it again.")


RELOAD_TIMEOUT = 300.0  # seconds: a reload waits for what it stops (stopTimeout, in order)


@cli.command()
@_dir_option
def reload(data_dir: str | None) -> int:
    """Read pb_processes.json again and apply the difference: new processes start, removed
    ones stop, changed ones restart; the others, and PocketBase, are left alone. A broken file
    changes nothing: its errors are printed, exit status 2."""
    from pbhost.cli.views import reload_report
    client = _client(data_dir)
    status, body = client.request("POST", "/api/pm/reload", timeout=RELOAD_TIMEOUT)
    data = body.get("data") if isinstance(body, dict) else None
    if status == 422 and isinstance(data, dict) and data.get("errors"):
        raise ConfigError(str(data.get("config")), [str(e) for e in data["errors"]])
    if status != 200:
        raise client.error(status, body)
    click.echo(reload_report(body))
    return 0


@cli.command()
@click.argument("proc_id", metavar="[ID]", required=False)
@click.option("-n", "--lines", default=100, show_default=True, type=click.IntRange(0, 10_000),
              help="How many recent lines to show first.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they come.")
@_dir_option
def logs(proc_id: str | None, lines: int, follow: bool, data_dir: str | None) -> int:
    """Show the recent output of process ID, or of all processes merged by time."""
    from pbhost.cli.views import log_line
    client = _client(data_dir)
    path = client.process_path(proc_id, "logs") if proc_id else "/api/pm/logs"
    if not follow:
        for rec in client.call("GET", f"{path}?lines={lines}"):
            click.echo(log_line(rec))
        return 0
    try:
        for rec in client.follow(f"{path}?lines={lines}&follow=1"):
            click.echo(log_line(rec))
    except KeyboardInterrupt:
        return 0
    click.echo("pbhost: the log stream ended (pbhost stopped)", err=True)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: user mistakes become one line on stderr and an exit code."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="pbhost",
                        standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = 1
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"pbhost: error: {exc.path}: {problem}", err=True)
        code = exc.exit_code
    except PbhostError as exc:
        click.echo(f"pbhost: error: {exc}", err=True)
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else 0)

"""pbhost's own options (those before the command): declared once, read by two parsers.

click builds the command line from `OPTIONS` (cli/commands.py), and the fast start path
(startup/prespawn.py) reads the same table straight from argv, before click is imported, to
spawn PocketBase early. Both also take each option from `PBHOST_<NAME>`.

Import-light on purpose (no dataclasses, no typing): the fast start path imports this.
"""

from __future__ import annotations

ENV_PREFIX = "PBHOST_"
# click's boolean words (BoolParamType), for flags given through the environment.
TRUE_WORDS = frozenset({"1", "true", "t", "yes", "y", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "f", "no", "n", "off"})


class Option:
    """One option: its names, whether it takes a value, its default and its help."""

    __slots__ = ("field", "names", "off_names", "flag", "default", "metavar", "choices",
                 "show_default", "help")

    def __init__(self, field: str, names: tuple[str, ...], help: str, *, flag: bool = False,
                 off_names: tuple[str, ...] = (), default: object = None,
                 metavar: str | None = None, choices: tuple[str, ...] = (),
                 show_default: bool = False) -> None:
        self.field = field          # the Options attribute it fills
        self.names = names          # a flag's names set it True ...
        self.off_names = off_names  # ... these set it False (`--no-color`)
        self.flag = flag            # False: takes a value
        self.default = default
        self.metavar = metavar
        self.choices = choices
        self.show_default = show_default
        self.help = help

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()


OPTIONS = (
    Option("config", ("-c", "--config"), metavar="FILE",
           help="Process file (default: pb_processes.json, .yaml or .yml in the current "
                "folder)."),
    Option("pocketbase", ("--pocketbase",), metavar="PATH",
           help="PocketBase binary (default: ./pocketbase, then PATH)."),
    Option("api", ("--api",), metavar="ADDR",
           help="Control API address: HOST:PORT, unix:PATH or off (default: "
                "127.0.0.1:<PocketBase port + 1>)."),
    Option("color", ("--color",), off_names=("--no-color",), flag=True, default=None,
           help="Colour the log stream (default: only on a terminal; NO_COLOR and "
                "FORCE_COLOR are honoured)."),
    Option("log_format", ("--log-format",), choices=("text", "json"), default="text",
           show_default=True, help="json: one JSON object per line, for log shippers."),
    Option("timestamps", ("--timestamps",), flag=True, default=False,
           help="Start each log line with the time."),
    Option("strict", ("--strict",), flag=True, default=False,
           help="A broken process file is fatal instead of starting PocketBase alone."),
    Option("pb_hooks", ("--pb-hooks",), off_names=("--no-pb-hooks",), flag=True, default=True,
           show_default=True,
           help="Install pbhost.pb.js into PocketBase's hooks dir: /api/pm/* on PocketBase's "
                "port and sidecar logs in its dashboard (PBHOST_PB_HOOKS=0: off)."),
    Option("verbose", ("-v", "--verbose"), flag=True, default=False,
           help="Also show pbhost's debug messages."),
)


def by_name() -> dict[str, tuple[Option, bool]]:
    """Every option string -> (its option, the value a flag name sets)."""
    out: dict[str, tuple[Option, bool]] = {}
    for opt in OPTIONS:
        out.update({name: (opt, True) for name in opt.names})
        out.update({name: (opt, False) for name in opt.off_names})
    return out


class Options:
    """The values of pbhost's options, from click or from the fast start path's reading."""

    __slots__ = tuple(opt.field for opt in OPTIONS)  # a test checks __init__ agrees

    def __init__(self, *, config: str | None = None, pocketbase: str | None = None,
                 api: str | None = None, color: bool | None = None, log_format: str = "text",
                 timestamps: bool = False, strict: bool = False, pb_hooks: bool = True,
                 verbose: bool = False) -> None:
        self.config = config
        self.pocketbase = pocketbase
        self.api = api
        self.color = color
        self.log_format = log_format
        self.timestamps = timestamps
        self.strict = strict
        self.pb_hooks = pb_hooks
        self.verbose = verbose

    def spawn_key(self) -> tuple[str | None, str | None, str | None, bool, bool]:
        """What decides how PocketBase is started: the config (checked first with --strict),
        the binary, the API address (in its env), --strict and the hook install."""
        return (self.config, self.pocketbase, self.api, self.strict, self.pb_hooks)

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Options) and self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"Options({fields})"

"""The shape of the package: no import circle, imports go down the layers, the fast start path
stays light, subpackage `__init__` files stay empty.

Every import counts: at module level, inside functions (lazy) and under TYPE_CHECKING, because
each is a dependency a reader must follow and a circle among them is a circle in the design.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from support import ROOT, pbhost_env

PACKAGE = ROOT / "pbhost"

# Lower layers never import upper ones; a module may import its own layer and those below.
# A new module must be placed here: that is the moment to decide where it belongs.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundations", {"pbhost", "pbhost.errors", "pbhost.options", "pbhost.statedir",
                     "pbhost.process.state", "pbhost.process.spawn", "pbhost.process.procctl",
                     "pbhost.process.runenv", "pbhost.process.ending",
                     "pbhost.order.depends", "pbhost.health.thresholds",
                     "pbhost.health.notifysock", "pbhost.orphans.proctable"}),
    ("values and parsing", {"pbhost.config.loader", "pbhost.config.keys",
                            "pbhost.config.template", "pbhost.config.envfile",
                            "pbhost.config.probekeys",
                            "pbhost.orphans.trees", "pbhost.limits.memlimit",
                            "pbhost.process.specdiff",
                            "pbhost.logs.stream",
                            "pbhost.logs.lines", "pbhost.logs.render", "pbhost.logs.sink",
                            "pbhost.pocketbase.binary", "pbhost.pocketbase.hookfile",
                            "pbhost.pocketbase.localhttp", "pbhost.control.address",
                            "pbhost.control.controlfile", "pbhost.control.stats",
                            "pbhost.production.notify"}),
    ("one process", {"pbhost.process.reaper", "pbhost.process.runtime", "pbhost.process.launch",
                     "pbhost.process.supervisor", "pbhost.health.probes",
                     "pbhost.health.monitor", "pbhost.orphans.sweep",
                     "pbhost.orphans.leftovers"}),
    ("the host", {"pbhost.process.host", "pbhost.process.hostview",
                  "pbhost.order.startorder", "pbhost.process.reconfig"}),
    ("around the host", {"pbhost.control.api", "pbhost.control.httpserver",
                         "pbhost.control.auth", "pbhost.control.webui",
                         "pbhost.control.signin",
                         "pbhost.control.follow", "pbhost.pocketbase.bridge",
                         "pbhost.pocketbase.banner", "pbhost.dev.reload",
                         "pbhost.dev.watcher", "pbhost.production.unit",
                         "pbhost.limits.memory"}),
    ("entry points", {"pbhost.__main__", "pbhost.serve", "pbhost.startup.prespawn",
                      "pbhost.cli.commands", "pbhost.cli.client", "pbhost.cli.views",
                      "pbhost.cli.scaffold", "pbhost.cli.templates.agent_main"}),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The pbhost modules `name` imports, anywhere in the file."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        out.update(c for c in candidates if c in known and c != name)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle() -> None:
    assert circles(graph()) == []


def test_the_circle_finder_finds_one() -> None:
    """The check above cannot pass by accident: a made-up circle is found."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(edges) == [["a", "b", "c"]]


def test_every_module_has_a_layer() -> None:
    placed = set().union(*(members for _, members in LAYERS))
    init_files = {name for name, path in modules().items()
                  if path.name == "__init__.py" and name != "pbhost"}
    assert set(modules()) - init_files - placed == set(), "place new modules in LAYERS"
    assert placed - set(modules()) == set(), "LAYERS names a module that does not exist"


def test_imports_go_down_the_layers() -> None:
    rank = {name: i for i, (_, members) in enumerate(LAYERS) for name in members}
    upward = []
    for name, targets in graph().items():
        for target in targets:
            if name in rank and target in rank and rank[target] > rank[name]:
                upward.append(f"{name} ({LAYERS[rank[name]][0]}) imports {target} "
                              f"({LAYERS[rank[target]][0]})")
    assert upward == []


def test_subpackage_init_files_are_empty() -> None:
    inits = [p for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE]
    assert inits, "no subpackages found"
    assert [str(p.relative_to(ROOT)) for p in inits if p.read_text().strip()] == []


def test_the_fast_start_path_imports_nothing_heavy() -> None:
    """What `pbhost serve` imports before PocketBase is spawned (startup/prespawn.py and what it
    needs) must not load asyncio, click, typing or dataclasses: ~30 ms before the spawn."""
    probe = ("import sys; before = set(sys.modules); import pbhost.__main__; "
             "from pbhost.startup import prespawn; "
             "print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-c", probe], env=pbhost_env(), capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    loaded = set(ast.literal_eval(out))
    assert "pbhost.startup.prespawn" in loaded  # the probe measured the right thing
    assert loaded & {"asyncio", "click", "typing", "dataclasses"} == set()


def doc_layers(text: str) -> dict[str, set[str]]:
    """The layer table drawn in docs/architecture.md, as {layer: modules}: `pkg/{a, b}` and
    `pkg/x` are pbhost.pkg.a ..., a bare name is a top-level module."""
    block = text.split("\n```\n", 2)[1]  # the first fenced block: the table
    layers: dict[str, set[str]] = {}
    name = ""
    for line in block.splitlines():
        head, cells = line[:20].strip(), line[20:]
        if head:
            name = head
        cells = re.sub(r"(\w+)/\{([^}]*)\}",
                       lambda m: " ".join(f"{m.group(1)}/{x.strip()}"
                                          for x in m.group(2).split(",")), cells)
        layers.setdefault(name, set()).update(
            "pbhost." + cell.replace("/", ".") for cell in cells.split())
    return layers


def test_the_architecture_map_is_the_layer_table() -> None:
    """docs/architecture.md draws LAYERS: a module moved or added here must be moved there."""
    drawn = doc_layers((ROOT / "docs" / "architecture.md").read_text())
    assert drawn == {layer: members - {"pbhost"} for layer, members in LAYERS}

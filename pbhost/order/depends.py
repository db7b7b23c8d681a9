"""`dependsOn` as pure policy: the conditions, the checks of the whole graph (unknown ids,
cycles), what a waiting process still waits for, and the order of a shutdown.

Nothing here touches a process: the host asks `unmet()` with what it knows of each dependency
(a `DepState`), and the config loader asks `graph_problems()` once all entries have parsed.
Works on plain mappings `{id: {dependency: condition}}`, so the loader (below the host) can use
it without this module knowing a ProcessSpec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

STARTED = "started"      # spawned: it has a pid now (or it is a job that has completed)
READY = "ready"          # its readiness gate passed in its current run (or it completed)
COMPLETED = "completed"  # a job whose last run exited with code 0
CONDITIONS = (STARTED, READY, COMPLETED)
PB_ID = "pocketbase"     # PocketBase: an implicit `"pocketbase": "ready"` of every sidecar
PB_CONDITIONS = (STARTED, READY)

Graph = Mapping[str, Mapping[str, str]]   # id -> {dependency id: condition}


@dataclass(frozen=True)
class DepState:
    """What the host knows of one dependency, as far as conditions are concerned."""

    alive: bool              # spawned and not yet exited (starting or running)
    ready: bool              # its readiness gate passed in this run
    completed: bool          # a job whose last run exited 0
    state: str = ""          # its status, for the waiting text: "crashed", "backoff", ...
    reason: str | None = None  # its lastError, for the waiting text
    gave_up: bool = False    # crashed or stopped on request: it will not come on its own


def met(condition: str, dep: DepState) -> bool:
    if condition == STARTED:
        return dep.alive or dep.completed
    if condition == READY:
        return dep.ready or dep.completed
    return dep.completed


def with_pocketbase(deps: Mapping[str, str]) -> dict[str, str]:
    """A sidecar's dependencies with the implicit `"pocketbase": "ready"` filled in."""
    return {PB_ID: READY, **deps}


def unmet(deps: Mapping[str, str], states: Mapping[str, DepState]) -> list[str]:
    """The dependencies (ids, in the order written) whose condition does not hold now.
    An id the host does not know (removed at run time) is unmet: it cannot come."""
    return [dep for dep, cond in deps.items() if dep not in states or not met(cond, states[dep])]


def waiting_text(deps: Mapping[str, str], waiting: Sequence[str],
                 states: Mapping[str, DepState]) -> str:
    """`waiting for redis (ready), migrate (completed): migrate crashed (exited with code 1)`.

    The part after the colon names dependencies that will not come on their own, so a user
    sees at once that something needs them: a fix, then `pbhost start ID`."""
    text = "waiting for " + ", ".join(f"{dep} ({deps[dep]})" for dep in waiting)
    stuck = []
    for dep in waiting:
        st = states.get(dep)
        if st is None:
            stuck.append(f"{dep} is not configured")
        elif st.gave_up or (st.reason and st.state in ("backoff", "crashed")):
            why = f" ({st.reason})" if st.reason else ""
            stuck.append(f"{dep} {st.state}{why}")
    return text + (": " + "; ".join(stuck) if stuck else "")


def jobs(graph: Graph) -> frozenset[str]:
    """Ids some process waits for as `completed`: one-shot jobs (exit 0 ends them)."""
    return frozenset(dep for deps in graph.values() for dep, cond in deps.items()
                     if cond == COMPLETED)


def dependents(graph: Graph) -> dict[str, set[str]]:
    """id -> the ids that depend on it (directly). PocketBase is left out: it stops last."""
    out: dict[str, set[str]] = {proc_id: set() for proc_id in graph}
    for proc_id, deps in graph.items():
        for dep in deps:
            if dep in out:
                out[dep].add(proc_id)
    return out


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle as a path that ends where it began (`[a, b, a]`), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for root in graph:
        if colour[root] != WHITE:
            continue
        path: list[str] = [root]
        todo: list[Iterable[str]] = [iter(graph[root])]
        colour[root] = GREY
        while todo:  # iterative: a long chain must not hit the recursion limit
            nxt = next(iter(todo[-1]), None)
            if nxt is None:
                colour[path.pop()] = BLACK
                todo.pop()
                continue
            if nxt not in graph:
                continue  # unknown ids are reported on their own
            if colour[nxt] == GREY:
                return path[path.index(nxt):] + [nxt]
            if colour[nxt] == WHITE:
                colour[nxt] = GREY
                path.append(nxt)
                todo.append(iter(graph[nxt]))
    return None


def graph_problems(graph: Graph, known: Iterable[str]) -> list[tuple[str, str]]:
    """(process id, problem) for each dependency on an unknown id, and one for a cycle; each
    problem completes `process "api": "dependsOn" ...`."""
    known = set(known)
    problems: list[tuple[str, str]] = []
    for proc_id, deps in graph.items():
        for dep in deps:
            if dep == proc_id:
                problems.append((proc_id, f'names the process itself ("{dep}")'))
            elif dep != PB_ID and dep not in known:
                problems.append((proc_id, f'names "{dep}", which is not configured'
                                          f"{_suggest(dep, known - {proc_id})}"))
    cycle = find_cycle({p: {d: c for d, c in deps.items() if d != p}
                        for p, deps in graph.items()})
    if cycle is not None:
        problems.append((cycle[0], "forms a cycle: " + " -> ".join(cycle)))
    return problems


def _suggest(name: str, known: Iterable[str]) -> str:
    import difflib  # only a misspelt id pays for it

    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""

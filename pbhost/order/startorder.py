"""The host's side of `dependsOn`: the sidecars still waiting to be started, starting each the
moment its conditions hold, saying what the others wait for, and stopping in reverse order.

The rules are in depends.py; this applies them to live supervisors. It holds no process of its
own: ids come and go with `wait_for()` and `forget()`, so a process added, removed or restarted
at run time goes through the same path as one from the file at start-up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Mapping, Sequence

from pbhost.order.depends import PB_ID, DepState, dependents, unmet, waiting_text
from pbhost.process.state import ALIVE, ProcessState
from pbhost.process.supervisor import Supervisor

log = logging.getLogger("pbhost")
S = ProcessState

Graph = Mapping[str, Mapping[str, str]]


class StartOrder:
    def __init__(self, graph: Graph, get: Callable[[str], Supervisor],
                 autostart: Callable[[str], bool], closed: Callable[[], bool]) -> None:
        self.graph = graph            # id -> {dependency: condition}, pocketbase included
        self._get = get               # the supervisor of an id (PocketBase too)
        self._autostart = autostart
        self._closed = closed         # shutting down: nothing starts any more
        self.pocketbase_forced = False  # PocketBase never got healthy: do not wait for it
        self._pending: dict[str, None] = {}  # waiting to be started, in the file's order
        self._due = False
        self._told: dict[str, tuple[str, ...]] = {}  # what a waiter was last warned of

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def wait_for(self, ids: Sequence[str]) -> None:
        """These ids start once their dependencies are met (now, if they already are)."""
        for proc_id in ids:
            self._pending[proc_id] = None
        self.evaluate()

    def forget(self, proc_id: str) -> None:
        self._pending.pop(proc_id, None)
        self._told.pop(proc_id, None)

    def clear(self) -> None:
        self._pending.clear()

    def schedule(self) -> None:
        """Something changed: evaluate once, after the current callback (coalesced)."""
        if self._pending and not self._due:
            self._due = True
            asyncio.get_running_loop().call_soon(self.evaluate)

    def evaluate(self) -> None:
        """Start every waiting sidecar whose dependencies are met; tell the others why not."""
        self._due = False
        if self._closed():
            return
        for proc_id in list(self._pending):
            sup = self._get(proc_id)
            if sup.held or sup.child is not None or sup.state is not S.STOPPED:
                del self._pending[proc_id]  # started, or stopped, on request meanwhile
                sup.set_waiting((), None)
                continue
            deps = self.graph.get(proc_id, {})
            states = {dep: self.state_of(dep) for dep in deps
                      if dep == PB_ID or dep in self.graph}
            waiting = unmet(deps, states)
            if not waiting:
                del self._pending[proc_id]
                sup.spawn_now()  # clears its waiting fields
                continue
            sup.set_waiting(waiting, waiting_text(deps, waiting, states))
            self._tell(sup, waiting, states)

    def state_of(self, proc_id: str) -> DepState:
        """What the conditions of others see of `proc_id`."""
        sup = self._get(proc_id)
        if proc_id == PB_ID:
            return DepState(alive=sup.state in ALIVE, ready=sup.ready or self.pocketbase_forced,
                            completed=False, state=str(sup.state), reason=sup.last_error,
                            gave_up=sup.state is S.CRASHED)
        completed = sup.completed and sup.state is S.STOPPED
        reason, gave_up = sup.last_error, sup.state is S.CRASHED
        if sup.state is S.STOPPED and not completed and proc_id not in self._pending:
            gave_up = True  # it will not start on its own
            reason = ("stopped on request" if sup.held else
                      "autostart is off" if not self._autostart(proc_id) else reason)
        return DepState(alive=sup.state in ALIVE, ready=sup.ready, completed=completed,
                        state=str(sup.state), reason=reason, gave_up=gave_up)

    def _tell(self, sup: Supervisor, waiting: Sequence[str],
              states: Mapping[str, DepState]) -> None:
        """One line when a sidecar first waits for another (waiting for PocketBase alone is the
        normal start, not worth a line); a warning whenever what it waits for has given up."""
        stuck = tuple(dep for dep in waiting if dep not in states or states[dep].gave_up)
        if sup.id not in self._told and list(waiting) != [PB_ID]:
            log.info("%s: %s", sup.id, sup.waiting_text)
        if stuck and stuck != self._told.get(sup.id):
            log.warning("%s: %s; it starts once that is fixed (`pbhost start %s`)", sup.id,
                        sup.waiting_text, stuck[0])
        self._told[sup.id] = stuck

    async def stop(self, sups: Sequence[Supervisor],
                   how: Callable[[Supervisor], Awaitable[None]] | None = None) -> None:
        """Each stops once those that depend on it have stopped; all the others at once, so a
        shutdown takes as long as its longest chain, not the sum of all stops. `how`: what
        stops one (a reload retires or halts instead; default `Supervisor.stop`)."""
        loop = asyncio.get_running_loop()
        done = {sup.id: loop.create_future() for sup in sups}
        after = dependents({sup.id: self.graph.get(sup.id, {}) for sup in sups})

        async def stop_one(sup: Supervisor) -> None:
            try:
                first = [done[dep] for dep in after.get(sup.id, ()) if dep in done]
                if first:
                    await asyncio.wait(first)
                await (how(sup) if how is not None else sup.stop())
            finally:
                done[sup.id].set_result(None)
        await asyncio.gather(*(stop_one(sup) for sup in sups))

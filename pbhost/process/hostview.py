"""What the layers above the host see of it: `HostView` (read it, steer its supervisors) and
`Companion` (act at its moments). The control API, the PocketBase hook's bridge and dev mode
depend on these, never on `Host` itself, so none of them can reach into its wiring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    from pbhost.config.loader import ProcessSpec
    from pbhost.logs.stream import LogStream
    from pbhost.pocketbase.binary import PocketBaseInfo
    from pbhost.process.supervisor import Supervisor


class HostView(Protocol):
    @property
    def supervisors(self) -> Sequence[Supervisor]:
        """Every process, PocketBase first."""

    @property
    def sidecars(self) -> Sequence[Supervisor]:
        """Every process but PocketBase, in the config's order."""

    @property
    def specs(self) -> Mapping[str, ProcessSpec]:
        """The sidecars' specs by id."""

    @property
    def stream(self) -> LogStream: ...

    @property
    def pb(self) -> PocketBaseInfo: ...

    @property
    def shutting_down(self) -> bool:
        """True once shutdown has begun: no process may be started any more."""

    def get(self, proc_id: str) -> Supervisor:
        """The supervisor of `proc_id`; UnknownProcess if there is none."""

    def not_ready(self) -> list[str]:
        """Ids keeping pbhost from being ready (PocketBase and the autostart sidecars), or
        ["pbhost"] while it shuts down; [] when everything is ready."""


class Companion:
    """Something that acts at the host's moments; each hook does nothing unless overridden."""

    def started(self, host: HostView) -> None:
        """PocketBase has been spawned and the loop's signal handlers are in place."""

    def pb_healthy(self) -> None:
        """PocketBase answered /api/health (after its start and after every restart)."""

    def reloaded(self, host: HostView) -> None:
        """A reload changed the sidecars: `host.sidecars` and `host.specs` are the new set (the
        removed ones stopped, the new and the restarted ones about to start). Bring whatever
        is kept per process in line with them."""

    def shutting_down(self) -> None:
        """Shutdown begins: nothing may start a process from here on."""

    async def before_pb_stop(self) -> None:
        """The sidecars have stopped; PocketBase is about to (not after a forced stop)."""

"""Who may use the control API: pbhost's own token, PBHOST_API_TOKEN, or a PocketBase superuser.

A superuser token is checked by asking PocketBase (`auth-refresh` on `_superusers` answers 200
only for a superuser), and the verdict is cached briefly so a dashboard polling every second
does not double PocketBase's load. Token comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Sequence

from pbhost.pocketbase.localhttp import request_status

SUPERUSER_CHECK = "/api/collections/_superusers/auth-refresh"
CACHE_SECONDS = 30.0
CACHE_MAX = 1024
# While PocketBase does not answer (stopped from the dashboard, restarting), a token it
# confirmed as a superuser's this recently still passes: so whoever stopped it can start it.
VOUCHED_SECONDS = 600.0


@dataclass(frozen=True)
class Verdict:
    status: int           # 200 allowed; 401 refused; 503 cannot tell now
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


ALLOWED = Verdict(200)


def bearer(header: str | None) -> str:
    """The token of `Authorization: Bearer T` (or a bare `T`, as PocketBase also accepts)."""
    value = (header or "").strip()
    scheme, _, rest = value.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else value


class Authenticator:
    def __init__(self, tokens: Sequence[str], pb_host: str, pb_port: int,
                 cache_seconds: float = CACHE_SECONDS) -> None:
        self._tokens = [t.encode() for t in tokens if t]
        self._pb = (pb_host, pb_port)
        self._ttl = cache_seconds
        self._cache: dict[bytes, tuple[float, Verdict]] = {}
        self._vouched: dict[bytes, float] = {}  # token hash -> when PocketBase last said yes

    async def check(self, header: str | None) -> Verdict:
        token = bearer(header).encode("latin-1", "replace")  # headers arrive as latin-1
        if not token:
            return Verdict(401, "The request requires a token: Authorization: Bearer <token> "
                                "(see <data dir>/.pbhost/control.json).")
        # Compare against every token, always, so timing does not reveal which one matched.
        matches = [hmac.compare_digest(token, mine) for mine in self._tokens]
        if any(matches):
            return ALLOWED
        return await self._ask_pocketbase(token)

    async def _ask_pocketbase(self, token: bytes) -> Verdict:
        key = hashlib.sha256(token).digest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        status = await request_status(*self._pb, "POST", SUPERUSER_CHECK,
                                      [("Authorization", token.decode("latin-1"))])
        if status is None or status >= 500:
            # Not cached: PocketBase may be restarting; pbhost's own token still works.
            if now - self._vouched.get(key, float("-inf")) < VOUCHED_SECONDS:
                return ALLOWED
            return Verdict(503, "Cannot check this token: PocketBase is not answering. "
                                "Use pbhost's own token (control.json) while it is down.")
        verdict = ALLOWED if status == 200 else Verdict(
            401, "The token is neither pbhost's nor a PocketBase superuser's.")
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[key] = (now + self._ttl, verdict)
        if verdict.ok:
            if len(self._vouched) >= CACHE_MAX:
                self._vouched.clear()
            self._vouched[key] = now
        else:
            self._vouched.pop(key, None)
        return verdict

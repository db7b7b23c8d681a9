"""Who may use the control API: pbhost's own token, PBHOST_API_TOKEN, or a PocketBase superuser.

A superuser token is checked by asking PocketBase (`auth-refresh` on `_superusers` answers 200
only for a superuser), and the verdict is cached briefly so a dashboard polling every second
does not double PocketBase's load. Token comparisons are constant-time.

Failed authentication is cheap and cannot be used to hammer PocketBase:
- a token that cannot be a PocketBase auth token (a JWT whose payload says `"type": "auth"` and
  whose `exp` is ahead) is refused without asking;
- at most CHECKS_AT_ONCE questions to PocketBase are in flight;
- questions about tokens PocketBase has not accepted before draw on a budget (BUDGET_BURST,
  refilled at BUDGET_RATE per second) that only failures spend: a refused token keeps its
  share, an accepted one gives it back. With the budget spent, such tokens get 429 for a few
  seconds. Tokens of a superuser PocketBase accepted before (the same record id, also after a
  new login) are checked without the budget, a token PocketBase issued through pbhost's
  sign-in relay (signin.py) needs no check at all, and neither does pbhost's own token, so
  none of them is slowed by someone guessing.
(repeated 401s on one connection are slowed by the HTTP server.)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pbhost.pocketbase.localhttp import request_status

SUPERUSER_CHECK = "/api/collections/_superusers/auth-refresh"
CACHE_SECONDS = 30.0
CACHE_MAX = 1024
CHECKS_AT_ONCE = 4         # questions to PocketBase in flight at most
BUDGET_BURST = 10.0        # checks of new tokens that may fail in a burst...
BUDGET_RATE = 0.5          # ...and per second after that
KNOWN_MAX = 256            # superusers remembered as accepted (until their token expires)
MAX_TOKEN = 4096           # bytes; a PocketBase token is ~250
# While PocketBase does not answer (stopped from the dashboard, restarting), a token it
# confirmed as a superuser's this recently still passes: so whoever stopped it can start it.
VOUCHED_SECONDS = 600.0


@dataclass(frozen=True)
class Verdict:
    status: int           # 200 allowed; 401 refused; 429 too many failures now; 503 cannot tell
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


ALLOWED = Verdict(200)
REFUSED = Verdict(401, "The token is neither pbhost's nor a PocketBase superuser's.")
BUSY = Verdict(429, "Too many failed token checks in the last seconds; try again shortly. "
                    "pbhost's own token (control.json) is always accepted.")


def bearer(header: str | None) -> str:
    """The token of `Authorization: Bearer T` (or a bare `T`, as PocketBase also accepts)."""
    value = (header or "").strip()
    scheme, _, rest = value.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else value


def auth_claims(token: bytes, now: float) -> dict[str, Any] | None:
    """The payload of `token` if it can be a live PocketBase auth token, else None.

    PocketBase's tokens are JWTs, `header.payload.signature` in base64url, with a JSON header
    naming its `alg` and a payload like `{"collectionId": …, "exp": 1796243717, "id": …,
    "refreshable": true, "type": "auth"}`. Only the signature is left for PocketBase to judge.
    """
    parts = token.split(b".")
    if len(parts) != 3 or len(token) > MAX_TOKEN or not all(parts):
        return None
    header, payload = _json_part(parts[0]), _json_part(parts[1])
    if header is None or payload is None or not isinstance(header.get("alg"), str):
        return None
    exp = payload.get("exp")
    if payload.get("type") != "auth" or not isinstance(exp, (int, float)) or exp <= now:
        return None
    try:
        base64.urlsafe_b64decode(parts[2] + b"=" * (-len(parts[2]) % 4))
    except (binascii.Error, ValueError):
        return None
    return payload


def _json_part(part: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4)))
    except (binascii.Error, ValueError):  # UnicodeDecodeError and JSONDecodeError included
        return None
    return value if isinstance(value, dict) else None


def _who(claims: dict[str, Any]) -> str:
    """The record a token claims to be (unverified: PocketBase verifies it)."""
    return f"{claims.get('collectionId')}/{claims.get('id')}"


class Budget:
    """A token bucket: `take()` spends one if there is one; `give_back()` returns it."""

    def __init__(self, burst: float, rate: float, clock: Callable[[], float]) -> None:
        self._burst = burst
        self._rate = rate
        self._clock = clock
        self._level = burst
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self._burst, self._level + (now - self._at) * self._rate)
        self._at = now

    def take(self) -> bool:
        self._refill()
        if self._level < 1.0:
            return False
        self._level -= 1.0
        return True

    def give_back(self) -> None:
        self._refill()
        self._level = min(self._burst, self._level + 1.0)


class Authenticator:
    def __init__(self, tokens: Sequence[str], pb_host: str, pb_port: int,
                 cache_seconds: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._tokens = [t.encode() for t in tokens if t]
        self._pb = (pb_host, pb_port)
        self._ttl = cache_seconds
        self._clock = clock
        self._wall = wall
        self._cache: dict[bytes, tuple[float, Verdict]] = {}
        self._known: dict[str, float] = {}     # accepted superusers' record ids -> until when
        self._budget = Budget(BUDGET_BURST, BUDGET_RATE, clock)
        self._checks: asyncio.Semaphore | None = None
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
        claims = auth_claims(token, self._wall())
        if claims is None:
            return REFUSED
        return await self._ask_pocketbase(token, claims)

    def vouch(self, token: str) -> None:
        """PocketBase has just issued `token` to a superuser (a sign-in relayed by signin.py):
        it is accepted without asking, and its superuser is known, so a guesser spending the
        budget cannot lock out someone who signs in on the control API meanwhile."""
        raw = token.encode("latin-1", "replace")
        claims = auth_claims(raw, self._wall())
        if claims is None:
            return
        self._remember(hashlib.sha256(raw).digest(), claims, ALLOWED, self._clock())

    def _remember(self, key: bytes, claims: dict[str, Any], verdict: Verdict,
                  now: float) -> None:
        if verdict.ok:
            if len(self._known) >= KNOWN_MAX:
                self._known.clear()
            who = _who(claims)
            self._known[who] = max(self._known.get(who, 0.0), float(claims["exp"]))
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[key] = (now + self._ttl, verdict)
        if verdict.ok:
            if len(self._vouched) >= CACHE_MAX:
                self._vouched.clear()
            self._vouched[key] = now
        else:
            self._vouched.pop(key, None)

    def _cached(self, key: bytes) -> Verdict | None:
        cached = self._cache.get(key)
        return cached[1] if cached is not None and cached[0] > self._clock() else None

    async def _ask_pocketbase(self, token: bytes, claims: dict[str, Any]) -> Verdict:
        key = hashlib.sha256(token).digest()
        verdict = self._cached(key)
        if verdict is not None:
            return verdict
        known = self._known.get(_who(claims), 0.0) > self._wall()
        if not known and not self._budget.take():
            return BUSY
        if self._checks is None:
            self._checks = asyncio.Semaphore(CHECKS_AT_ONCE)
        async with self._checks:
            verdict = self._cached(key)  # asked by another request while this one waited
            asked = verdict is None
            if verdict is None:
                verdict = await self._verdict(token, key, claims)
        if not known and not (asked and verdict.status == 401):
            self._budget.give_back()  # only a refusal by PocketBase spends the budget
        return verdict

    async def _verdict(self, token: bytes, key: bytes, claims: dict[str, Any]) -> Verdict:
        now = self._clock()
        status = await request_status(*self._pb, "POST", SUPERUSER_CHECK,
                                      [("Authorization", token.decode("latin-1"))])
        if status is None or status >= 500:
            # Not cached: PocketBase may be restarting; pbhost's own token still works.
            if now - self._vouched.get(key, float("-inf")) < VOUCHED_SECONDS:
                return ALLOWED
            return Verdict(503, "Cannot check this token: PocketBase is not answering. "
                                "Use pbhost's own token (control.json) while it is down.")
        verdict = ALLOWED if status == 200 else REFUSED
        self._remember(key, claims, verdict, now)
        return verdict

"""Sign in to the control API with a PocketBase superuser's email and password.

`POST /api/collections/_superusers/auth-with-password` on the control API is relayed to the
same route of the local PocketBase, so the dashboard signs in the same way on either port and
gets a superuser token, which the API accepts (auth.py). It is the one route besides the page
that needs no token, so it is bounded: a small JSON body of exactly `identity` and `password`
(Content-Type application/json, which a form on another site cannot send: it cannot spend the
budget below from a visitor's browser), a global rate limit (a password guesser gets a handful
of tries a minute, whoever it is), and a short timeout. PocketBase decides; pbhost never sees
or keeps more than the one request.
"""

from __future__ import annotations

import json
import time
from typing import Callable

from pbhost.control.httpserver import Request, Response
from pbhost.pocketbase.localhttp import request

PATH = "/api/collections/_superusers/auth-with-password"
MAX_FIELD = 1024      # characters of identity or password
BURST = 10            # attempts at once ...
PER_MINUTE = 10.0     # ... and then this many a minute, for all clients together
TIMEOUT = 5.0


def _error(status: int, message: str) -> Response:
    body = {"status": status, "message": message, "data": {}}
    return Response(status, json.dumps(body, separators=(",", ":")).encode())


class SignInRelay:
    def __init__(self, pb_host: str, pb_port: int, burst: int = BURST,
                 per_minute: float = PER_MINUTE,
                 issued: Callable[[str], None] | None = None) -> None:
        self._pb = (pb_host, pb_port)
        self._issued = issued  # told each token PocketBase issued: the API accepts it as is
        self._burst = float(burst)
        self._rate = per_minute / 60.0
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def _allowed(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    async def handle(self, req: Request) -> Response:
        if req.method != "POST":
            resp = _error(405, "Method not allowed here; use POST.")
            resp.headers.append(("allow", "POST"))
            return resp
        kind = req.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        fields = _credentials(req.body) if kind == "application/json" else None
        if fields is None:
            return _error(400, 'Send {"identity": EMAIL, "password": PASSWORD} as JSON.')
        if not self._allowed():
            return _error(429, "Too many sign-in attempts; wait a minute and try again.")
        answer = await request(*self._pb, "POST", PATH,
                               [("Content-Type", "application/json")],
                               json.dumps(fields).encode(), timeout=TIMEOUT)
        if answer is None or answer[0] >= 500:
            return _error(503, "PocketBase is not answering, so a superuser cannot sign in "
                               "now; use pbhost's token (control.json) while it is down.")
        status, body = answer
        try:
            data = json.loads(body)
        except ValueError:
            return _error(502, "PocketBase sent an answer that is not JSON.")
        if status == 200 and self._issued is not None and isinstance(data, dict) \
                and isinstance(data.get("token"), str):
            self._issued(data["token"])
        return Response(status, body)


def _credentials(body: bytes) -> dict[str, str] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    identity, password = value.get("identity"), value.get("password")
    if not (isinstance(identity, str) and isinstance(password, str)):
        return None
    if not identity or len(identity) > MAX_FIELD or len(password) > MAX_FIELD:
        return None
    return {"identity": identity, "password": password}

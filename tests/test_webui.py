"""The dashboard's files and its sign-in over plain HTTP, on both ports: what is served without a
token, with which headers, and how the sign-in relay is bounded. The page itself is tested in a
real browser in test_dashboard.py."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from pbhost.control.webui import FILES, FOLDER
from pbhost.pocketbase.binary import find_binary
from support import PbhostRun, Project, http_json, wait_for

EMAIL, PASSWORD = "admin@example.com", "password123"
SIGNIN = "/api/collections/_superusers/auth-with-password"


class Served:
    """One running pbhost (with a superuser) and the control API's base URL."""

    def __init__(self, run: PbhostRun) -> None:
        self.run = run
        info = wait_for(lambda: json.loads((run.data_dir / ".pbhost/control.json").read_text()),
                        15, "control.json")
        self.api: str = info["url"]
        self.token: str = info["token"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    project = Project(tmp_path_factory.mktemp("webui"))
    binary = find_binary(None, os.environ, Path.cwd())
    subprocess.run([binary, "superuser", "upsert", EMAIL, PASSWORD, "--dir",
                    str(project.root / "pb_data")], check=True, capture_output=True, timeout=30)
    run = project.serve()
    try:
        run.wait_line("PocketBase hook answers", timeout=20)
        yield Served(run)
    finally:
        run.stop()


def fetch(base: str, path: str, method: str = "GET",
          body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    try:
        conn.request(method, path, body=body,
                     headers={"Content-Type": "application/json"} if body else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


PAGE_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}


@pytest.mark.parametrize("port", ["api", "pb"])
def test_the_page_and_its_files_need_no_token_and_carry_security_headers(served: Served,
                                                                         port: str) -> None:
    base, prefix = (served.api, "") if port == "api" else (served.run.url, "/_pm")
    kinds = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css",
             "favicon.svg": "image/svg+xml"}
    for path, (name, _) in FILES.items():
        status, headers, body = fetch(base, prefix + path)
        assert status == 200, (path, body[:200])
        assert body == (FOLDER / name).read_bytes()
        assert headers["content-type"].startswith(kinds[name])
        for key, value in PAGE_HEADERS.items():
            assert headers[key] == value, (path, key)
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "access-control-allow-origin" not in headers or port == "pb"
        assert "set-cookie" not in headers
    # HEAD answers the headers alone.
    status, headers, body = fetch(base, prefix + "/", "HEAD")
    assert (status, body) == (200, b"") and headers["content-type"].startswith("text/html")


def test_only_the_dashboard_files_are_public(served: Served) -> None:
    # Control API: anything else still needs a token.
    for path in ("/app.py", "/../setup.cfg", "/dashboard/app.js", "/index.htm", "/api/pm/list"):
        assert fetch(served.api, path)[0] == 401, path
    assert fetch(served.api, "/", "POST", b"{}")[0] == 401
    # PocketBase's port: no path leaves the file list, no answer needing a token is relayed.
    pb = served.run.url
    for path in ("/_pm/nope.js", "/_pm/api", "/_pm/..%2Fapi%2Fpm%2Flist", "/_pm/a/b",
                 "/_pm/%3Fx=1"):
        status, _, body = fetch(pb, path)
        assert status == 404, (path, body)
        assert b"token" not in body.lower()
    status, headers, _ = fetch(pb, "/_pm")
    assert (status, headers["location"]) == (302, "/_pm/")


def test_sign_in_on_the_control_api_is_pocketbase_s_own_answer(served: Served) -> None:
    url = served.api + SIGNIN
    status, body = http_json(url, "POST", body={"identity": EMAIL, "password": PASSWORD})
    assert status == 200 and body["record"]["email"] == EMAIL
    assert http_json(served.api + "/api/pm/list", token=body["token"])[0] == 200
    status, body = http_json(url, "POST", body={"identity": EMAIL, "password": "wrong-one"})
    assert status == 400 and body["message"] == "Failed to authenticate."
    # Bad requests are turned away before PocketBase is asked (and use no attempt).
    for bad in (b"not json", b"[]", b'{"identity": "x"}', b'{"identity": 1, "password": "p"}',
                json.dumps({"identity": "x" * 2000, "password": "p"}).encode()):
        status, _, raw = fetch(served.api, SIGNIN, "POST", bad)
        assert status == 400 and b"identity" in raw, bad
    status, headers, _ = fetch(served.api, SIGNIN)
    assert status == 405 and headers["allow"] == "POST"
    # What a form on another site can send (text/plain) is not taken either.
    conn = http.client.HTTPConnection(served.api.removeprefix("http://"), timeout=10)
    conn.request("POST", SIGNIN, body=json.dumps({"identity": EMAIL, "password": PASSWORD}),
                 headers={"Content-Type": "text/plain"})
    assert conn.getresponse().status == 400
    conn.close()
    # A guesser gets a handful of tries, then 429 for everyone, pbhost's token unaffected.
    codes = [http_json(url, "POST", body={"identity": EMAIL, "password": f"guess-{i}"})[0]
             for i in range(12)]
    assert 429 in codes and set(codes) <= {400, 429}
    status, body = http_json(url, "POST", body={"identity": EMAIL, "password": PASSWORD})
    assert status == 429 and "wait a minute" in body["message"]
    assert http_json(served.api + "/api/pm/list", token=served.token)[0] == 200

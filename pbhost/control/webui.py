"""The web dashboard's files (control/dashboard/), served by the control API at `/`.

Plain HTML, CSS and JavaScript shipped in the package: no build step, no CDN, nothing fetched
from anywhere else, so the page works offline and behind a firewall. PocketBase's port serves
the same files at `/_pm/`: pbhost's hook fetches them from here and relays body, content type
and the headers below.

The page holds no data, so it needs no authentication; every API call it makes does. Only the
names in FILES exist (no paths from the request touch the file system), and every answer
carries headers that keep the page from being framed, sniffed or fed foreign scripts.
"""

from __future__ import annotations

from pathlib import Path

from pbhost.control.httpserver import Response

FOLDER = Path(__file__).with_name("dashboard")

# request path -> (file in FOLDER, content type)
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}

# 'self' only: no inline script or style, no other origin; data: for the favicon's fallback.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
PAGE_HEADERS = (
    ("content-security-policy", CSP),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
)


class WebUi:
    """The dashboard's files, read once (they are small) and answered from memory."""

    def __init__(self, folder: Path = FOLDER) -> None:
        self._folder = folder
        self._cache: dict[str, bytes] = {}

    def page(self, method: str, path: str) -> Response | None:
        """The answer for a dashboard file, or None when `path` is not one (the API's)."""
        entry = FILES.get(path)
        if entry is None or method not in ("GET", "HEAD"):
            return None
        name, content_type = entry
        body = self._cache.get(name)
        if body is None:
            try:
                body = (self._folder / name).read_bytes()
            except OSError:
                return Response(404, b"this pbhost was installed without its dashboard files\n",
                                "text/plain; charset=utf-8", list(PAGE_HEADERS))
            self._cache[name] = body
        return Response(200, body, content_type, list(PAGE_HEADERS))

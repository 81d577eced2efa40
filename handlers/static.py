"""The demo page at ``/`` and the browser client's files under ``/static/``, served when
ENABLE_DEMO_PAGE is on (the default except in production)."""

from __future__ import annotations

from pathlib import Path

import tornado.web

from handlers.base import MaguHandlerMixin

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# The page runs its own module scripts and stylesheet, and talks to this server only: REST
# with fetch, WebSockets on the same host (ws: and wss: for browsers that do not count a
# WebSocket to the page's own host as 'self').
PAGE_CSP = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self' ws: wss:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))


_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


class StaticHandler(MaguHandlerMixin, tornado.web.StaticFileHandler):
    """A file of ``static/``, with the server's security headers; errors answer in JSON."""

    def initialize(  # type: ignore[override]
        self, path: str = str(STATIC_DIR), default_filename: str | None = None,
    ) -> None:
        super().initialize(path, default_filename)

    def set_extra_headers(self, path: str) -> None:
        # Only on the files themselves: error answers keep the strict API policy.
        self.set_header("Content-Security-Policy", PAGE_CSP)
        # Revalidated on every load (ETag, Last-Modified): a new release shows at once.
        self.set_header("Cache-Control", "no-cache")

    def get_content_type(self) -> str:
        # Fixed for the page's own files (a module script needs a JavaScript type under
        # nosniff, whatever the machine's mime.types says); guessed for anything else.
        assert self.absolute_path is not None
        known = _TYPES.get(Path(self.absolute_path).suffix)
        return known or super().get_content_type()


class DemoPageHandler(StaticHandler):
    """``GET /``: the demo page."""

    async def get(self, path: str = "index.html", include_body: bool = True) -> None:
        await super().get("index.html", include_body)

    async def head(self, path: str = "index.html") -> None:  # type: ignore[override]
        await super().get("index.html", include_body=False)


default_handlers = [
    (r"/", DemoPageHandler),
    (r"/static/(.+)", StaticHandler),
]

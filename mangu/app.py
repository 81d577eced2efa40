"""make_app: the Tornado application, with its routes and the services handed to handlers.

This is the one module of mangu/ that imports handlers/: it assembles the routes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPHeaders, HTTPMessageDelegate, HTTPServerRequest

from mangu import http1
from mangu.config import Settings
from mangu.services import Services


def route_template(pattern: str) -> str:
    """``r"/api/books/(?P<book_id>[^/]+)$"`` → ``/api/books/{book_id}``: a bounded metric label."""
    template = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)
    template = re.sub(r"\([^)]*\)", "{param}", template)
    return template.rstrip("$").replace("\\", "") or "/"


class _BodyLimit(HTTPMessageDelegate):
    """Passes a request to its handler until its body is known to be over MAX_BODY_SIZE: from
    Content-Length at once, or when the chunks received add up to more. Then the handler is
    dropped and PayloadTooLargeHandler answers a JSON 413; the connection closes after it."""

    def __init__(self, app: tornado.web.Application, request: HTTPServerRequest, handler: Any,
                 limit: int) -> None:
        self.app = app
        self.request = request
        self.handler = handler
        self.limit = limit
        self.received = 0
        self.rejected = False

    def headers_received(self, start_line: Any, headers: HTTPHeaders) -> Awaitable[None] | None:
        length = headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.limit:
            self._reject()
            return None
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            # Tornado refuses a chunk that would pass its cap before passing it on, with a
            # bare 400; counted here instead, as it arrives (at most 64 KB at a time).
            self.request.connection.set_max_body_size(_NO_CAP)
        return self.handler.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.rejected:
            return None
        self.received += len(chunk)
        if self.received > self.limit:
            self._reject()
            return None
        return self.handler.data_received(chunk)

    def finish(self) -> None:
        if not self.rejected:
            self.handler.finish()

    def on_connection_close(self) -> None:
        if not self.rejected:
            self.handler.on_connection_close()

    def _reject(self) -> None:
        from handlers.base import PayloadTooLargeHandler

        self.rejected = True
        # The rest of the body is not read: the connection closes once the 413 is written.
        # Lifting the connection's own cap keeps Tornado from writing a bare 400 after it.
        self.request.connection.set_max_body_size(_NO_CAP)
        route = getattr(self.handler, "handler_kwargs", {}).get("route", "unmatched")
        self.app.get_handler_delegate(self.request, PayloadTooLargeHandler, {"route": route}).execute()


_NO_CAP = 1 << 62


class _Application(tornado.web.Application):
    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> HTTPMessageDelegate:
        handler = super().find_handler(request, **kwargs)
        limit = self.settings["config"].max_body_size
        headers = request.headers
        length = headers.get("Content-Length")
        if "Transfer-Encoding" not in headers and (length is None or (length.isdigit() and int(length) <= limit)):
            return handler  # no body, or one within the limit: nothing to watch
        return _BodyLimit(self, request, handler, limit)


def make_app(settings: Settings, services: Services) -> tornado.web.Application:
    import handlers
    from handlers.base import NotFoundHandler, log_request

    rules = []
    for pattern, handler, *rest in handlers.routes(settings):
        kwargs: dict[str, Any] = dict(rest[0]) if rest else {}
        kwargs["route"] = route_template(pattern)
        rules.append((pattern, handler, kwargs))
    return _Application(
        rules,
        config=settings,
        services=services,
        log_function=log_request,
        default_handler_class=NotFoundHandler,
        default_handler_args={"route": "unmatched"},
        serve_traceback=False,
        debug=False,
        websocket_max_message_size=settings.ws_max_message_size,
        # Pings come from the hub's one keep-alive task (mangu/realtime/hub.py), not from a
        # task per connection.
        websocket_ping_interval=0,
    )


def make_server(app: tornado.web.Application, settings: Settings) -> HTTPServer:
    """The HTTP server for ``app``, with the limits every listener of this server has."""
    server_class = http1.Server if http1.SUPPORTED else HTTPServer  # see mangu/http1.py
    return server_class(
        app,
        # Bodies over MAX_BODY_SIZE never reach this cap: _BodyLimit answers them with a JSON
        # 413 first (Tornado's own answer would be a bare 400).
        max_body_size=settings.max_body_size,
        max_buffer_size=max(settings.max_body_size, 1024 * 1024),
        idle_connection_timeout=120,
        body_timeout=30,
    )

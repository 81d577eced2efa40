"""make_app: the Tornado application, with its routes and the services handed to handlers.

This is the one module of mangu/ that imports handlers/: it assembles the routes.
"""

from __future__ import annotations

import re
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer

from mangu.config import Settings
from mangu.services import Services


def route_template(pattern: str) -> str:
    """``r"/api/books/(?P<book_id>[^/]+)$"`` → ``/api/books/{book_id}``: a bounded metric label."""
    template = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)
    template = re.sub(r"\([^)]*\)", "{param}", template)
    return template.rstrip("$").replace("\\", "") or "/"


def make_app(settings: Settings, services: Services) -> tornado.web.Application:
    import handlers
    from handlers.base import NotFoundHandler, log_request

    rules = []
    for pattern, handler, *rest in handlers.routes(settings):
        kwargs: dict[str, Any] = dict(rest[0]) if rest else {}
        kwargs["route"] = route_template(pattern)
        rules.append((pattern, handler, kwargs))
    return tornado.web.Application(
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
    return HTTPServer(
        app,
        # Tornado answers bodies over its own cap with a bare 400 and a closed connection;
        # the handlers answer 413 in JSON for anything between MAX_BODY_SIZE and this cap.
        max_body_size=settings.max_body_size * 4,
        max_buffer_size=max(settings.max_body_size * 4, 1024 * 1024),
        idle_connection_timeout=120,
        body_timeout=30,
    )

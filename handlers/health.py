"""Operations endpoints: /ping and the liveness probe."""

from __future__ import annotations

import time

from handlers.base import APIHandler


class PingHandler(APIHandler):
    """``GET /ping`` → ``pong`` (text/plain): the cheapest sign of life."""

    rate_limit = None

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.write("pong")


class LiveHandler(APIHandler):
    """Liveness: 200 while the event loop answers. It never checks dependencies."""

    rate_limit = None

    def get(self) -> None:
        services = self.services
        self.write_json(
            {"status": "ok", "node_id": services.node_id, "uptime_s": round(time.time() - services.started_at, 3)}
        )


default_handlers = [
    (r"/ping", PingHandler),
    (r"/api/health/live", LiveHandler),
    (r"/livez", LiveHandler),
]

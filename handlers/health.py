"""Operations endpoints: /ping, the liveness probe and the readiness probe."""

from __future__ import annotations

import time

from handlers.base import APIError, APIHandler


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


class ReadyHandler(APIHandler):
    """Readiness: 503 from the moment a shutdown starts, so load balancers stop sending here."""

    rate_limit = None

    def get(self) -> None:
        services = self.services
        if services.draining:
            raise APIError(503, "draining", "shutting down", node_id=services.node_id)
        self.write_json({"status": "ready", "node_id": services.node_id})


default_handlers = [
    (r"/ping", PingHandler),
    (r"/api/health/live", LiveHandler),
    (r"/livez", LiveHandler),
    (r"/api/health/ready", ReadyHandler),
]

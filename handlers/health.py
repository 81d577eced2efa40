"""Operations endpoints: /ping, liveness, readiness, the deep health check and the Prometheus
metrics. None of them is rate limited: probes and scrapes must get through exactly when the
server is under load. Their successful answers are access-logged at DEBUG unless LOG_PROBES
is set (failures and slow answers as any request's)."""

from __future__ import annotations

import time

from handlers.base import APIHandler

HEALTH_JSON = "application/health+json"


class OperationsHandler(APIHandler):
    """What the operations endpoints share: no rate limit, and quiet access-log lines."""

    rate_limit = None
    probe = True  # a successful answer is access-logged at DEBUG unless LOG_PROBES is set


class PingHandler(OperationsHandler):
    """``GET /ping`` → ``pong`` (text/plain): the cheapest sign of life."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.write("pong")


class LiveHandler(OperationsHandler):
    """Liveness: 200 while the event loop answers. It never checks dependencies."""

    def get(self) -> None:
        services = self.services
        self.write_json(
            {"status": "ok", "node_id": services.node_id, "uptime_s": round(time.time() - services.started_at, 3)}
        )


class ReadyHandler(OperationsHandler):
    """Readiness: 200 when this process can serve traffic (started, not draining, MongoDB
    up), else 503 with the reason. Redis being down does not make it unready."""

    def get(self) -> None:
        ready, reason = self.services.health.readiness()
        self.write_json({"status": "ready" if ready else "not_ready", "reason": reason,
                         "node_id": self.services.node_id}, 200 if ready else 503)


class HealthHandler(OperationsHandler):
    """The deep check: 200 healthy or degraded, 503 unhealthy or unavailable; in the IETF
    health-check format when the client accepts ``application/health+json``."""

    async def get(self) -> None:
        health = self.services.health
        report = await health.report()
        status = health.http_status(report)
        if HEALTH_JSON in self.request.headers.get("Accept", ""):
            self.write_json(health.ietf(report), status)
            self.set_header("Content-Type", f"{HEALTH_JSON}; charset=utf-8")
        else:
            self.write_json(report, status)


class MetricsHandler(OperationsHandler):
    """Prometheus exposition (OpenMetrics when the Accept header asks for it)."""

    def get(self) -> None:
        body, content_type = self.services.metrics.render(self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.write(body)


default_handlers = [
    (r"/ping", PingHandler),
    (r"/api/health", HealthHandler),
    (r"/api/health/live", LiveHandler),
    (r"/livez", LiveHandler),
    (r"/api/health/ready", ReadyHandler),
    (r"/readyz", ReadyHandler),
    (r"/api/health/metrics", MetricsHandler),
    (r"/metrics", MetricsHandler),
]

"""Test-only endpoints on each rate-limit tier, and readers for the limiter's metrics."""

from __future__ import annotations

import tornado.web

from handlers.base import APIError, APIHandler
from mangu.ratelimit import Policy
from tests.support.app import RunningApp


class GeneralHandler(APIHandler):
    def get(self) -> None:
        self.write_json({"ok": True})


class StrictHandler(GeneralHandler):
    rate_limit = "strict"


class ExportHandler(GeneralHandler):
    rate_limit = Policy("export", 2, 60_000)


class RefusingHandler(APIHandler):
    def get(self) -> None:
        raise APIError(400, "bad_request", "refused on purpose")


class LoginAttemptHandler(APIHandler):
    """Stands in for POST /api/auth/login: counts the attempt, then fails the login."""

    rate_limit = None

    async def post(self) -> None:
        await self.limit_auth_attempt(self.get_json_body()["username"])
        raise APIError(401, "invalid_credentials", "wrong username or password")


class TieredAttemptHandler(APIHandler):
    """On the general tier, and counts an auth attempt too: two decisions for one response."""

    async def post(self) -> None:
        await self.limit_auth_attempt(self.get_json_body()["username"])
        self.write_json({"ok": True})


ROUTES = {
    "/test/general": GeneralHandler,
    "/test/strict": StrictHandler,
    "/test/export": ExportHandler,
    "/test/refusing": RefusingHandler,
    "/test/login": LoginAttemptHandler,
    "/test/tiered-attempt": TieredAttemptHandler,
}


def add_routes(app: RunningApp) -> RunningApp:
    app.app.add_handlers(r".*", [tornado.web.url(path, handler, {"route": path}) for path, handler in ROUTES.items()])
    return app


def metric(app: RunningApp, name: str, **labels: str) -> float:
    value = app.services.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def backend_in_use(app: RunningApp) -> str:
    """The backend the mangu_ratelimit_backend gauge shows as in use."""
    shown = [b for b in ("redis", "memory") if metric(app, "mangu_ratelimit_backend", backend=b) == 1]
    assert len(shown) == 1, shown
    return shown[0]


def answered_from_memory(app: RunningApp) -> bool:
    """Whether any take was answered from memory although Redis is configured (a timeout, an
    outage or overload: each counted by reason)."""
    return any(metric(app, "mangu_ratelimit_memory_answers_total", reason=reason) > 0
               for reason in ("redis_down", "overloaded"))

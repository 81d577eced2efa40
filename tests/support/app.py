"""The real app on an unused port, in the test's own event loop, and clients for it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.netutil import bind_sockets

from mangu.app import make_app, make_server
from mangu.config import Settings, load_settings
from mangu.log import JsonFormatter
from mangu.services import Services

TEST_SECRET = "test-secret-0123456789abcdef0123456789abcdef"


def make_settings(**overrides: Any) -> Settings:
    """Settings as the server would read them from an environment of ``overrides``."""
    environ = {
        "MANGU_ENV": "test",
        "PORT": "0",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "DEBUG",
        "JWT_SECRET": TEST_SECRET,
    }
    environ.update({key: str(value) for key, value in overrides.items() if value is not None})
    for key, value in overrides.items():
        if value is None:
            environ.pop(key, None)
    return load_settings(environ)


class RunningApp:
    """Services + app + HTTP server listening on 127.0.0.1:<unused port>."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services = Services(settings)
        self.server: Any = None
        self.port = 0

    async def start(self) -> RunningApp:
        await self.services.start()
        self.app = make_app(self.settings, self.services)
        self.server = make_server(self.app, self.settings)
        sockets = bind_sockets(0, "127.0.0.1")
        self.server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop serving and close the services; a step that does not finish within
        STOP_TIMEOUT_S fails the test with the stack of every task still running."""
        if self.server is not None:
            self.server.stop()
            await _bounded(self.server.close_all_connections(), "closing the HTTP connections")
            self.server = None
        await _bounded(self.services.close(), "closing the services")

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ws_url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def fetch(self, path: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None,
                    **kwargs: Any) -> HTTPResponse:
        """A real HTTP request; never raises for an error status."""
        headers = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        client = AsyncHTTPClient(max_clients=500)
        return await client.fetch(
            self.url(path), method=method, body=body, headers=headers, raise_error=False,
            allow_nonstandard_methods=True, request_timeout=30, **kwargs,
        )


STOP_TIMEOUT_S = 60.0  # beyond the database close's own bound (DATABASE_TIMEOUT + 5 s)


async def _bounded(step: Any, what: str) -> None:
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await step
    except TimeoutError:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(limit=12, file=stacks)
        raise AssertionError(f"{what} took over {STOP_TIMEOUT_S}s; tasks:\n{stacks.getvalue()}") from None


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
                     what: str = "") -> Any:
    """Await until ``predicate()`` is true (its value is returned), without blocking the loop."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def json_body(response: HTTPResponse) -> Any:
    return json.loads(response.body)


class LogCapture(logging.Handler):
    """Every log record, formatted by the server's JSON formatter and parsed back."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def find(self, **fields: Any) -> list[dict[str, Any]]:
        return [r for r in self.records if all(r.get(k) == v for k, v in fields.items())]

    def text(self) -> str:
        return "\n".join(self.lines)

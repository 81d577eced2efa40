"""Endpoints that exist for the test suite only: with any MANGU_ENV but test they answer 404.

``/_test/slow?ms=N`` (GET or POST) answers 200 after N ms without blocking anyone (an
in-flight request for the graceful-shutdown tests); ``/_test/block?ms=N`` blocks the event loop for N ms
(what the systemd watchdog is there to catch).
"""

from __future__ import annotations

import asyncio
import logging
import time

from handlers.base import APIError, APIHandler

log = logging.getLogger("mangu.testing")

_MAX_MS = 60_000


class _TestOnlyHandler(APIHandler):
    rate_limit = None

    def prepare(self) -> None:
        if self.config.mangu_env != "test":
            raise APIError(404, message=f"no such endpoint: {self.request.method} {self.request.path}")

    def duration_ms(self) -> int:
        raw = self.get_query_argument("ms", "0")
        if not raw.isdigit() or int(raw) > _MAX_MS:
            raise APIError(400, message=f"ms: expected an integer from 0 to {_MAX_MS}")
        return int(raw)


class SlowHandler(_TestOnlyHandler):
    async def get(self) -> None:
        ms = self.duration_ms()
        log.info("slow request started", extra={"ms": ms})
        await asyncio.sleep(ms / 1000)
        self.write_json({"slept_ms": ms})

    # POST too: a proxy does not retry a non-idempotent request cut short by the server.
    post = get


class BlockLoopHandler(_TestOnlyHandler):
    def get(self) -> None:
        ms = self.duration_ms()
        log.warning("blocking the event loop", extra={"ms": ms})
        time.sleep(ms / 1000)  # deliberately blocking: nothing else on this loop runs meanwhile
        self.write_json({"blocked_ms": ms})


default_handlers = [
    (r"/_test/slow", SlowHandler),
    (r"/_test/block", BlockLoopHandler),
]

"""The Services container: builds, starts and closes the server's long-lived parts.

Handlers get it through the application settings (``self.services``), never as a global.
Building it does no I/O; ``start()`` connects, ``close()`` releases everything.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from pathlib import Path

from mangu import __version__
from mangu.auth import TokenAuthority
from mangu.config import Settings
from mangu.db import Database
from mangu.embedded_mongo import EmbeddedMongo, EmbeddedMongoError
from mangu.inflight import InFlightRequests
from mangu.metrics import Metrics
from mangu.ratelimit import RateLimiter
from mangu.realtime.hub import Hub
from mangu.store.books import BookStore
from mangu.store.messages import MessageStore
from mangu.store.users import UserStore

log = logging.getLogger("mangu.services")

STARTING, READY, DRAINING, STOPPED = "starting", "ready", "draining", "stopped"


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Services:
    """Everything the handlers use, owned in one place."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.version = __version__
        self.node_id = settings.node_id or default_node_id()
        self.metrics = Metrics(version=__version__)
        self.started_at = time.time()
        self.state = STARTING
        self.tokens = TokenAuthority(settings)
        self.limiter = RateLimiter(settings, self.metrics)
        # -- database (MongoDB, or the embedded development one) and its stores
        self.embedded_mongo = (
            EmbeddedMongo(Path(settings.data_dir) / "mongo") if settings.embedded_mongodb else None
        )
        self.db = Database(settings, self.metrics)
        self.messages = MessageStore(self.db)
        self.users = UserStore(self.db)
        self.books = BookStore(self.db)
        # -- realtime
        self.hub = Hub(settings, self.metrics, self.node_id, messages=self.messages)
        # graceful shutdown (mangu/lifecycle.py): the HTTP requests it waits for
        self.in_flight = InFlightRequests(self.metrics.http_requests_in_flight)

    @property
    def draining(self) -> bool:
        return self.state in (DRAINING, STOPPED)

    async def start(self) -> None:
        """Connect what there is to connect; never blocks on a dependency that is down."""
        await self.limiter.start()
        await self._start_database()
        self.state = READY

    async def _start_database(self) -> None:
        url: str | None = self.settings.mongodb_url
        if self.embedded_mongo is not None:
            try:
                url = await self.embedded_mongo.start()
            except (EmbeddedMongoError, OSError) as exc:
                log.error("embedded MongoDB did not start: %s", exc, extra={"error": type(exc).__name__})
                url = None
        await self.db.start(url)

    async def drain_websockets(self, drain_ms: int) -> int:
        """Close every WebSocket with a ``system:shutdown`` event and 1001, spread over
        ``drain_ms`` with jitter so that clients do not all reconnect in one burst; return
        how many were closed. Called once on shutdown, after ``state`` became draining (from
        then on new WebSocket upgrades are refused) and the listener stopped accepting.

        """
        return await self.hub.drain(drain_ms)

    async def close(self) -> None:
        """Release every connection and background task."""
        await self.limiter.close()
        self.state = STOPPED
        await self.db.close()
        if self.embedded_mongo is not None:
            await self.embedded_mongo.stop()

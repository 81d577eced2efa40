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

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mangu import __version__
from mangu.auth import TokenAuthority
from mangu.config import Settings
from mangu.db import Database
from mangu.embedded_mongo import EmbeddedMongo, EmbeddedMongoError
from mangu.health import Health
from mangu.inflight import InFlightRequests
from mangu.metrics import Metrics
from mangu.ratelimit import RateLimiter
from mangu.redis_options import HANDSHAKE_FREE
from mangu.realtime.bus import Bus
from mangu.realtime.hub import Hub
from mangu.realtime.presence import ClusterPresence, LocalPresence, Presence
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
        # -- Redis (general-purpose client; None without REDIS_URL), the bus, health
        self.redis = _redis_client(settings) if settings.redis_url else None
        self.bus = (
            Bus(self.redis, self.node_id, self.metrics, timeout=settings.redis_timeout / 1000)
            if self.redis is not None else None
        )
        # -- realtime: the hub, with presence shared through Redis when there is one
        presence: Presence = LocalPresence()
        if self.redis is not None:
            presence = ClusterPresence(self.redis, self.node_id, settings.presence_ttl, self.metrics,
                                       local_rooms=lambda: self.hub.local_rooms_by_user())
        self.hub = Hub(settings, self.metrics, self.node_id, messages=self.messages, presence=presence,
                       bus=self.bus)
        self.health = Health(self)
        # graceful shutdown (mangu/lifecycle.py): the HTTP requests it waits for
        self.in_flight = InFlightRequests(self.metrics.http_requests_in_flight)

    @property
    def draining(self) -> bool:
        return self.state in (DRAINING, STOPPED)

    @property
    def serving(self) -> bool:
        """Started and not draining."""
        return self.state == READY

    async def start(self) -> None:
        """Connect what there is to connect; never blocks on a dependency that is down."""
        await self.limiter.start()
        await self._start_database()
        if self.bus is not None:
            await self.bus.start()
        await self.hub.start()
        self.health.loop_lag.start()
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
        await self.health.close()
        await self.hub.close()  # this process's presence entries leave Redis
        if self.bus is not None:
            await self.bus.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.close()
        if self.embedded_mongo is not None:
            await self.embedded_mongo.stop()


def _redis_client(settings: Settings) -> Redis:
    """The shared Redis client: REDIS_TIMEOUT bounds every connect and reply; one immediate
    retry replaces a pooled connection that went stale (after a Redis restart)."""
    timeout = settings.redis_timeout / 1000
    assert settings.redis_url is not None
    return Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1), **HANDSHAKE_FREE,
    )

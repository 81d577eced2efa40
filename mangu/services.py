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

from mangu import __version__
from mangu.auth import TokenAuthority
from mangu.config import Settings
from mangu.metrics import Metrics
from mangu.ratelimit import RateLimiter

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

    @property
    def draining(self) -> bool:
        return self.state in (DRAINING, STOPPED)

    async def start(self) -> None:
        """Connect what there is to connect; never blocks on a dependency that is down."""
        await self.limiter.start()
        self.state = READY

    async def close(self) -> None:
        """Release every connection and background task."""
        await self.limiter.close()
        self.state = STOPPED

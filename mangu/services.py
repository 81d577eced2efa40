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
from mangu.config import Settings
from mangu.inflight import InFlightRequests
from mangu.metrics import Metrics

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
        # graceful shutdown (mangu/lifecycle.py): the HTTP requests it waits for
        self.in_flight = InFlightRequests()

    @property
    def draining(self) -> bool:
        return self.state in (DRAINING, STOPPED)

    async def start(self) -> None:
        """Connect what there is to connect; never blocks on a dependency that is down."""
        self.state = READY

    async def drain_websockets(self, drain_ms: int) -> int:
        """Close every WebSocket with a ``system:shutdown`` event and 1001, spread over
        ``drain_ms`` with jitter so that clients do not all reconnect in one burst; return
        how many were closed. Called once on shutdown, after ``state`` became draining (from
        then on new WebSocket upgrades are refused) and the listener stopped accepting.

        There is no WebSocket hub yet, so there is nothing to close.
        """
        return 0

    async def close(self) -> None:
        """Release every connection and background task."""
        self.state = STOPPED

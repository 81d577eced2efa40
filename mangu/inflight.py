"""The HTTP requests being handled right now, counted so a graceful shutdown can wait for them.

WebSocket connections are not counted here: they are drained (told to go away) instead.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


class InFlightRequests:
    """A count of requests in progress (mirrored in a gauge) and ways to wait until there are none."""

    def __init__(self, gauge: Any = None) -> None:
        self._gauge = gauge
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._idle_since = time.monotonic()

    @property
    def count(self) -> int:
        return self._count

    def begin(self) -> None:
        """One more request in flight; ``end`` it exactly once."""
        self._count += 1
        self._idle.clear()
        if self._gauge is not None:
            self._gauge.inc()

    def end(self) -> None:
        self._count -= 1
        if self._gauge is not None:
            self._gauge.dec()
        if not self._count:
            self._idle_since = time.monotonic()
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every tracked request to finish; False on timeout."""
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_quiet(self, quiet: float, timeout: float) -> bool:
        """Wait until no request has been in flight for ``quiet`` seconds in a row; False when
        requests were still in flight after ``timeout`` seconds.

        A request whose bytes arrived but that is not dispatched yet is not counted; the
        quiet period gives it the time to show up, so that closing the connections after
        this does not cut it.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not await self.wait_idle(max(0.0, deadline - time.monotonic())):
                return False
            now = time.monotonic()
            left = min(self._idle_since + quiet, deadline) - now
            if left <= 0:
                return True
            await asyncio.sleep(left)

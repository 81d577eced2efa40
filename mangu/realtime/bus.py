"""The cross-process bus: this process's one Redis pub/sub connection.

One reader task owns the subscriber connection and hands each message to the callback
subscribed to its channel. When the connection drops (or stops answering its keep-alive
PING) the reader reconnects with exponential backoff and full jitter and subscribes every
channel again; ``bus_up``, ``bus_reconnects`` and ``bus_messages`` in the metrics follow
it. Publishing goes through the shared Redis client, so it works whatever the subscriber's
state; ``send()`` queues a message for one writer task that publishes in order, in
pipelined batches (the order one process publishes in is the order every other process
delivers in). Subscriptions follow ``want()`` / ``unwant()``: one task brings Redis in line
with what is wanted, so a room joined and left in quick succession ends unsubscribed.
``probe()`` sends a message on this node's private health channel and waits for it
to come back through the reader: it proves the subscriber still receives, which a PING on
another connection cannot.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from mangu.metrics import Metrics

log = logging.getLogger("mangu.bus")

Callback = Callable[[str, bytes], Any]
"""``callback(channel, data)``: called on the reader task, so it must not block; it may
schedule work with ``asyncio.create_task``. An exception it raises is logged and dropped."""


class BusUnavailable(Exception):
    """Redis cannot be reached for this bus operation."""


class Bus:
    """Publish to and subscribe on Redis channels, across every process of the cluster."""

    def __init__(
        self,
        redis: Redis,
        node_id: str,
        metrics: Metrics,
        timeout: float,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        keepalive: float = 5.0,
        outbox_max: int = 100_000,
    ) -> None:
        """``timeout``: seconds an answer may take (a keep-alive PING, a probe).
        ``keepalive``: seconds of silence on the subscriber connection before it is PINGed."""
        self._redis = redis
        self._metrics = metrics
        self._timeout = timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._keepalive = keepalive
        self.health_channel = f"mangu:health:{node_id}"
        self._callbacks: dict[str, Callback] = {self.health_channel: self._probe_returned}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task | None = None
        self._probes: dict[bytes, asyncio.Future] = {}
        self.connected = False
        self._subscribed: set[str] = set()
        self._changed = asyncio.Event()
        self._in_sync = asyncio.Event()
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._outbox_max = outbox_max
        self._outbox_ready = asyncio.Event()
        self._outbox_failing = False
        self._connect_callbacks: list[Callable[[], Awaitable[Any]]] = []
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Start the reader; returns at once (it connects, and keeps reconnecting, on its own)."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._run(), name="mangu-bus-reader")
            self._tasks = [
                asyncio.create_task(self._sync_subscriptions(), name="mangu-bus-subscriptions"),
                asyncio.create_task(self._write(), name="mangu-bus-writer"),
            ]

    async def close(self) -> None:
        """Publish what is queued (briefly), then stop."""
        if self._outbox and self.connected:
            deadline = asyncio.get_running_loop().time() + self._timeout
            while self._outbox and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        reader, self._reader = self._reader, None
        for task in [reader, *self._tasks]:
            if task is None:
                continue
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        await self._drop_connection()
        self._set_connected(False)

    def on_connect(self, callback: Callable[[], Awaitable[Any]]) -> None:
        """Run ``callback()`` after every (re)connection of the subscriber."""
        self._connect_callbacks.append(callback)

    # -- the API

    async def publish(self, channel: str, data: bytes | str) -> int:
        """Send ``data`` on ``channel``; the number of subscribers (over all processes) that got it."""
        try:
            receivers = await self._redis.publish(channel, data)
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"publish failed: {type(exc).__name__}") from exc
        self._metrics.bus_messages.labels(direction="out").inc()
        return receivers

    def send(self, channel: str, data: bytes) -> None:
        """Queue ``data`` for ``channel``; published in order by the writer task. While Redis
        is down (or the queue is full) messages are dropped and counted: other processes
        miss them, this one has delivered them already, and stored messages can be replayed."""
        if len(self._outbox) >= self._outbox_max:
            self._metrics.bus_dropped.inc()
            return
        self._outbox.append((channel, data))
        self._outbox_ready.set()

    def want(self, channel: str, callback: Callback) -> None:
        """Deliver every message on ``channel`` to ``callback`` (replacing any earlier one),
        as soon as the subscription is made and after every reconnect."""
        if self._callbacks.get(channel) is not callback:
            self._callbacks[channel] = callback
            self._changed.set()

    def unwant(self, channel: str) -> None:
        if channel != self.health_channel and self._callbacks.pop(channel, None) is not None:
            self._changed.set()

    async def subscribe(self, channel: str, callback: Callback) -> None:
        """``want`` and wait until Redis has the subscription (or the bus is down)."""
        self.want(channel, callback)
        await self._settled()

    async def unsubscribe(self, channel: str) -> None:
        self.unwant(channel)
        await self._settled()

    async def _settled(self) -> None:
        while self.connected and (self._changed.is_set() or not self._in_sync.is_set()):
            try:
                await asyncio.wait_for(self._in_sync.wait(), self._timeout)
            except TimeoutError:
                return
            if self._changed.is_set():
                await asyncio.sleep(0)

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._callbacks)

    async def probe(self, timeout: float) -> float:
        """Seconds for a message on this node's health channel to come back through the
        subscriber. BusUnavailable when the subscriber is disconnected or Redis refuses the
        publish; TimeoutError when the message does not come back within ``timeout``."""
        if not self.connected:
            raise BusUnavailable("subscriber not connected")
        token = secrets.token_hex(8).encode()
        returned = asyncio.get_running_loop().create_future()
        self._probes[token] = returned
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await self.publish(self.health_channel, token)
                await returned
        finally:
            self._probes.pop(token, None)
        return time.perf_counter() - started

    def _probe_returned(self, channel: str, data: bytes) -> None:
        returned = self._probes.get(data)
        if returned is not None and not returned.done():
            returned.set_result(None)

    # -- the subscription keeper and the writer

    async def _sync_subscriptions(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            self._in_sync.clear()
            pubsub = self._pubsub
            if self.connected and pubsub is not None:
                wanted = set(self._callbacks)
                extra, missing = self._subscribed - wanted, wanted - self._subscribed
                try:
                    async with asyncio.timeout(self._timeout):
                        if missing:
                            await pubsub.subscribe(*missing)
                        if extra:
                            await pubsub.unsubscribe(*extra)
                    self._subscribed = wanted
                except (RedisError, OSError, TimeoutError):
                    pass  # the reader sees the broken connection; a reconnect subscribes what is wanted
            if not self._changed.is_set():
                self._in_sync.set()

    async def _write(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), 512))]
                pipe = self._redis.pipeline(transaction=False)
                for channel, data in batch:
                    pipe.publish(channel, data)
                try:
                    await pipe.execute()
                except (RedisError, OSError) as exc:
                    self._metrics.bus_dropped.inc(len(batch))
                    if not self._outbox_failing:
                        self._outbox_failing = True
                        log.warning("bus: publishing failed; messages for other processes are dropped",
                                    extra={"error": type(exc).__name__})
                    continue
                if self._outbox_failing:
                    self._outbox_failing = False
                    log.info("bus: publishing again")
                self._metrics.bus_messages.labels(direction="out").inc(len(batch))

    # -- the reader

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._connect()
                if failures:
                    log.info("bus reconnected", extra={"attempts": failures})
                failures = 0
                await self._read()
            except (RedisError, OSError) as exc:
                if self.connected or failures == 0:
                    log.warning("bus disconnected; reconnecting", extra={"error": type(exc).__name__})
            self._set_connected(False)
            await self._drop_connection()
            failures += 1
            self._metrics.bus_reconnects.inc()
            # Full jitter: processes that lost Redis together do not come back in step.
            ceiling = min(self._backoff_max, self._backoff_initial * 2 ** (failures - 1))
            await asyncio.sleep(random.uniform(0, ceiling))

    async def _connect(self) -> None:
        self._pubsub = self._redis.pubsub()
        subscribed: set[str] = set()
        # Channels subscribed while this runs are picked up by the next pass, before the
        # bus counts as connected (subscribe() sends nothing until then).
        while wanted := set(self._callbacks) - subscribed:
            async with asyncio.timeout(self._timeout):
                await self._pubsub.subscribe(*wanted)
            subscribed |= wanted
        self._subscribed = subscribed
        self._set_connected(True)
        self._changed.set()  # anything unwanted meanwhile is dropped by the keeper
        for callback in self._connect_callbacks:
            task = asyncio.ensure_future(callback())
            task.add_done_callback(_log_callback_failure)

    async def _read(self) -> None:
        assert self._pubsub is not None
        pubsub = self._pubsub
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        pinged_at: float | None = None
        while True:
            # Wake when the keep-alive PING is due, or its answer overdue.
            due = (pinged_at + self._timeout) if pinged_at is not None else (last_heard + self._keepalive)
            wait = max(due - loop.time(), 0.01)
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            now = loop.time()
            if message is not None:
                last_heard, pinged_at = now, None
                if message["type"] == "message":
                    self._deliver(message["channel"], message["data"])
            elif pinged_at is not None:
                if now - pinged_at >= self._timeout:
                    raise ConnectionError("no answer to the keep-alive PING")
            elif now - last_heard >= self._keepalive:
                await pubsub.ping()
                pinged_at = now

    def _deliver(self, raw_channel: bytes | str, data: bytes) -> None:
        channel = raw_channel.decode() if isinstance(raw_channel, bytes) else raw_channel
        self._metrics.bus_messages.labels(direction="in").inc()
        callback = self._callbacks.get(channel)
        if callback is None:
            return  # unsubscribed meanwhile
        try:
            callback(channel, data)
        except Exception:
            log.exception("bus callback failed", extra={"channel": channel})

    async def _drop_connection(self) -> None:
        self._subscribed = set()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except (RedisError, OSError):
                pass

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        self._metrics.bus_up.set(1 if connected else 0)
        self._metrics.redis_up.set(1 if connected else 0)


def _log_callback_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("bus reconnect callback failed", exc_info=task.exception())

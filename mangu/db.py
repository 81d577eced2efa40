"""MongoDB through one pooled PyMongo Async client: availability, command timing and the
slow-query log, pool statistics, transactions and a bounded health ping.

Stores run every call inside ``Database.operation()``: it refuses at once with
``DatabaseUnavailable`` while the driver's monitoring knows MongoDB is down (rather than
waiting ``DATABASE_TIMEOUT`` for a server), and turns the driver's connection and timeout
errors into that same exception. Nothing here blocks start-up on MongoDB: indexes are
created in the background as soon as a server answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pymongo
import pymongo.pool_shared
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConfigurationError, ConnectionFailure, OperationFailure, PyMongoError

from mangu import __version__
from mangu.config import Settings
from mangu.metrics import Metrics

log = logging.getLogger("mangu.db")

T = TypeVar("T")

_SETUP_RETRY_MAX_S = 30.0
_CLOSE_WAIT_S = 2.0
# The driver's close ends its sessions on the server, which needs a server: with MongoDB
# down its server selection would wait DATABASE_TIMEOUT. It gets this long (the server ends
# abandoned sessions by itself after 30 minutes).
_END_SESSIONS_S = 2.0
# Then it waits for its monitor tasks; in one CI run that wait had not ended after 300 s.
# Shutdown must end, so the whole close is bounded: DATABASE_TIMEOUT and this much more.
_CLIENT_CLOSE_MARGIN_S = 5.0
_PENDING_COMMANDS_MAX = 10_000  # started commands awaiting their outcome (bounds a leak)
_ILLEGAL_OPERATION = 20  # server code for "transactions need a replica set or mongos"


class DatabaseUnavailable(Exception):
    """MongoDB cannot be reached now (down, unreachable or too slow); retry later."""


class TransactionsUnsupported(Exception):
    """The MongoDB deployment does not support transactions (a standalone server)."""


class _CommandTimer(monitoring.CommandListener):
    """Every command's duration into the histogram; slow ones logged with the request's
    correlation id. Only names are logged (command, database, collection), never documents
    or filter values."""

    def __init__(self, metrics: Metrics, slow_ms: int, log_all: bool) -> None:
        self._metrics = metrics
        self._slow_s = slow_ms / 1000
        self._log_all = log_all
        self._collections: dict[tuple[int, Any], str | None] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if len(self._collections) >= _PENDING_COMMANDS_MAX:
            self._collections.clear()
        target = event.command.get(event.command_name)
        if event.command_name == "getMore":
            target = event.command.get("collection")
        self._collections[(event.request_id, event.connection_id)] = target if isinstance(target, str) else None

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._finished(event, failed=False)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._finished(event, failed=True)

    def _finished(self, event: monitoring.CommandSucceededEvent | monitoring.CommandFailedEvent, failed: bool) -> None:
        # The driver calls this in the task that issued the command, so the request's
        # correlation id is in the logging context of the lines written here.
        collection = self._collections.pop((event.request_id, event.connection_id), None)
        command = self._metrics.labelled_command(event.command_name)
        seconds = event.duration_micros / 1_000_000
        self._metrics.db_command_duration.labels(command).observe(seconds)
        if failed:
            self._metrics.db_command_failures.labels(command).inc()
        slow = seconds >= self._slow_s
        if not (slow or self._log_all):
            return
        fields = {
            "command": event.command_name,
            "database": event.database_name,
            "collection": collection,
            "duration_ms": round(seconds * 1000, 3),
            "failed": failed,
        }
        if slow:
            self._metrics.db_slow_queries.labels(command).inc()
            log.warning("slow_query", extra=fields)
        else:
            log.debug("db_command", extra=fields)


class _PoolWatch(monitoring.ConnectionPoolListener):
    """Connection counts by state, summed over the pools of every server; the gauges read
    them at scrape time, so a check-out costs no metric update."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.open = self.in_use = self.waiting = 0
        self.created = self.closed = self.peak_open = 0
        self.checkouts = 0
        self.wait_total_s = self.wait_max_s = 0.0
        gauge = metrics.db_pool_connections
        gauge.labels(state="open").set_function(lambda: self.open)
        gauge.labels(state="in_use").set_function(lambda: self.in_use)
        gauge.labels(state="idle").set_function(lambda: self.idle)
        gauge.labels(state="waiting").set_function(lambda: self.waiting)

    @property
    def idle(self) -> int:
        return max(self.open - self.in_use, 0)

    def connection_created(self, event: monitoring.ConnectionCreatedEvent) -> None:
        self.open += 1
        self.created += 1
        self.peak_open = max(self.peak_open, self.open)
        self._metrics.db_pool_connections_created.inc()

    def connection_closed(self, event: monitoring.ConnectionClosedEvent) -> None:
        self.open -= 1
        self.closed += 1
        self._metrics.db_pool_connections_closed.inc()

    def connection_check_out_started(self, event: monitoring.ConnectionCheckOutStartedEvent) -> None:
        self.waiting += 1

    def connection_check_out_failed(self, event: monitoring.ConnectionCheckOutFailedEvent) -> None:
        self.waiting -= 1

    def connection_checked_out(self, event: monitoring.ConnectionCheckedOutEvent) -> None:
        self.waiting -= 1
        self.in_use += 1
        wait = event.duration or 0.0
        self.checkouts += 1
        self.wait_total_s += wait
        self.wait_max_s = max(self.wait_max_s, wait)
        self._metrics.db_pool_checkout_wait.observe(wait)

    def connection_checked_in(self, event: monitoring.ConnectionCheckedInEvent) -> None:
        self.in_use -= 1

    # Pool life-cycle events change no count: each connection reports its own close.
    def pool_created(self, event: monitoring.PoolCreatedEvent) -> None:
        pass

    def pool_ready(self, event: monitoring.PoolReadyEvent) -> None:
        pass

    def pool_cleared(self, event: monitoring.PoolClearedEvent) -> None:
        pass

    def pool_closed(self, event: monitoring.PoolClosedEvent) -> None:
        pass

    def connection_ready(self, event: monitoring.ConnectionReadyEvent) -> None:
        pass


class _Availability(monitoring.TopologyListener, monitoring.ServerHeartbeatListener):
    """Logs and exports each change between "a server is selectable" and "none is", and
    wakes ``Database.start`` at the driver's first answer from a server."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self.up: bool | None = None
        self.closing = False
        self.first_check = asyncio.Event()

    def description_changed(self, event: monitoring.TopologyDescriptionChangedEvent) -> None:
        description = event.new_description
        up = description.has_writable_server()
        if not up and not any(sd.error for sd in description.server_descriptions().values()):
            return  # not checked yet: neither up nor down
        if up == self.up or self.closing:  # closing the client is no outage
            return
        self.up = up
        self._database.metrics.db_up.set(1 if up else 0)
        if up:
            log.info("database available", extra={"topology": event.new_description.topology_type_name})
        else:
            log.warning("database unavailable: store calls are refused until it answers again",
                        extra={"topology": event.new_description.topology_type_name})

    def succeeded(self, event: monitoring.ServerHeartbeatSucceededEvent) -> None:
        self.first_check.set()

    def failed(self, event: monitoring.ServerHeartbeatFailedEvent) -> None:
        self.first_check.set()

    def started(self, event: monitoring.ServerHeartbeatStartedEvent) -> None:
        pass

    def opened(self, event: monitoring.TopologyOpenedEvent) -> None:
        pass

    def closed(self, event: monitoring.TopologyClosedEvent) -> None:
        pass


# Connects whose caller was cancelled, left to end by their own bound (_close_when_connected).
_ORPHANED_CONNECTS: set[asyncio.Future[Any]] = set()


def _close_when_connected() -> None:
    """Make the driver close a socket it was connecting when its caller is cancelled.

    PyMongo 4.20's ``pool_shared._async_create_connection`` closes the socket it connects on
    a timeout or a socket error, not on a cancellation: a monitor stopped by ``close()`` while
    it reconnects, or an operation cancelled with its request while the pool opens a
    connection, leaves the socket to the collector ("ResourceWarning: unclosed socket"),
    open until the collector finds it (upstream: PYTHON-5867). Here the connect runs in a
    task of its own: a cancelled caller gets its CancelledError at once, as before, and the
    connect goes on to its end, bounded by the driver's connect timeout, after which the
    socket it made is closed. Applied to the 4.20 releases (requirements.txt pins one):
    ``tests/test_db.py`` checks the behaviour, so an upgrade that still needs it fails there.
    """
    create = getattr(pymongo.pool_shared, "_async_create_connection", None)
    if create is None or pymongo.version_tuple[:2] != (4, 20) or getattr(create, "closes_when_connected", False):
        return

    async def create_connection(address: Any, options: Any) -> Any:
        connecting = asyncio.ensure_future(create(address, options))
        try:
            return await asyncio.shield(connecting)
        except asyncio.CancelledError:
            _ORPHANED_CONNECTS.add(connecting)
            connecting.add_done_callback(_close_orphaned_connect)  # soon, if it has ended already
            raise

    create_connection.closes_when_connected = True  # type: ignore[attr-defined]
    pymongo.pool_shared._async_create_connection = create_connection


def _close_orphaned_connect(connecting: asyncio.Future[Any]) -> None:
    _ORPHANED_CONNECTS.discard(connecting)
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().close()


_close_when_connected()


class Database:
    """The server's MongoDB: one client and pool, shared by every store.

    Build it with no I/O; ``await start(url)`` connects in the background; ``close()``
    releases the pool. Stores register their index set-up with ``on_setup``.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._client: AsyncMongoClient | None = None
        self._db: AsyncDatabase | None = None
        self._commands = _CommandTimer(metrics, settings.slow_query_threshold, settings.enable_query_logging)
        self._pool = _PoolWatch(metrics)
        self._availability = _Availability(self)
        self._setups: list[Callable[[], Awaitable[None]]] = []
        # Set once the first set-up attempt has ended, well or not: calls wait for that
        # much, never for the retries of a set-up that keeps failing.
        self._setup_tried = asyncio.Event()
        self._setup_task: asyncio.Task | None = None
        self._setting_up = False
        self._not_started = "not started"

    # -- life cycle

    def on_setup(self, setup: Callable[[], Awaitable[None]]) -> None:
        """Run ``setup()`` (idempotent: index creation) as soon as MongoDB answers; store
        calls wait for its first attempt, and it is retried until it succeeds."""
        self._setups.append(setup)

    async def start(self, url: str | None) -> None:
        """Create the client and start monitoring; returns without waiting for MongoDB
        (beyond the driver's first look, at most one second, so a healthy database is
        reported up from the first request). ``url`` None: no database could be started
        (the embedded one failed); every call is refused with the reason logged already."""
        if url is None:
            self._not_started = "no database: the embedded MongoDB did not start"
            return
        s = self.settings
        self._client = AsyncMongoClient(
            url,
            appname=f"mangu/{__version__}",
            minPoolSize=s.database_pool_min,
            maxPoolSize=s.database_pool_max,
            maxIdleTimeMS=s.database_idle_timeout or None,
            connectTimeoutMS=s.database_timeout,
            serverSelectionTimeoutMS=s.database_timeout,
            timeoutMS=s.database_statement_timeout,
            heartbeatFrequencyMS=s.database_heartbeat_interval,
            retryReads=True,
            retryWrites=True,
            tz_aware=True,
            event_listeners=[self._commands, self._pool, self._availability],
        )
        self._db = self._client[s.mongodb_db]
        self.metrics.db_up.set(0)
        await self._client.aconnect()
        self._setup_task = asyncio.create_task(self._run_setups(), name="mangu-db-setup")
        try:
            await asyncio.wait_for(self._availability.first_check.wait(), min(1.0, s.database_timeout / 1000))
        except TimeoutError:
            log.warning("database did not answer at start-up; serving without it until it does")

    async def close(self) -> None:
        task, self._setup_task = self._setup_task, None
        if task is not None:
            if self._setting_up:
                # Let a set-up in progress finish (briefly) rather than cut it off mid-command.
                await asyncio.wait([task], timeout=_CLOSE_WAIT_S)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client, self._db = self._client, None, None
        self._not_started = "closed"
        if client is not None:
            self._availability.closing = True
            bound = self.settings.database_timeout / 1000 + _CLIENT_CLOSE_MARGIN_S
            try:
                async with asyncio.timeout(bound):
                    with pymongo.timeout(_END_SESSIONS_S):  # bounds the driver's own server selections
                        await client.close()
            except TimeoutError:
                log.warning("database client did not finish closing within %.1f s; going on without waiting",
                            bound, extra={"timeout_ms": round(bound * 1000)})
        if _ORPHANED_CONNECTS:
            # Connects the close cancelled (its monitors') end by their own bound and close
            # their sockets then (_close_when_connected): briefly, let them, before the loop goes.
            await asyncio.wait(list(_ORPHANED_CONNECTS), timeout=_CLOSE_WAIT_S)

    async def _run_setups(self) -> None:
        """Run every registered set-up once MongoDB answers; retry with backoff on failure."""
        interval = self.settings.database_heartbeat_interval / 1000
        delay = interval
        while True:
            if not self.available:
                # Not before a server is seen: the set-up would wait out server selection.
                await asyncio.sleep(min(interval, 0.1))
                continue
            self._setting_up = True
            try:
                for setup in self._setups:
                    await setup()
            except PyMongoError as exc:
                log.warning("database set-up failed; retrying in %.1fs", delay,
                            extra={"error": type(exc).__name__, "retry_in_s": delay})
            except Exception:
                log.exception("database set-up failed; retrying in %.1fs", delay, extra={"retry_in_s": delay})
            else:
                log.info("database set up", extra={"database": self.settings.mongodb_db})
                return
            finally:
                self._setting_up = False
                self._setup_tried.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _SETUP_RETRY_MAX_S)

    # -- state

    @property
    def available(self) -> bool:
        """True while the driver's monitoring says a server can take writes (no I/O)."""
        return self._client is not None and self._client.topology_description.has_writable_server()

    @property
    def known_down(self) -> bool:
        """True when the driver has checked and found no server (not merely "not yet checked")."""
        if self._client is None:
            return True
        description = self._client.topology_description
        if description.has_writable_server():
            return False
        return any(sd.error is not None for sd in description.server_descriptions().values())

    # -- operations

    @contextlib.asynccontextmanager
    async def operation(self) -> AsyncIterator[AsyncDatabase]:
        """The database handle for one store call; driver outages and timeouts come out as
        ``DatabaseUnavailable``. Refuses at once while MongoDB is known to be down, and
        waits (bounded) for the first index set-up on a database just reached."""
        self._refuse_if_down()
        if not self._setup_tried.is_set():
            await self._await_setup()
        assert self._db is not None
        try:
            yield self._db
        except ConnectionFailure as exc:
            raise DatabaseUnavailable(f"MongoDB unreachable ({type(exc).__name__})") from exc
        except PyMongoError as exc:
            if exc.timeout:
                raise DatabaseUnavailable(f"MongoDB timed out ({type(exc).__name__})") from exc
            raise

    def collection(self, name: str) -> AsyncCollection:
        """A collection of the server's database (for use inside ``operation()`` or a transaction)."""
        if self._db is None:
            raise DatabaseUnavailable(f"MongoDB {self._not_started}")
        return self._db[name]

    def _refuse_if_down(self) -> None:
        if self._db is None or self.known_down:
            self.metrics.db_calls_refused.inc()
            raise DatabaseUnavailable("MongoDB is down" if self._db is not None else f"MongoDB {self._not_started}")

    async def _await_setup(self) -> None:
        deadline = time.monotonic() + self.settings.database_statement_timeout / 1000
        while not self._setup_tried.is_set():
            self._refuse_if_down()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DatabaseUnavailable("MongoDB set-up not finished in time")
            try:
                # Short waits, so an outage found meanwhile is refused promptly.
                await asyncio.wait_for(self._setup_tried.wait(), min(remaining, 0.1))
            except TimeoutError:
                pass

    async def transaction(self, callback: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
        """Run ``callback(session)`` in a transaction and return its result. Transient errors
        are retried (the driver's ``with_transaction``); any exception aborts the
        transaction and is re-raised. ``TransactionsUnsupported`` on a standalone server."""
        async with self.operation():
            assert self._client is not None
            try:
                async with self._client.start_session() as session:
                    return await session.with_transaction(callback)
            except ConfigurationError as exc:
                raise TransactionsUnsupported(f"MongoDB does not support sessions: {exc}") from exc
            except OperationFailure as exc:
                if exc.code == _ILLEGAL_OPERATION and "transaction" in str(exc).lower():
                    raise TransactionsUnsupported(
                        "MongoDB does not support transactions here: they need a replica set or a sharded cluster"
                    ) from exc
                raise

    # -- observability

    async def health(self, timeout: float) -> dict[str, Any]:
        """A ping bounded by ``timeout`` seconds: {status: pass|fail, latency_ms, message}.
        Never raises and never waits longer than ``timeout``; the message names no host."""
        started = time.perf_counter()

        def result(status: str, message: str) -> dict[str, Any]:
            return {"status": status, "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                    "message": message}

        if self._client is None:
            return result("fail", f"MongoDB {self._not_started}")
        if self.known_down:
            return result("fail", "MongoDB unreachable (the driver's last check failed)")
        try:
            with pymongo.timeout(timeout):
                await self._client.admin.command("ping")
        except PyMongoError as exc:
            reason = "timed out" if exc.timeout else "unreachable"
            return result("fail", f"ping {reason} ({type(exc).__name__})")
        return result("pass", "ping ok")

    def pool_stats(self) -> dict[str, Any]:
        """Connection counts summed over every server's pool, and check-out wait times."""
        pool = self._pool
        return {
            "open": pool.open,
            "in_use": pool.in_use,
            "idle": pool.idle,
            "waiting": pool.waiting,
            "created": pool.created,
            "closed": pool.closed,
            "peak_open": pool.peak_open,
            "max_size": self.settings.database_pool_max,
            "min_size": self.settings.database_pool_min,
            "checkouts": pool.checkouts,
            "checkout_wait_ms_avg": round(pool.wait_total_s / pool.checkouts * 1000, 3) if pool.checkouts else 0.0,
            "checkout_wait_ms_max": round(pool.wait_max_s * 1000, 3),
        }

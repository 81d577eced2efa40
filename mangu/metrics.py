"""Every Prometheus metric of the server, in one place.

Each ``Services`` owns one ``Metrics`` with its own registry, so several apps can live in one
process (tests) without colliding. Names follow ``mangu_<noun>_<verb>_<unit>``; label values
are bounded: routes are templates, commands and events come from fixed lists.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

NAMESPACE = "mangu"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Database commands worth their own label value; anything else is "other".
DB_COMMANDS = frozenset(
    {
        "find", "insert", "update", "delete", "findAndModify", "aggregate", "count", "distinct",
        "getMore", "killCursors", "createIndexes", "listIndexes", "ping", "hello", "isMaster",
        "commitTransaction", "abortTransaction", "endSessions", "drop", "listCollections",
        "bulkWrite", "create", "dropDatabase", "dbStats", "serverStatus",
    }
)

POOL_STATES = ("open", "in_use", "idle", "waiting")
RATE_LIMIT_BACKENDS = ("redis", "memory")
RATE_LIMIT_MEMORY_REASONS = ("redis_down", "overloaded")
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Tally:
    """One labelled series of a ``TallyCounter``: ``tally.value += 1`` is all a count costs."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class TallyCounter(Collector):
    """A labelled counter for the request path: each series a plain number (``Tally``), read at
    each scrape, where a ``Counter`` takes a lock and three method calls per increment. It is
    exposed as a ``Counter`` is (``<name>_total``), without the ``_created`` series. Counted
    from the event loop's thread only."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...],
                 registry: CollectorRegistry) -> None:
        self._name = f"{NAMESPACE}_{name}"
        self._documentation = documentation
        self._labelnames = labelnames
        self._tallies: dict[tuple[str, ...], Tally] = {}
        registry.register(self)

    def labels(self, *values: str) -> Tally:
        """The series of these label values (created at 0 on first use)."""
        if len(values) != len(self._labelnames):
            raise ValueError(f"expected label values for {self._labelnames}, got {values}")
        tally = self._tallies.get(values)
        if tally is None:
            tally = self._tallies[values] = Tally()
        return tally

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, tally in list(self._tallies.items()):
            family.add_metric(values, tally.value)
        return [family]


class Metrics:
    """The server's metrics, registered on one registry."""

    def __init__(self, version: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, namespace=NAMESPACE, registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, namespace=NAMESPACE, registry=r)

        def histogram(name: str, doc: str, labels: tuple[str, ...] = (), buckets=_LATENCY_BUCKETS) -> Histogram:
            return Histogram(name, doc, labels, namespace=NAMESPACE, registry=r, buckets=buckets)

        # build
        self.build_info = gauge("build_info", "Build information; the value is always 1.", ("version",))
        self.build_info.labels(version=version).set(1)

        # HTTP
        self.http_requests = counter(
            "http_requests", "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
        )
        self.http_request_duration = histogram(
            "http_request_duration_seconds", "HTTP request duration, by method and route template.",
            ("method", "route"),
        )
        self.http_requests_in_flight = gauge("http_requests_in_flight", "HTTP requests being handled now.")

        # WebSocket
        self.ws_connections = gauge("websocket_connections", "Open WebSocket connections.")
        self.ws_connections_opened = counter("websocket_connections_opened", "WebSocket connections accepted.")
        self.ws_connections_closed = counter(
            "websocket_connections_closed", "WebSocket connections closed, by close code.", ("code",)
        )
        self.ws_messages = counter(
            "websocket_messages", "WebSocket frames, by direction (in/out) and event.", ("direction", "event")
        )
        self.ws_frames_dropped = counter(
            "websocket_frames_dropped", "Outgoing frames dropped, by reason.", ("reason",)
        )
        self.ws_slow_consumers = counter(
            "websocket_slow_consumers", "Connections closed with 1013 because their send queue overflowed."
        )
        self.ws_auth_failures = counter(
            "websocket_auth_failures", "WebSocket authentication failures, by reason.", ("reason",)
        )
        self.ws_delivery_latency = histogram(
            "websocket_fanout_duration_seconds", "Time to hand one room message to every local member."
        )
        self.users_online = gauge("users_online", "Distinct users with a connection to this process.")

        # cross-process bus
        self.bus_messages = counter(
            "bus_messages", "Messages through the Redis bus, by direction (in/out).", ("direction",)
        )
        self.bus_up = gauge("bus_up", "1 while the Redis bus subscriber is connected.")
        self.bus_reconnects = counter("bus_reconnects", "Redis bus reconnect attempts.")
        self.bus_dropped = counter(
            "bus_messages_dropped", "Messages for other processes dropped (Redis down or the send queue full)."
        )
        self.presence_errors = counter(
            "presence_errors", "Presence reads and writes that Redis did not answer (served from this process)."
        )

        # rate limiting
        self.ratelimit_decisions = TallyCounter(
            "ratelimit_decisions", "Rate-limit decisions, by policy and outcome (allowed/limited).",
            ("policy", "outcome"), r,
        )
        self.ratelimit_backend = gauge(
            "ratelimit_backend", "1 for the rate-limit backend in use (redis or memory).", ("backend",)
        )
        self.ratelimit_backend_transitions = counter(
            "ratelimit_backend_transitions", "Switches of the rate-limit backend, by the backend switched to.",
            ("backend",),
        )
        for backend in RATE_LIMIT_BACKENDS:
            self.ratelimit_backend.labels(backend=backend)
            self.ratelimit_backend_transitions.labels(backend=backend)

        # rate limiting: the limiter's own working (memory store, failover, coalesced Redis calls)
        self.ratelimit_memory_buckets = gauge("ratelimit_memory_buckets",
                                              "Buckets held by the in-memory rate-limit store.")
        self.ratelimit_memory_evictions = counter(
            "ratelimit_memory_evictions", "In-memory buckets dropped because the store was full (least recently used)."
        )
        self.ratelimit_memory_answers = counter(
            "ratelimit_memory_answers",
            "Decisions answered from memory although Redis is configured, by reason (redis_down/overloaded).",
            ("reason",),
        )
        for reason in RATE_LIMIT_MEMORY_REASONS:
            self.ratelimit_memory_answers.labels(reason=reason)
        self.ratelimit_redis_batch_size = histogram(
            "ratelimit_redis_batch_size", "Requests decided by one coalesced EVALSHA.", buckets=_BATCH_BUCKETS
        )

        # database
        self.db_command_duration = histogram(
            "db_command_duration_seconds", "MongoDB command duration, by command.", ("command",)
        )
        self.db_command_failures = counter("db_command_failures", "MongoDB commands that failed, by command.",
                                           ("command",))
        self.db_slow_queries = counter("db_slow_queries", "MongoDB commands slower than the threshold.", ("command",))
        self.db_pool_connections = gauge("db_pool_connections", "MongoDB pool connections, by state.", ("state",))
        for state in POOL_STATES:
            self.db_pool_connections.labels(state=state)
        self.db_pool_connections_created = counter("db_pool_connections_created", "MongoDB connections opened.")
        self.db_pool_connections_closed = counter("db_pool_connections_closed", "MongoDB connections closed.")
        self.db_pool_checkout_wait = histogram(
            "db_pool_checkout_wait_seconds", "Time spent waiting to check out a pooled connection."
        )
        self.db_up = gauge("db_up", "1 while MongoDB answers.")

        # Redis and the process
        self.redis_up = gauge("redis_up", "1 while Redis answers (0 when down or not configured).")
        self.event_loop_lag = gauge("event_loop_lag_seconds", "Event-loop lag, p99 over the last minute.")
        self.health_status = gauge(
            "health_check_status", "Last deep-health result per check: 1 pass, 0.5 warn, 0 fail.", ("check",)
        )

        # -- database layer: calls refused without reaching MongoDB (a degraded mode)
        self.db_calls_refused = counter(
            "db_calls_refused", "Database calls refused at once because MongoDB was known to be down."
        )

        # systemd (mangu/lifecycle.py)
        self.systemd_notify_failures = counter(
            "systemd_notify_failures", "systemd notifications (READY, STATUS, WATCHDOG, ...) that could not be sent."
        )

    def labelled_command(self, command: str) -> str:
        return command if command in DB_COMMANDS else "other"

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (OpenMetrics when the Accept header asks for it) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

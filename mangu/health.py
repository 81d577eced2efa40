"""Health: the deep check (database, Redis, pub/sub, memory, disk, event-loop lag, WebSocket
connections), its aggregation into one status, readiness, and the event-loop lag monitor.

Every check runs concurrently under its own timeout and is timed. The checks' results are
kept for ``HEALTH_CACHE_MS``; concurrent requests share one evaluation, and once a first
answer exists, requests after the window get it while a new evaluation runs (stale while
revalidating), so a flood of health requests costs MongoDB and Redis one ping per window
and never waits on them. Messages name no host, URL or credential: only what failed and how.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from redis.exceptions import RedisError

from mangu import clock
from mangu.metrics import Metrics
from mangu.realtime.bus import BusUnavailable

if TYPE_CHECKING:
    from mangu.services import Services

log = logging.getLogger("mangu.health")

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
HEALTHY, DEGRADED, UNHEALTHY, UNAVAILABLE = "healthy", "degraded", "unhealthy", "unavailable"
_STATUS_VALUE = {PASS: 1.0, WARN: 0.5, FAIL: 0.0}
_IETF_STATUS = {HEALTHY: PASS, DEGRADED: WARN, UNHEALTHY: FAIL, UNAVAILABLE: FAIL}
_MB = 1024 * 1024
# How long the driver may overrun a ping's own bound (pymongo.timeout): it waits for a server
# in half-second steps. Health.close waits at most that much longer for a ping in flight.
_DRIVER_OVERRUN_S = 0.6
_CLOSE_WAIT_MAX_S = 2.0


@dataclass(frozen=True)
class Outcome:
    """What one check found."""

    status: str
    message: str
    observed: float | None = None
    unit: str | None = None


@dataclass(frozen=True)
class Check:
    """A named check: ``critical`` ones failing make the server unhealthy; ``component``
    and ``measure`` name it in the IETF format (``database:responseTime``)."""

    name: str
    critical: bool
    component: str
    measure: str
    run: Callable[[], Awaitable[Outcome]]


@dataclass(frozen=True)
class CheckResult:
    check: Check
    outcome: Outcome
    latency_ms: float

    def as_dict(self) -> dict[str, Any]:
        o = self.outcome
        return {"status": o.status, "critical": self.check.critical, "observed": o.observed, "unit": o.unit,
                "latency_ms": self.latency_ms, "message": o.message}


class LoopLagMonitor:
    """Measures event-loop lag all the time: a task sleeps ``interval`` and records how late
    it woke. ``p99()`` is over the last ``window`` seconds; the gauge reads it at scrape time."""

    def __init__(self, metrics: Metrics, interval: float = 0.1, window: float = 60.0) -> None:
        self._interval = interval
        self._samples: collections.deque[float] = collections.deque(maxlen=int(window / interval))
        self._task: asyncio.Task | None = None
        metrics.event_loop_lag.set_function(self.p99)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mangu-loop-lag")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self._interval
            await asyncio.sleep(self._interval)
            self._samples.append(max(0.0, loop.time() - expected))

    def p99(self) -> float:
        """Seconds; 0 before the first sample."""
        if not self._samples:
            return 0.0
        ordered = sorted(self._samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def max(self) -> float:
        return max(self._samples, default=0.0)


def _seen(task: asyncio.Task[Any]) -> None:
    """Mark a task's error as retrieved (whoever awaits it still gets it)."""
    if not task.cancelled():
        task.exception()


class Health:
    """The server's health, from the objects in ``services``."""

    def __init__(self, services: Services) -> None:
        self._services = services
        settings = services.settings
        self._timeout = settings.health_check_timeout / 1000
        self._cache_s = settings.health_cache_ms / 1000
        self._cached: list[CheckResult] | None = None
        self._cached_at = 0.0  # monotonic
        self._checked_at = ""  # ISO time of the cached evaluation
        self._evaluation: asyncio.Future[list[CheckResult]] | None = None
        self._database_ping: asyncio.Task[dict[str, Any]] | None = None  # the last one (_database)
        self._database_ping_at = 0.0  # monotonic, when it started
        self._failing: tuple[str, ...] = ()
        self.loop_lag = LoopLagMonitor(services.metrics)
        self.checks = (
            Check("database", True, "datastore", "responseTime", self._database),
            Check("redis", False, "datastore", "responseTime", self._redis),
            Check("pubsub", False, "component", "responseTime", self._pubsub),
            Check("memory", True, "system", "utilization", self._memory),
            Check("disk", True, "system", "utilization", self._disk),
            Check("event_loop", True, "system", "lag", self._event_loop),
            Check("websocket", False, "component", "connections", self._websocket),
        )

    async def close(self) -> None:
        """Stop the loop-lag monitor, and let a database ping still in flight end by its own
        bound (cancelled only if it overruns that too) before the database closes."""
        ping = self._database_ping
        if ping is not None and not ping.done():
            await asyncio.wait([ping], timeout=min(self._timeout + _DRIVER_OVERRUN_S, _CLOSE_WAIT_MAX_S))
            ping.cancel()  # nothing if it ended
        await self.loop_lag.close()

    # -- readiness

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): started, not draining, and MongoDB selectable. No I/O."""
        services = self._services
        if services.draining:
            return False, "draining"
        if not services.serving:
            return False, "starting"
        if not services.db.available:
            return False, "database unavailable"
        return True, "ready"

    # -- the deep check

    async def report(self) -> dict[str, Any]:
        """The deep-health answer: overall status, each check, version, node, uptime, time."""
        checks = await self._results()
        services = self._services
        return {
            "status": self._overall(checks),
            "version": services.version,
            "node_id": services.node_id,
            "uptime_s": round(time.time() - services.started_at, 3),
            "time": self._checked_at,
            "checks": {r.check.name: r.as_dict() for r in checks},
        }

    @staticmethod
    def http_status(report: dict[str, Any]) -> int:
        return 503 if report["status"] in (UNHEALTHY, UNAVAILABLE) else 200

    def ietf(self, report: dict[str, Any]) -> dict[str, Any]:
        """The same report in the IETF health-check format (application/health+json)."""
        checks: dict[str, list[dict[str, Any]]] = {}
        for check in self.checks:
            result = report["checks"][check.name]
            entry: dict[str, Any] = {
                "componentType": check.component,
                "status": PASS if result["status"] == SKIP else result["status"],
                "time": report["time"],
                "output": result["message"],
            }
            if result["observed"] is not None:
                entry.update(observedValue=result["observed"], observedUnit=result["unit"])
            checks[f"{check.name}:{check.measure}"] = [entry]
        return {
            "status": _IETF_STATUS[report["status"]],
            "version": report["version"].split(".")[0],
            "releaseId": report["version"],
            "serviceId": report["node_id"],
            "description": "MANGU realtime server",
            "checks": checks,
        }

    def _overall(self, results: list[CheckResult]) -> str:
        if self._services.draining or not self._services.serving:
            return UNAVAILABLE
        if any(r.outcome.status == FAIL and r.check.critical for r in results):
            return UNHEALTHY
        if any(r.outcome.status in (WARN, FAIL) for r in results):
            return DEGRADED
        return HEALTHY

    async def _results(self) -> list[CheckResult]:
        cached = self._cached
        fresh = cached is not None and time.monotonic() - self._cached_at < self._cache_s
        if fresh:
            return cached  # type: ignore[return-value]
        if self._evaluation is None:
            # One evaluation for every request that arrives while it runs.
            self._evaluation = asyncio.ensure_future(self._evaluate())
            self._evaluation.add_done_callback(self._evaluated)
        if cached is not None and self._cache_s > 0:
            # Stale while revalidating: no request waits on the dependencies once a first
            # answer exists; an answer is at most one cache window plus one evaluation old.
            return cached
        # shield: a caller that goes away does not cancel the others' evaluation
        return await asyncio.shield(self._evaluation)

    def _evaluated(self, evaluation: asyncio.Future[list[CheckResult]]) -> None:
        self._evaluation = None
        if not evaluation.cancelled() and evaluation.exception() is None:
            self._cached = evaluation.result()
            self._cached_at = time.monotonic()

    async def _evaluate(self) -> list[CheckResult]:
        results = await asyncio.gather(*(self._run(check) for check in self.checks))
        self._checked_at = clock.iso(clock.now())
        metrics = self._services.metrics
        for result in results:
            if result.outcome.status in _STATUS_VALUE:
                metrics.health_status.labels(check=result.check.name).set(_STATUS_VALUE[result.outcome.status])
        failing = tuple(r.check.name for r in results if r.outcome.status == FAIL)
        if failing != self._failing:  # a line per change, not per evaluation
            if failing:
                log.warning("health checks failing: %s", ", ".join(failing), extra={"failing": list(failing)})
            else:
                log.info("health checks passing again", extra={"recovered": list(self._failing)})
            self._failing = failing
        return list(results)

    async def _run(self, check: Check) -> CheckResult:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                outcome = await check.run()
        except TimeoutError:
            outcome = Outcome(FAIL, f"timed out after {self._timeout * 1000:.0f} ms")
        except Exception as exc:
            log.exception("health check %s raised", check.name)
            outcome = Outcome(FAIL, f"error: {type(exc).__name__}")
        return CheckResult(check, outcome, _ms(started))

    # -- the checks

    async def _database(self) -> Outcome:
        # The ping runs in a task of its own, which the evaluation's bound does not cancel: it
        # ends by its own (pymongo.timeout in Database.health). Cancelling the driver
        # mid-operation abandons what it was doing (a connection it was making: mangu.db
        # closes that socket once its connect ends). One ping at a time: a check that starts
        # while the last one still runs waits for that one, unless the driver has overrun its
        # bound (then, as a last resort, that one is cancelled and a new one sent).
        ping = self._database_ping
        now = time.monotonic()
        age = now - self._database_ping_at
        if ping is not None and not ping.done() and age > self._timeout + _DRIVER_OVERRUN_S:
            log.warning("a database health ping overran its %.0f ms bound by more than %.0f ms; cancelling it",
                        self._timeout * 1000, _DRIVER_OVERRUN_S * 1000,
                        extra={"timeout_ms": round(self._timeout * 1000), "age_ms": round(age * 1000)})
            ping.cancel()
            ping = None
        if ping is None or ping.done():
            ping = self._database_ping = asyncio.create_task(self._services.db.health(self._timeout))
            ping.add_done_callback(_seen)  # an error after the bound: the check that awaited it is gone
            self._database_ping_at = now
        answer = await asyncio.shield(ping)
        observed = answer["latency_ms"] if answer["status"] == PASS else None
        return Outcome(answer["status"], answer["message"], observed, "ms")

    async def _redis(self) -> Outcome:
        redis = self._services.redis
        if redis is None:
            return Outcome(SKIP, "not configured (REDIS_URL unset)")
        started = time.perf_counter()
        try:
            await redis.ping()
        except (RedisError, OSError) as exc:
            self._services.metrics.redis_up.set(0)
            return Outcome(FAIL, f"ping failed ({type(exc).__name__})")
        self._services.metrics.redis_up.set(1)
        return Outcome(PASS, "ping ok", _ms(started), "ms")

    async def _pubsub(self) -> Outcome:
        bus = self._services.bus
        if bus is None:
            return Outcome(SKIP, "not configured (REDIS_URL unset)")
        try:
            seconds = await bus.probe(self._timeout)
        except BusUnavailable as exc:
            return Outcome(FAIL, str(exc))
        except TimeoutError:
            return Outcome(FAIL, "the probe did not come back through the subscriber in time")
        return Outcome(PASS, "probe came back through the subscriber", round(seconds * 1000, 3), "ms")

    async def _memory(self) -> Outcome:
        settings = self._services.settings
        rss_mb = psutil.Process().memory_info().rss / _MB
        available_mb = psutil.virtual_memory().available / _MB
        process = _threshold(rss_mb, settings.health_memory_warn_mb, settings.health_memory_fail_mb)
        # The machine running short hurts this process too, whoever uses the memory.
        system = (FAIL if available_mb < settings.health_memory_available_fail_mb
                  else WARN if available_mb < settings.health_memory_available_warn_mb else PASS)
        status = FAIL if FAIL in (process, system) else WARN if WARN in (process, system) else PASS
        return Outcome(status, f"process RSS {rss_mb:.0f} MiB (warn {settings.health_memory_warn_mb}, "
                               f"fail {settings.health_memory_fail_mb}); system available {available_mb:.0f} MiB "
                               f"(warn below {settings.health_memory_available_warn_mb}, "
                               f"fail below {settings.health_memory_available_fail_mb})",
                       round(rss_mb, 1), "MiB")

    async def _disk(self) -> Outcome:
        settings = self._services.settings
        places = {"data": settings.data_dir}
        if settings.log_file:
            places["logs"] = os.path.dirname(os.path.abspath(settings.log_file))
        free: dict[str, float] = {}
        for label, path in places.items():
            usage = psutil.disk_usage(_existing(path))
            free[label] = 100.0 - usage.percent
        lowest = min(free.values())
        if lowest < settings.health_disk_fail_percent:
            status = FAIL
        elif lowest < settings.health_disk_warn_percent:
            status = WARN
        else:
            status = PASS
        detail = ", ".join(f"{label} {pct:.1f}% free" for label, pct in free.items())
        return Outcome(status, f"{detail} (warn below {settings.health_disk_warn_percent:g}%, "
                               f"fail below {settings.health_disk_fail_percent:g}%)", round(lowest, 1), "percent free")

    async def _event_loop(self) -> Outcome:
        settings = self._services.settings
        p99_ms = self.loop_lag.p99() * 1000
        status = _threshold(p99_ms, settings.health_loop_lag_warn_ms, settings.health_loop_lag_fail_ms)
        return Outcome(status, f"lag p99 over the last minute {p99_ms:.1f} ms (max {self.loop_lag.max() * 1000:.1f} ms;"
                               f" warn {settings.health_loop_lag_warn_ms}, fail {settings.health_loop_lag_fail_ms})",
                       round(p99_ms, 3), "ms")

    async def _websocket(self) -> Outcome:
        hub = getattr(self._services, "hub", None)
        count = getattr(hub, "connection_count", None)
        if count is None:
            count = _gauge_value(self._services.metrics.ws_connections)
        return Outcome(PASS, f"{int(count)} open connections (informational)", int(count), "connections")


def _threshold(value: float, warn: float, fail: float) -> str:
    return FAIL if value >= fail else WARN if value >= warn else PASS


def _existing(path: str) -> str:
    """``path`` or its nearest existing parent (the data directory may not exist yet)."""
    candidate = Path(path).resolve()
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent
    return str(candidate)


def _gauge_value(gauge: Any) -> float:
    for family in gauge.collect():
        for sample in family.samples:
            return sample.value
    return 0.0


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)

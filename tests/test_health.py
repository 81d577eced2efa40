"""Health endpoints against real redis-server and nx-27017 children: each status level from
a real failure, bounded checks, the cache, probes, the IETF format, and no secret in any
answer."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from collections.abc import Iterator

import pytest

from mangu.services import DRAINING
from tests.support.app import RunningApp, eventually, json_body
from tests.support.procs import MongoProcess, RedisProcess, free_port
from tests.support.ws import WSClient, make_token


async def health(app: RunningApp, **headers: str) -> tuple[int, dict]:
    response = await app.fetch("/api/health", headers=headers)
    return response.code, json_body(response)


async def wait_status(app: RunningApp, status: str, timeout: float = 15.0) -> dict:
    found: dict = {}

    async def matches() -> bool:
        found.update((await health(app))[1])
        return found["status"] == status

    deadline = time.monotonic() + timeout
    while not await matches():
        if time.monotonic() > deadline:
            raise AssertionError(f"health never became {status}: {found}")
        await asyncio.sleep(0.1)
    return found


def statuses(report: dict) -> dict[str, str]:
    return {name: check["status"] for name, check in report["checks"].items()}


@pytest.fixture
def silent_redis() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel completes them) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


async def test_each_status_level_from_a_real_failure(
    start_app, redis_server: RedisProcess, redis_url: str, own_mongo: MongoProcess
) -> None:
    await asyncio.to_thread(own_mongo.start)
    app = await start_app(MONGODB_URL=own_mongo.url, REDIS_URL=redis_url, HEALTH_CACHE_MS=0,
                          DATABASE_HEARTBEAT_INTERVAL=500)
    report = await wait_status(app, "healthy")
    assert statuses(report) == {"database": "pass", "redis": "pass", "pubsub": "pass", "memory": "pass",
                                "disk": "pass", "event_loop": "pass", "websocket": "pass"}
    assert report["checks"]["database"]["critical"] and not report["checks"]["redis"]["critical"]
    assert report["version"] and report["node_id"] == app.services.node_id and report["uptime_s"] >= 0

    await asyncio.to_thread(redis_server.stop)  # a non-critical dependency: degraded, still ready
    report = await wait_status(app, "degraded")
    assert (await app.fetch("/api/health")).code == 200
    assert statuses(report)["redis"] == "fail" and statuses(report)["pubsub"] == "fail"
    assert (await app.fetch("/api/health/ready")).code == 200

    await asyncio.to_thread(own_mongo.stop)  # the critical one: unhealthy, not ready
    report = await wait_status(app, "unhealthy")
    assert (await app.fetch("/api/health")).code == 503
    assert statuses(report)["database"] == "fail"
    await eventually(lambda: not app.services.db.available, what="the driver to see MongoDB down")
    ready = await app.fetch("/api/health/ready")
    assert ready.code == 503 and json_body(ready)["reason"] == "database unavailable"

    await asyncio.to_thread(redis_server.start)
    await asyncio.to_thread(own_mongo.start)  # both back: healthy again, same process
    report = await wait_status(app, "healthy")
    assert (await app.fetch("/readyz")).code == 200


async def test_a_redis_that_never_answers_times_out_within_the_bound(start_app, silent_redis: int) -> None:
    app = await start_app(REDIS_URL=f"redis://127.0.0.1:{silent_redis}/0", REDIS_TIMEOUT=5000,
                          HEALTH_CHECK_TIMEOUT=300, HEALTH_CACHE_MS=0)
    started = time.monotonic()
    code, report = await health(app)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5  # the 300 ms bound, not REDIS_TIMEOUT's 5 s
    assert code == 200 and report["status"] == "degraded"
    assert report["checks"]["redis"]["status"] == "fail"
    assert report["checks"]["redis"]["message"] == "timed out after 300 ms"
    assert report["checks"]["redis"]["latency_ms"] < 1000
    assert report["checks"]["pubsub"]["status"] == "fail"


async def test_the_database_ping_is_left_to_end_by_its_own_bound(start_app, silent_redis: int) -> None:
    # The silent port stands for a MongoDB that accepts connections and never answers.
    app = await start_app(MONGODB_URL=f"mongodb://127.0.0.1:{silent_redis}/", DATABASE_TIMEOUT=20000,
                          DATABASE_STATEMENT_TIMEOUT=20000, HEALTH_CHECK_TIMEOUT=300, HEALTH_CACHE_MS=0)
    started = time.monotonic()
    code, report = await health(app)
    assert time.monotonic() - started < 1.5  # the 300 ms bound, not DATABASE_TIMEOUT's 20 s
    assert code == 503 and report["checks"]["database"]["message"] == "timed out after 300 ms"
    # The report stopped waiting at its bound, but the ping was not cancelled: cancelling the
    # driver mid-operation can leave the socket of a connection it was making open. The ping
    # ends by the driver's own bound (pymongo.timeout), a little later.
    ping = app.services.health._database_ping
    assert ping is not None
    answer = await asyncio.wait_for(asyncio.shield(ping), 3)
    assert not ping.cancelled()
    assert answer["status"] == "fail" and answer["message"].startswith("ping timed out"), answer
    await health(app)  # once it has ended, the next check pings again
    assert app.services.health._database_ping is not ping


async def test_a_database_ping_that_overruns_its_bound_is_cancelled_and_replaced(start_app, log_capture) -> None:
    # The one stand-in here: a driver that overruns its own timeout cannot be brought about on
    # demand, so the first ping runs the real one and then never returns.
    app = await start_app(HEALTH_CHECK_TIMEOUT=300, HEALTH_CACHE_MS=0)
    db = app.services.db
    real_health = db.health
    pings = 0

    async def first_never_returns(timeout: float) -> dict:
        nonlocal pings
        pings += 1
        answer = await real_health(timeout)
        if pings == 1:
            await asyncio.Event().wait()
        return answer

    db.health = first_never_returns  # type: ignore[method-assign]
    code, report = await health(app)
    assert code == 503 and report["checks"]["database"]["message"] == "timed out after 300 ms"
    stuck = app.services.health._database_ping
    code, report = await health(app)  # still within the driver's overrun: waits for the same ping
    assert report["checks"]["database"]["status"] == "fail" and pings == 1
    await asyncio.sleep(0.7)  # past the bound and the overrun allowed
    code, report = await health(app)
    assert (code, report["checks"]["database"]["status"]) == (200, "pass") and pings == 2
    assert stuck is not None and stuck.cancelled()
    overran = "a database health ping overran its 300 ms bound by more than 600 ms; cancelling it"
    warned = log_capture.find(message=overran)
    assert warned and warned[0]["level"] == "WARNING"


async def test_a_database_ping_failing_after_the_bound_leaves_no_unretrieved_error(start_app, log_capture) -> None:
    # A stand-in again: a driver error that comes after the bound, which cannot be timed on
    # demand with the real one (the KeyError is what PyMongo 4.20 raises on an unexpected
    # SCRAM reply).
    app = await start_app(HEALTH_CHECK_TIMEOUT=200, HEALTH_CACHE_MS=0)

    async def fails_late(timeout: float) -> dict:
        await asyncio.sleep(timeout + 0.1)
        raise KeyError("payload")

    app.services.db.health = fails_late  # type: ignore[method-assign]
    code, report = await health(app)
    assert code == 503 and report["checks"]["database"]["message"] == "timed out after 200 ms"
    late = app.services.health._database_ping
    assert late is not None
    await asyncio.wait([late], timeout=2)
    assert late.done() and not late.cancelled()
    app.services.health._database_ping = late = None  # the last reference: asyncio reports an
    gc.collect()  # error nobody retrieved when the task goes
    assert not [r for r in log_capture.records if "never retrieved" in r["message"]]


async def test_a_flood_of_deep_health_requests_pings_the_database_once(start_app) -> None:
    app = await start_app(HEALTH_CACHE_MS=5000)
    registry = app.services.metrics.registry

    def pings() -> float:
        return registry.get_sample_value("mangu_db_command_duration_seconds_count", {"command": "ping"}) or 0.0

    before = pings()
    responses = await asyncio.gather(*(app.fetch("/api/health") for _ in range(100)))
    assert {r.code for r in responses} == {200}
    assert len({json_body(r)["time"] for r in responses}) == 1  # one evaluation, shared
    assert pings() - before == 1


async def test_liveness_stays_up_while_mongodb_and_redis_are_down(start_app) -> None:
    app = await start_app(MONGODB_URL=f"mongodb://127.0.0.1:{free_port()}/", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                          HEALTH_CACHE_MS=0)
    for path in ("/api/health/live", "/livez"):
        response = await app.fetch(path)
        assert response.code == 200 and json_body(response)["status"] == "ok"
    ping = await app.fetch("/ping")
    assert (ping.code, ping.body, ping.headers["Content-Type"]) == (200, b"pong", "text/plain; charset=utf-8")
    code, report = await health(app)
    assert (code, report["status"]) == (503, "unhealthy")
    await eventually(lambda: app.services.db.known_down)
    for path in ("/api/health/ready", "/readyz"):
        response = await app.fetch(path)
        assert response.code == 503 and json_body(response) == {
            "status": "not_ready", "reason": "database unavailable", "node_id": app.services.node_id}


async def test_no_password_or_connection_string_in_any_output(
    start_app, redis_server: RedisProcess, redis_url: str, mongo_server: MongoProcess, log_capture
) -> None:
    app = await start_app(
        REDIS_URL=f"redis://:s3cret-redis-pw@127.0.0.1:{redis_server.port}/0",
        MONGODB_URL=f"mongodb://admin:s3cret-mongo-pw@127.0.0.1:{mongo_server.port}/?authSource=admin",
        HEALTH_CACHE_MS=0,
    )
    outputs = []
    for path in ("/api/health", "/api/health/ready", "/readyz", "/metrics", "/api/health/metrics", "/api/health/live"):
        outputs.append((await app.fetch(path)).body.decode())
    outputs.append((await app.fetch("/api/health", headers={"Accept": "application/health+json"})).body.decode())
    text = "\n".join(outputs)
    assert "s3cret" not in text
    assert "mongodb://" not in text and "redis://" not in text
    assert "s3cret" not in log_capture.text()


async def test_ietf_health_format_on_request(start_app) -> None:
    app = await start_app(HEALTH_MEMORY_WARN_MB=1)  # RSS is over 1 MiB: a warning
    response = await app.fetch("/api/health", headers={"Accept": "application/health+json"})
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/health+json; charset=utf-8"
    body = json_body(response)
    assert body["status"] == "warn"
    assert body["releaseId"] == app.services.version and body["serviceId"] == app.services.node_id
    assert set(body["checks"]) == {"database:responseTime", "redis:responseTime", "pubsub:responseTime",
                                   "memory:utilization", "disk:utilization", "event_loop:lag",
                                   "websocket:connections"}
    memory = body["checks"]["memory:utilization"][0]
    assert (memory["status"], memory["componentType"], memory["observedUnit"]) == ("warn", "system", "MiB")
    assert body["checks"]["database:responseTime"][0]["componentType"] == "datastore"
    assert body["checks"]["redis:responseTime"][0]["output"] == "not configured (REDIS_URL unset)"
    # the plain format says the same with its own words
    code, report = await health(app)
    assert (code, report["status"], report["checks"]["redis"]["status"]) == (200, "degraded", "skip")


@pytest.mark.parametrize(
    ("settings", "check", "check_status", "overall", "code"),
    [
        ({"HEALTH_MEMORY_WARN_MB": 1, "HEALTH_MEMORY_FAIL_MB": 1}, "memory", "fail", "unhealthy", 503),
        # more than any machine has available (1 TB)
        ({"HEALTH_MEMORY_AVAILABLE_WARN_MB": 1_000_000}, "memory", "warn", "degraded", 200),
        ({"HEALTH_MEMORY_AVAILABLE_WARN_MB": 1_000_000, "HEALTH_MEMORY_AVAILABLE_FAIL_MB": 1_000_000},
         "memory", "fail", "unhealthy", 503),
        ({"HEALTH_DISK_WARN_PERCENT": 100}, "disk", "warn", "degraded", 200),
        ({"HEALTH_DISK_WARN_PERCENT": 100, "HEALTH_DISK_FAIL_PERCENT": 100}, "disk", "fail", "unhealthy", 503),
    ],
)
async def test_resource_thresholds(start_app, settings, check, check_status, overall, code) -> None:
    app = await start_app(**settings)
    got, report = await health(app)
    assert (got, report["status"], report["checks"][check]["status"]) == (code, overall, check_status)
    assert report["checks"][check]["observed"] is not None


async def test_a_dead_subscriber_fails_pubsub_while_redis_still_answers(
    start_app, redis_server: RedisProcess, redis_url: str
) -> None:
    app = await start_app(REDIS_URL=redis_url, HEALTH_CACHE_MS=0, HEALTH_CHECK_TIMEOUT=500)
    await wait_status(app, "healthy")
    try:
        # The subscriber's connection is cut and may not subscribe again; every other command,
        # PING and PUBLISH included, still works.
        redis_server.cli("ACL", "SETUSER", "default", "-subscribe")
        assert redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub").startswith(":1")
        report = await wait_status(app, "degraded")
        assert statuses(report)["redis"] == "pass" and statuses(report)["pubsub"] == "fail"
        assert {name for name, status in statuses(report).items() if status != "pass"} == {"pubsub"}
        assert (await app.fetch("/api/health")).code == 200
        assert (await app.fetch("/api/health/ready")).code == 200
    finally:
        redis_server.cli("ACL", "SETUSER", "default", "+subscribe")
    await wait_status(app, "healthy")  # the subscriber comes back by itself


async def test_the_websocket_check_counts_open_connections(start_app) -> None:
    app = await start_app(HEALTH_CACHE_MS=0)
    clients = [await WSClient.connect(app.ws_url(), make_token(f"counted{i}")) for i in range(3)]
    websocket = (await health(app))[1]["checks"]["websocket"]
    assert (websocket["status"], websocket["observed"], websocket["unit"]) == ("pass", 3, "connections")
    await clients[0].close()
    await eventually(lambda: app.services.hub.connection_count == 2, what="the close to register")
    assert (await health(app))[1]["checks"]["websocket"]["observed"] == 2


async def test_a_blocked_event_loop_shows_as_lag(start_app) -> None:
    app = await start_app(HEALTH_LOOP_LAG_WARN_MS=50, HEALTH_LOOP_LAG_FAIL_MS=5000, HEALTH_CACHE_MS=0)
    for _ in range(8):
        time.sleep(0.15)  # noqa: ASYNC251 - blocking the loop is the point
        await asyncio.sleep(0.15)
    code, report = await health(app)
    lag = report["checks"]["event_loop"]
    assert lag["status"] == "warn" and lag["observed"] >= 50 and lag["unit"] == "ms"
    assert (code, report["status"]) == (200, "degraded")
    exposition = (await app.fetch("/metrics")).body.decode()
    value = float(next(line.split()[1] for line in exposition.splitlines()
                       if line.startswith("mangu_event_loop_lag_seconds ")))
    assert value >= 0.05


async def test_draining_is_unready_and_unavailable(app: RunningApp) -> None:
    assert (await app.fetch("/readyz")).code == 200
    # Graceful shutdown sets this state (mangu/lifecycle.py); here the test sets it itself.
    app.services.state = DRAINING
    response = await app.fetch("/api/health/ready")
    assert response.code == 503 and json_body(response)["reason"] == "draining"
    code, report = await health(app)
    assert (code, report["status"]) == (503, "unavailable")
    assert (await app.fetch("/livez")).code == 200


async def test_a_health_request_logs_its_database_commands_with_its_correlation_id(start_app, log_capture) -> None:
    app = await start_app(SLOW_QUERY_THRESHOLD=0, HEALTH_CACHE_MS=0)
    response = await app.fetch("/api/health", headers={"X-Correlation-Id": "health-req-7"})
    assert response.headers["X-Correlation-Id"] == "health-req-7"
    slow = log_capture.find(message="slow_query", correlation_id="health-req-7")
    assert [(r["command"], r["collection"]) for r in slow] == [("ping", None)]


async def test_after_the_window_the_last_answer_is_served_while_a_new_one_is_made(start_app) -> None:
    app = await start_app(HEALTH_CACHE_MS=1000)
    first = (await health(app))[1]["time"]
    assert (await health(app))[1]["time"] == first  # within the window: the same answer
    await asyncio.sleep(1.05)
    assert (await health(app))[1]["time"] == first  # expired: answered at once from the last one...
    newer: list[str] = []

    async def refreshed() -> bool:
        newer.append((await health(app))[1]["time"])
        return newer[-1] != first

    deadline = time.monotonic() + 5
    while not await refreshed():  # ...while the refresh it started completes
        assert time.monotonic() < deadline, "the answer was never refreshed"
        await asyncio.sleep(0.02)
    assert newer[-1] > first


async def test_failing_checks_are_logged_once_per_change(start_app, log_capture) -> None:
    app = await start_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", HEALTH_CACHE_MS=0)
    for _ in range(3):
        await health(app)
    failing = log_capture.find(message="health checks failing: redis, pubsub")
    assert len(failing) == 1 and failing[0]["level"] == "WARNING"
    assert failing[0]["failing"] == ["redis", "pubsub"]

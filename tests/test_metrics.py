"""/metrics and the Prometheus configuration: the exposition passes ``promtool check metrics``
after real traffic (HTTP, a 429, WebSockets, the database, the bus) and counts it, routes
are labelled by template, OpenMetrics on request; the alert rules,
their unit tests and the scrape configuration pass promtool."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from mangu.realtime.bus import Bus
from tests.support.api import bearer
from tests.support.app import RunningApp, eventually
from tests.support.procs import ROOT
from tests.support.ws import WSClient, make_token

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = ROOT / "conf" / "prometheus"


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, timeout=60)


async def exercise(app: RunningApp) -> None:
    """Real traffic through every part: HTTP (2xx, 404, 405, 429), a book and a room route,
    the database (commands, a slow query, the pool), Redis and the bus, the deep health
    check, and WebSockets (a refused token, a connection that joins, sends and closes)."""
    services = app.services
    for path in ("/ping", "/api/health", "/api/health/live", "/readyz", "/livez", "/api/health/ready",
                 "/api/health/metrics", "/api/nope/12345", "/books/secret-room-name"):
        await app.fetch(path)
    await app.fetch("/ping", method="POST")
    await app.fetch("/api/books/book-id-98765", headers=bearer("ana"))
    await app.fetch("/api/rooms/book:secret-room-name/messages", headers=bearer("ana"))
    limited = [(await app.fetch("/api/books", headers=bearer("eager"))).code for _ in range(RATE_LIMIT_MAX + 1)]
    assert limited == [200] * RATE_LIMIT_MAX + [429]
    await services.messages.append("book:1", "ana", "hello", "c-1")
    await services.messages.history("book:1")
    assert isinstance(services.bus, Bus)
    await eventually(lambda: services.bus.connected, what="the bus to connect")
    await services.bus.publish("room:book:1", b"x")

    refused = await WSClient.connect(app.ws_url(), "not-a-token", wait_ready=False)
    await refused.closed()
    client = await WSClient.connect(app.ws_url(), make_token("ana"))
    await client.ok("join:room", {"room": "book:secret-ws-room"})
    await client.ok("message:send", {"room": "book:secret-ws-room", "text": "counted"})
    await client.expect("message:received", text="counted")
    during = (await app.fetch("/metrics")).body.decode()
    assert sample(during, "mangu_users_online") == 1 and sample(during, "mangu_websocket_connections") == 1
    await client.close(1000)
    await eventually(lambda: app.services.hub.connection_count == 0, what="the close to register")


async def test_exposition_passes_promtool_and_labels_routes_by_template(start_app, redis_url: str) -> None:
    app = await start_app(REDIS_URL=redis_url, SLOW_QUERY_THRESHOLD=0, HEALTH_CACHE_MS=0,
                          RATE_LIMIT_MAX=RATE_LIMIT_MAX, RATE_LIMIT_BURST=1_000)
    await exercise(app)
    response = await app.fetch("/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.body.decode()

    result = promtool("check", "metrics", stdin=response.body)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()

    for family in ("mangu_http_requests_total", "mangu_http_request_duration_seconds_bucket",
                   "mangu_http_requests_in_flight", "mangu_db_command_duration_seconds_count",
                   "mangu_db_slow_queries_total", "mangu_db_pool_connections", "mangu_db_up",
                   "mangu_db_pool_connections_created_total",
                   "mangu_redis_up", "mangu_bus_up", "mangu_bus_messages_total", "mangu_event_loop_lag_seconds",
                   "mangu_health_check_status", "mangu_build_info", "mangu_websocket_connections",
                   "mangu_websocket_slow_consumers_total", "mangu_websocket_fanout_duration_seconds_count",
                   "process_resident_memory_bytes", "python_info"):
        assert re.search(rf"^{family}[{{ ]", text, re.M), family
    # what the traffic above did, as counted
    assert sample(text, "mangu_websocket_connections_opened_total") == 2
    assert sample(text, "mangu_websocket_connections_closed_total", code="1000") == 1
    assert sample(text, "mangu_websocket_connections_closed_total", code="4001") == 1  # the refused token
    assert sample(text, "mangu_websocket_connections") == 0
    assert sample(text, "mangu_websocket_messages_total", direction="in", event="message:send") == 1
    assert sample(text, "mangu_websocket_messages_total", direction="out", event="message:received") >= 1
    assert sum(value for labels, value in samples(text, "mangu_websocket_auth_failures_total")) == 1
    assert sample(text, "mangu_users_online") == 0
    assert sample(text, "mangu_ratelimit_decisions_total", policy="general", outcome="limited") == 1
    assert sample(text, "mangu_ratelimit_decisions_total", policy="general", outcome="allowed") >= RATE_LIMIT_MAX
    assert sample(text, "mangu_ratelimit_backend", backend="redis") == 1
    assert sample(text, "mangu_db_pool_connections_created_total") >= 1
    # nothing was dropped: the family is there, with no sample
    assert "# TYPE mangu_websocket_frames_dropped_total counter" in text
    assert samples(text, "mangu_websocket_frames_dropped_total") == []

    routes = set(re.findall(r'route="([^"]*)"', text))
    assert routes >= {"/ping", "/api/health", "/api/health/ready", "/readyz", "unmatched", "/api/books",
                      "/api/books/{book_id}", "/api/rooms/{room}/messages", "/ws"}
    assert routes <= {"/ping", "/api/health", "/api/health/live", "/livez", "/api/health/ready", "/readyz",
                      "/api/health/metrics", "/metrics", "unmatched", "/api/books", "/api/books/{book_id}",
                      "/api/rooms/{room}/messages", "/ws"}
    for raw in ("12345", "98765", "secret-room-name", "secret-ws-room", "ana", "eager"):
        assert raw not in text, raw
    assert 'status="405"' in text and 'status="404"' in text and 'status="429"' in text
    assert f'mangu_build_info{{version="{app.services.version}"}} 1.0' in text


RATE_LIMIT_MAX = 5


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The (labels, value) of every sample called ``name`` in an exposition."""
    found = []
    for match in re.finditer(rf"^{re.escape(name)}(?:{{(.*?)}})? (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        found.append((labels, float(match.group(2))))
    return found


def sample(text: str, name: str, **labels: str) -> float:
    matching = [value for found, value in samples(text, name) if found == labels]
    assert len(matching) == 1, (name, labels, samples(text, name))
    return matching[0]


async def test_openmetrics_when_asked(app: RunningApp) -> None:
    response = await app.fetch("/api/health/metrics",
                               headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.body.endswith(b"# EOF\n")
    assert b"mangu_http_requests_in_flight" in response.body


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts.test.yml"),
        ("check", "config", "prometheus.yml"),
    ],
    ids=["check rules", "test rules", "check config"],
)
def test_prometheus_configuration_passes_promtool(args: tuple[str, ...]) -> None:
    result = subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, timeout=60)
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "SUCCESS" in output


def test_alert_rules_cover_the_operators_cases() -> None:
    text = (PROMETHEUS / "alerts.yml").read_text()
    alerts = set(re.findall(r"^\s*- alert: (\w+)", text, re.M))
    assert alerts == {"ManguInstanceDown", "ManguHigh5xxRatio", "ManguHighLatencyP99", "ManguEventLoopLag",
                      "ManguDatabaseDown", "ManguRedisDown", "ManguRateLimiterFallback", "ManguSlowQueries",
                      "ManguWebSocketDisconnectSpike"}
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "alerts.test.yml").read_text()))
    assert tested == alerts  # every rule has a unit test

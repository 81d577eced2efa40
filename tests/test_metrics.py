"""/metrics and the Prometheus configuration: the exposition passes ``promtool check metrics``
after traffic, routes are labelled by template, OpenMetrics on request; the alert rules,
their unit tests and the scrape configuration pass promtool."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from mangu.realtime.bus import Bus
from tests.support.app import RunningApp, eventually
from tests.support.procs import ROOT

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = ROOT / "conf" / "prometheus"


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, timeout=60)


async def exercise(app: RunningApp) -> None:
    """Traffic through every part built so far: HTTP (2xx, 404, 405), the database (commands,
    a slow query, the pool), Redis and the bus, the deep health check."""
    services = app.services
    for path in ("/ping", "/api/health", "/api/health/live", "/readyz", "/livez", "/api/health/ready",
                 "/api/health/metrics", "/api/nope/12345", "/books/secret-room-name"):
        await app.fetch(path)
    await app.fetch("/ping", method="POST")
    await services.messages.append("book:1", "ana", "hello", "c-1")
    await services.messages.history("book:1")
    assert isinstance(services.bus, Bus)
    await eventually(lambda: services.bus.connected, what="the bus to connect")
    await services.bus.publish("room:book:1", b"x")
    # The WebSocket and rate-limit layers are not part of this server yet: stand in for them
    # on their metrics, so that promtool sees every family with samples.
    metrics = services.metrics
    metrics.ws_connections.inc()
    metrics.ws_connections_opened.inc()
    metrics.ws_connections_closed.labels(code="1000").inc()
    metrics.ws_messages.labels(direction="in", event="message:send").inc()
    metrics.ws_frames_dropped.labels(reason="queue_full").inc()
    metrics.ws_slow_consumers.inc()
    metrics.ws_auth_failures.labels(reason="expired").inc()
    metrics.ws_delivery_latency.observe(0.001)
    metrics.users_online.set(1)
    metrics.ratelimit_decisions.labels(policy="general", outcome="allowed").inc()
    metrics.ratelimit_backend.labels(backend="redis").set(1)


async def test_exposition_passes_promtool_and_labels_routes_by_template(start_app, redis_url: str) -> None:
    app = await start_app(REDIS_URL=redis_url, SLOW_QUERY_THRESHOLD=0, HEALTH_CACHE_MS=0)
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
                   "mangu_redis_up", "mangu_bus_up", "mangu_bus_messages_total", "mangu_event_loop_lag_seconds",
                   "mangu_health_check_status", "mangu_build_info", "mangu_websocket_connections",
                   "mangu_ratelimit_decisions_total", "process_resident_memory_bytes", "python_info"):
        assert re.search(rf"^{family}[{{ ]", text, re.M), family
    routes = set(re.findall(r'route="([^"]*)"', text))
    assert routes >= {"/ping", "/api/health", "/api/health/ready", "/readyz", "unmatched"}
    assert routes <= {"/ping", "/api/health", "/api/health/live", "/livez", "/api/health/ready", "/readyz",
                      "/api/health/metrics", "/metrics", "unmatched"}
    assert "12345" not in text and "secret-room-name" not in text
    assert 'status="405"' in text and 'status="404"' in text
    assert f'mangu_build_info{{version="{app.services.version}"}} 1.0' in text


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

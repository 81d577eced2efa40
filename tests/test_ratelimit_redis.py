"""Rate limiting on a real redis-server shared by app instances, and failover: Redis killed,
hung or absent, then back; memory answers in between, never a 5xx."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.app import LogCapture, RunningApp, json_body
from tests.support.procs import RedisProcess, free_port
from tests.support.ratelimit import add_routes, backend_in_use, metric

FAST_PROBE = {"RATE_LIMIT_PROBE_INTERVAL": 200, "RATE_LIMIT_BURST": 1_000_000}


@pytest.fixture
def hung_redis(redis_server: RedisProcess) -> Iterator[Callable[[], None]]:
    """``hang()`` stops redis-server with SIGSTOP (it accepts connections, answers nothing);
    it is always continued afterwards."""
    stopped = []

    def hang() -> None:
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        stopped.append(redis_server.proc.pid)

    try:
        yield hang
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def redis_keys(redis_server: RedisProcess) -> str:
    return redis_server.cli("KEYS", "mangu:rl:*")


async def wait_for_backend(app: RunningApp, backend: str, within: float) -> float:
    started = time.monotonic()
    while backend_in_use(app) != backend:
        assert time.monotonic() - started < within, f"still not on {backend} after {within}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_two_instances_share_one_bucket(start_app: Callable[..., Any], redis_url: str) -> None:
    one = add_routes(await start_app(REDIS_URL=redis_url, RATE_LIMIT_BURST=1_000_000))
    two = add_routes(await start_app(REDIS_URL=redis_url, RATE_LIMIT_BURST=1_000_000))
    # 250 concurrent requests on each: the 100 of the bucket, not 100 per instance
    responses = await asyncio.gather(*(app.fetch("/test/general") for app in (one, two) for _ in range(250)))
    assert Counter(r.code for r in responses) == {200: 100, 429: 400}
    assert (await one.fetch("/test/general")).code == 429 and (await two.fetch("/test/general")).code == 429


async def test_a_bucket_key_expires_when_the_bucket_would_be_full_again(
        start_app: Callable[..., Any], redis_url: str, redis_server: RedisProcess) -> None:
    app = add_routes(await start_app(REDIS_URL=redis_url, RATE_LIMIT_MAX=10, RATE_LIMIT_WINDOW=60_000,
                                     RATE_LIMIT_BURST=1_000_000))
    started = time.monotonic()
    assert [(await app.fetch("/test/general")).code for _ in range(4)] == [200] * 4

    def pttl() -> tuple[int, float]:
        answer = redis_server.cli("PTTL", "mangu:rl:general:ip:127.0.0.1")
        return int(answer[1:]), (time.monotonic() - started) * 1000

    # 4 of 10 tokens taken, refilled at 10 per 60 s: full again 24 s after the first take,
    # less what has trickled back since
    left, elapsed = pttl()
    assert 24_000 - elapsed - 50 <= left <= 24_000, (left, elapsed)
    assert (await app.fetch("/test/general")).code == 200  # one more: 30 s
    left, elapsed = pttl()
    assert 30_000 - elapsed - 50 <= left <= 30_000, (left, elapsed)


async def test_flushed_script_is_loaded_again(start_app: Callable[..., Any], redis_url: str,
                                              redis_server: RedisProcess) -> None:
    app = add_routes(await start_app(REDIS_URL=redis_url, RATE_LIMIT_MAX=3, RATE_LIMIT_BURST=100))
    assert (await app.fetch("/test/general")).code == 200
    assert redis_server.cli("SCRIPT", "FLUSH").startswith("+OK")
    assert [(await app.fetch("/test/general")).code for _ in range(3)] == [200, 200, 429]
    assert backend_in_use(app) == "redis"  # NOSCRIPT is not an outage
    assert metric(app, "mangu_ratelimit_backend_transitions_total", backend="memory") == 0


async def test_redis_killed_then_restarted(start_app: Callable[..., Any], redis_url: str,
                                           redis_server: RedisProcess, log_capture: LogCapture) -> None:
    app = add_routes(await start_app(REDIS_URL=redis_url, **FAST_PROBE))
    assert [(await app.fetch("/test/general")).code for _ in range(3)] == [200] * 3
    assert backend_in_use(app) == "redis" and "mangu:rl:general:ip:127.0.0.1" in redis_keys(redis_server)

    redis_server.kill()
    first = await app.fetch("/test/general")  # the first request to meet the dead Redis
    assert first.code == 200 and first.headers["X-RateLimit-Limit"] == "100"
    during = [await app.fetch("/test/general") for _ in range(20)]
    assert all(r.code == 200 for r in during)
    assert backend_in_use(app) == "memory"
    assert metric(app, "mangu_ratelimit_backend_transitions_total", backend="memory") == 1
    assert metric(app, "mangu_ratelimit_memory_answers_total", reason="redis_down") == 21
    [warning] = log_capture.find(logger="mangu.ratelimit", level="WARNING")
    assert warning["backend"] == "memory" and "ConnectionError" in warning["reason"]

    redis_server.start()  # same port, empty, no script loaded
    waited = await wait_for_backend(app, "redis", within=0.2 + 1.5)
    assert waited <= 1.5
    response = await app.fetch("/test/general")
    assert response.code == 200
    assert json_body(response) == {"ok": True}
    assert "mangu:rl:general:ip:127.0.0.1" in redis_keys(redis_server)
    assert metric(app, "mangu_ratelimit_backend_transitions_total", backend="redis") == 1
    [back] = [r for r in log_capture.find(logger="mangu.ratelimit", level="INFO")
              if r["message"].startswith("rate limiting back on Redis")]
    assert back["backend"] == "redis" and back["fallback_s"] > 0
    assert len(log_capture.find(logger="mangu.ratelimit", level="WARNING")) == 1  # logged once


async def test_hung_redis_costs_one_timeout_then_none(start_app: Callable[..., Any], redis_url: str,
                                                      hung_redis: Callable[[], None], log_capture: LogCapture) -> None:
    app = add_routes(await start_app(REDIS_URL=redis_url, RATE_LIMIT_REDIS_TIMEOUT=50, **FAST_PROBE))
    assert (await app.fetch("/test/general")).code == 200
    hung_redis()
    started = time.monotonic()
    first = await app.fetch("/test/general")
    first_took = time.monotonic() - started
    assert first.code == 200 and first_took < 0.5  # a 50 ms timeout, then memory
    assert backend_in_use(app) == "memory"
    [warning] = log_capture.find(logger="mangu.ratelimit", level="WARNING")
    assert warning["reason"] == "RedisTimeout: no answer within 50 ms"
    started = time.monotonic()
    assert [(await app.fetch("/test/general")).code for _ in range(20)] == [200] * 20
    assert time.monotonic() - started < 0.8  # 20 x 50 ms would be 1 s: the circuit is open


async def test_fallback_divides_the_limit_by_the_process_count(start_app: Callable[..., Any],
                                                                 log_capture: LogCapture) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = add_routes(await start_app(REDIS_URL=dead, RATE_LIMIT_MAX=100, RATE_LIMIT_PROCESSES=4, **FAST_PROBE))
    assert backend_in_use(app) == "memory"
    [warning] = log_capture.find(logger="mangu.ratelimit", level="WARNING")
    assert warning["limit_divisor"] == 4
    responses = [await app.fetch("/test/general") for _ in range(26)]
    assert [r.code for r in responses] == [200] * 25 + [429]
    assert responses[0].headers["RateLimit-Policy"].startswith('"general";q=25;w=900')


async def test_auth_tier_can_fail_closed(start_app: Callable[..., Any]) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = add_routes(await start_app(REDIS_URL=dead, RATE_LIMIT_AUTH_FAIL_CLOSED="true", **FAST_PROBE))
    login = await app.fetch("/test/login", method="POST", body={"username": "alice", "password": "x"})
    assert login.code == 503 and json_body(login)["error"]["code"] == "unavailable"
    assert int(login.headers["Retry-After"]) >= 1
    assert (await app.fetch("/test/general")).code == 200  # the other tiers answer from memory

    open_app = add_routes(await start_app(REDIS_URL=dead, **FAST_PROBE))
    login = await open_app.fetch("/test/login", method="POST", body={"username": "alice", "password": "x"})
    assert login.code == 401  # by default the auth tier answers from memory too

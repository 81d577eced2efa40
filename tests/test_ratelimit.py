"""Rate limiting over HTTP, on the memory backend and on a real Redis: tiers, burst, keys,
headers on every response of a limited endpoint, the auth tier, exempt endpoints."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.app import RunningApp, json_body
from tests.support.ratelimit import add_routes, answered_from_memory, backend_in_use, metric

NO_BURST = {"RATE_LIMIT_BURST": 1_000_000}  # for tests about the window tiers alone


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def start_limited(start_app: Callable[..., Any], backend: str, request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``await start_limited(VAR=value)``: the app with the test routes, on this test's backend."""

    async def start(**overrides: Any) -> RunningApp:
        if backend == "redis":
            overrides.setdefault("REDIS_URL", request.getfixturevalue("redis_url"))
        app = add_routes(await start_app(**overrides))
        assert backend_in_use(app) == backend
        return app

    return start


async def fetch_all(app: RunningApp, path: str, n: int, **kwargs: Any) -> list[Any]:
    return [await app.fetch(path, **kwargs) for _ in range(n)]


def assert_refused(response: Any, policy: str) -> int:
    """A 429 with the rate_limited body; returns its Retry-After."""
    assert response.code == 429
    error = json_body(response)["error"]
    retry = int(response.headers["Retry-After"])
    assert retry >= 1
    assert (error["code"], error["policy"], error["retry_after"]) == ("rate_limited", policy, retry)
    return retry


async def test_150_requests_first_100_pass_the_rest_get_429(start_limited: Callable[..., Any], backend: str,
                                                           request: pytest.FixtureRequest) -> None:
    for _ in range(3):
        app = await start_limited(**NO_BURST)
        started = time.time()
        responses = await fetch_all(app, "/test/general", 150)
        if backend == "memory" or not answered_from_memory(app):
            break
        # On Redis, 150 round trips in a row: a machine that holds the test's redis-server (or
        # this process) up past RATE_LIMIT_REDIS_TIMEOUT (50 ms at most) makes the limiter
        # answer from memory, as designed (tests/test_ratelimit_redis.py), and this count is
        # about Redis: again, on a clean Redis.
        request.getfixturevalue("redis_server").cli("FLUSHALL")
    else:
        pytest.fail("every attempt fell back to memory: Redis kept missing its 50 ms deadline")
    assert [r.code for r in responses] == [200] * 100 + [429] * 50

    first, last_ok = responses[0], responses[99]
    assert first.headers["RateLimit-Policy"].startswith('"general";q=100;w=900')
    assert first.headers["RateLimit"].startswith('"general";r=99;t=9')  # one token back every 9 s
    assert (first.headers["X-RateLimit-Limit"], first.headers["X-RateLimit-Remaining"]) == ("100", "99")
    assert last_ok.headers["X-RateLimit-Remaining"] == "0"
    for response in responses[100:]:
        retry = assert_refused(response, "general")
        assert retry <= 9
        assert re.match(r'"general";r=0;t=\d+', response.headers["RateLimit"])
        assert response.headers["X-RateLimit-Limit"] == "100" and response.headers["X-RateLimit-Remaining"] == "0"
        # the bucket is full again 100 tokens x 9 s after the first request
        assert abs(int(response.headers["X-RateLimit-Reset"]) - (started + 900)) <= 5


async def test_refill_lets_exactly_k_more_through(start_limited: Callable[..., Any]) -> None:
    app = await start_limited(RATE_LIMIT_MAX=4, RATE_LIMIT_WINDOW=4000, **NO_BURST)  # a token a second
    first = time.monotonic()
    assert [r.code for r in await fetch_all(app, "/test/general", 5)] == [200] * 4 + [429]
    # The bucket refills from the first take on: two tokens' worth after it, and a little
    # (the third token comes 3 s after it).
    await asyncio.sleep(first + 2.25 - time.monotonic())
    assert [r.code for r in await fetch_all(app, "/test/general", 3)] == [200, 200, 429]


async def test_500_concurrent_requests_on_a_bucket_of_100_allow_exactly_100(start_limited: Callable[..., Any]) -> None:
    app = await start_limited(**NO_BURST)
    responses = await asyncio.gather(*(app.fetch("/test/general") for _ in range(500)))
    assert Counter(r.code for r in responses) == {200: 100, 429: 400}


async def test_burst_tier_applies_under_the_window_tier(start_limited: Callable[..., Any]) -> None:
    app = await start_limited(RATE_LIMIT_BURST=1)  # one request a second, whatever the window allows
    responses = await fetch_all(app, "/test/general", 2)
    assert responses[0].code == 200
    assert assert_refused(responses[1], "burst") == 1
    assert responses[1].headers["X-RateLimit-Limit"] == "1"
    assert '"burst";q=1;w=1' in responses[1].headers["RateLimit-Policy"]
    await asyncio.sleep(1.1)
    after = await app.fetch("/test/general")
    assert after.code == 200
    assert after.headers["X-RateLimit-Remaining"] == "98"  # the refused request spent nothing


async def test_strict_tier_and_a_custom_policy(start_limited: Callable[..., Any]) -> None:
    app = await start_limited()
    strict = await app.fetch("/test/strict")
    assert strict.code == 200 and strict.headers["RateLimit-Policy"].startswith('"strict";q=20;w=900')
    export = await fetch_all(app, "/test/export", 3)
    assert [r.code for r in export] == [200, 200, 429]
    assert export[0].headers["RateLimit-Policy"] == '"export";q=2;w=60, "burst";q=10;w=1'
    assert 29 <= assert_refused(export[2], "export") <= 30  # a token every 30 s


async def test_error_responses_of_a_limited_endpoint_carry_the_headers(start_limited: Callable[..., Any]) -> None:
    app = await start_limited()
    for path, status in (("/test/refusing", 400), ("/api/no-such-endpoint", 404)):
        response = await app.fetch(path)
        assert response.code == status
        assert response.headers["RateLimit-Policy"].startswith('"general";q=100;w=900')
        assert response.headers["X-RateLimit-Limit"] == "100"
        assert "X-RateLimit-Remaining" in response.headers and "RateLimit" in response.headers


async def test_a_response_after_two_decisions_carries_the_fields_of_both_once(
        start_limited: Callable[..., Any]) -> None:
    # A limited endpoint that also counts a login attempt: the fields list all four buckets, and
    # the X-RateLimit-* trio describes the last decision (the auth tier), each field once. The
    # second request's first decision is worked out in one step, as ready lines (a ReadyTake),
    # which the second decision replaces.
    app = await start_limited()
    for remaining in (r'"general";r=99;t=\d+, "burst";r=9;t=1, "auth";r=4;t=\d+, "auth_user";r=9;t=\d+',
                      r'"general";r=98;t=\d+, "burst";r=[89];t=1, "auth";r=3;t=\d+, "auth_user";r=8;t=\d+'):
        response = await app.fetch("/test/tiered-attempt", method="POST", body={"username": "alice"})
        assert response.code == 200
        fields = response.headers
        assert fields.get_list("RateLimit-Policy") == [
            '"general";q=100;w=900, "burst";q=10;w=1, "auth";q=5;w=900, "auth_user";q=10;w=900']
        assert re.fullmatch(remaining, fields["RateLimit"])
        assert fields.get_list("X-RateLimit-Limit") == ["5"]
        assert fields.get_list("X-RateLimit-Remaining") == [re.search(r'"auth";r=(\d)', remaining)[1]]
        assert len(fields.get_list("X-RateLimit-Reset")) == 1


async def test_the_fields_are_the_same_through_tornados_own_server(start_limited: Callable[..., Any]) -> None:
    # This server's connection writes an allowed request's fields from ready lines
    # (mangu.http1); Tornado's own server, used on other Tornado versions, gets them through
    # HTTPHeaders. The same fields either way (after the others, here), each once.
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    app = await start_limited(TRUSTED_PROXIES="127.0.0.1")
    tornados = HTTPServer(app.app)
    sockets = bind_sockets(0, "127.0.0.1")
    tornados.add_sockets(sockets)

    async def fields(port: int, client: str) -> list[tuple[str, str]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /test/general HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\n"
                     "Connection: close\r\n\r\n".encode())
        head = (await asyncio.wait_for(reader.read(-1), 10)).split(b"\r\n\r\n", 1)[0].decode("latin1")
        writer.close()
        lines = head.split("\r\n")
        assert lines[0] == "HTTP/1.1 200 OK"
        return [tuple(line.split(": ", 1)) for line in lines[1:]]  # type: ignore[misc]

    try:
        for client in ("198.51.100.1", "198.51.100.2"):  # a new bucket, then one seen before
            ours = await fields(app.port, client)
            theirs = await fields(sockets[0].getsockname()[1], client.replace("198.51", "203.0"))
            # The date, the correlation id and the reset time (whole seconds from now) may differ.
            varying = {"Date", "X-Correlation-Id", "X-Ratelimit-Reset"}
            assert sorted(f for f in ours if f[0] not in varying) == sorted(f for f in theirs if f[0] not in varying)
            names = [name for name, _ in ours]
            for name in ("Ratelimit-Policy", "Ratelimit", "X-Ratelimit-Limit", "X-Ratelimit-Remaining",
                         "X-Ratelimit-Reset"):
                assert names.count(name) == 1, name
            reset = {int(value) for fields_ in (ours, theirs) for name, value in fields_ if name == "X-Ratelimit-Reset"}
            assert max(reset) - min(reset) <= 1
    finally:
        tornados.stop()
        await tornados.close_all_connections()


async def test_auth_tier_counts_per_ip_and_per_username(start_limited: Callable[..., Any]) -> None:
    app = await start_limited(TRUSTED_PROXIES="127.0.0.1")

    def attempt(username: str, ip: str) -> Any:
        return app.fetch("/test/login", method="POST", body={"username": username, "password": "x"},
                         headers={"X-Forwarded-For": ip})

    # one IP, a different username each time: the 6th is refused
    from_one_ip = [await attempt(f"reader{i}", "198.51.100.7") for i in range(6)]
    assert [r.code for r in from_one_ip] == [401] * 5 + [429]
    assert from_one_ip[0].headers["RateLimit-Policy"] == '"auth";q=5;w=900, "auth_user";q=10;w=900'
    assert 170 <= assert_refused(from_one_ip[5], "auth") <= 180  # 5 per 15 minutes: one back every 3 minutes

    # one username, a different IP each time: the 11th is refused, whatever the case of the name
    spread = [await attempt("Alice" if i % 2 else "alice", f"203.0.113.{i}") for i in range(11)]
    assert [r.code for r in spread] == [401] * 10 + [429]
    assert 80 <= assert_refused(spread[10], "auth_user") <= 90
    assert spread[10].headers["X-RateLimit-Limit"] == "10"


async def test_keys_per_user_else_per_ip(start_limited: Callable[..., Any]) -> None:
    app = await start_limited(RATE_LIMIT_MAX=2)
    alice, _ = app.services.tokens.issue("alice")
    bob, _ = app.services.tokens.issue("bob")
    as_alice = {"Authorization": f"Bearer {alice}"}
    assert [r.code for r in await fetch_all(app, "/test/general", 3, headers=as_alice)] == [200, 200, 429]
    assert (await app.fetch("/test/general", headers={"Authorization": f"Bearer {bob}"})).code == 200
    assert (await app.fetch("/test/general")).code == 200  # this address's own bucket
    # an invalid token is no user: it draws on the address's bucket
    assert (await app.fetch("/test/general", headers={"Authorization": "Bearer not-a-token"})).code == 200
    assert (await app.fetch("/test/general")).code == 429


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(start_limited: Callable[..., Any]) -> None:
    app = await start_limited(RATE_LIMIT_MAX=3)
    codes = [(await app.fetch("/test/general", headers={"X-Forwarded-For": f"192.0.2.{i}"})).code for i in range(4)]
    assert codes == [200, 200, 200, 429]


async def test_ipv6_clients_in_one_64_share_a_bucket(start_limited: Callable[..., Any]) -> None:
    app = await start_limited(RATE_LIMIT_MAX=2, TRUSTED_PROXIES="127.0.0.1")

    async def code(ip: str) -> int:
        return (await app.fetch("/test/general", headers={"X-Forwarded-For": ip})).code

    assert await code("2001:db8:1:2::1") == 200
    assert await code("2001:db8:1:2:ffff:ffff:ffff:9") == 200
    assert await code("2001:db8:1:2::abcd") == 429  # same /64
    assert await code("2001:db8:1:3::1") == 200  # the next /64
    assert await code("::ffff:192.0.2.1") == 200 and await code("192.0.2.1") == 200
    assert await code("192.0.2.1") == 429  # an IPv4-mapped address is that IPv4 address


async def test_decisions_are_counted_by_policy_and_outcome(start_limited: Callable[..., Any]) -> None:
    app = await start_limited(RATE_LIMIT_MAX=1, RATE_LIMIT_BURST=1)
    codes = [(await app.fetch(path)).code for path in ("/test/general", "/test/general", "/test/export")]
    assert codes == [200, 429, 429]  # the general tier spent, then the burst (one a second)
    await asyncio.sleep(1.1)
    assert (await app.fetch("/test/export")).code == 200

    def decisions(policy: str, outcome: str) -> float:
        return metric(app, "mangu_ratelimit_decisions_total", policy=policy, outcome=outcome)

    assert (decisions("general", "allowed"), decisions("general", "limited")) == (1, 1)
    assert (decisions("burst", "limited"), decisions("export", "allowed")) == (1, 1)


async def test_probes_are_exempt(start_app: Callable[..., Any]) -> None:
    app = add_routes(await start_app(RATE_LIMIT_MAX=1, RATE_LIMIT_BURST=1))
    for path in ("/ping", "/api/health/live", "/livez", "/api/health", "/api/health/ready", "/readyz",
                 "/metrics", "/api/health/metrics"):
        responses = await fetch_all(app, path, 5)
        assert [r.code for r in responses] == [200] * 5, path
        assert not any(name.lower().startswith(("ratelimit", "x-ratelimit")) for name in responses[-1].headers)


async def test_disabled_limits_nothing(start_app: Callable[..., Any]) -> None:
    app = add_routes(await start_app(RATE_LIMIT_ENABLED="false", RATE_LIMIT_MAX=1, RATE_LIMIT_BURST=1))
    responses = await fetch_all(app, "/test/general", 5)
    assert [r.code for r in responses] == [200] * 5 and "RateLimit" not in responses[-1].headers
    login = await app.fetch("/test/login", method="POST", body={"username": "alice"})
    assert login.code == 401

"""The admin API over real HTTP: published events reach the WebSocket clients they are meant
for (and no others), disconnections close with 4003, and only admins may do either."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.api import UNLIMITED, call, error_of
from tests.support.ws import WSClient, make_token

NOTICE = {"message": "Maintenance at 02:00 UTC", "minutes": 15}


@pytest.fixture
async def api(start_app):
    return await start_app(**UNLIMITED)


async def connect(app, user: str, room: str | None = None) -> WSClient:
    client = await WSClient.connect(app.ws_url(), make_token(user))
    if room:
        await client.ok("join:room", {"room": room})
    return client


async def publish(app, body, roles: tuple[str, ...] = ("admin",)) -> tuple[int, dict]:
    status, payload, _ = await call(app, "POST", "/api/admin/publish", body, as_user="root", roles=roles)
    return status, payload


async def test_publish_reaches_the_sockets_of_its_target_only(api) -> None:
    alice, bob = await connect(api, "alice", "book:42"), await connect(api, "bob", "book:42")
    alice_phone, carol = await connect(api, "alice"), await connect(api, "carol", "book:7")
    everyone = (alice, bob, alice_phone, carol)

    status, body = await publish(api, {"target": "room", "id": "book:42", "event": "system:maintenance",
                                       "data": NOTICE})
    assert status == 202
    assert body == {"target": "room", "id": "book:42", "event": "system:maintenance", "local_deliveries": 2}
    for member in (alice, bob):
        assert (await member.expect("system:maintenance"))["data"] == NOTICE

    status, body = await publish(api, {"target": "user", "id": "alice", "event": "system:notice",
                                       "data": {"text": "hi"}})
    assert status == 202 and body["local_deliveries"] == 2
    for connection in (alice, alice_phone):
        assert (await connection.expect("system:notice"))["data"] == {"text": "hi"}

    status, body = await publish(api, {"target": "broadcast", "event": "system:restart"})
    assert status == 202 and body == {"target": "broadcast", "id": None, "event": "system:restart",
                                      "local_deliveries": 4}
    for client in everyone:
        assert (await client.expect("system:restart"))["data"] == {}

    await asyncio.sleep(0.1)  # anything misdelivered would have arrived by now
    assert [len(c.received("system:maintenance")) for c in everyone] == [1, 1, 0, 0]
    assert [len(c.received("system:notice")) for c in everyone] == [1, 0, 1, 0]
    status, body = await publish(api, {"target": "user", "id": "nobody", "event": "system:notice"})
    assert status == 202 and body["local_deliveries"] == 0


async def test_only_admins_publish_and_disconnect(api) -> None:
    bob = await connect(api, "bob")
    for roles in (("editor",), ("reader",), ("author", "editor")):
        status, body = await publish(api, {"target": "broadcast", "event": "system:x"}, roles=roles)
        assert "admin" in error_of(status, body, 403, "forbidden")["message"]
        status, body, _ = await call(api, "POST", "/api/admin/disconnect", {"user_id": "bob"}, as_user="eve",
                                     roles=roles)
        error_of(status, body, 403, "forbidden")
    for path, body in (("/api/admin/publish", {"target": "broadcast", "event": "system:x"}),
                       ("/api/admin/disconnect", {"user_id": "bob"})):
        error_of(*(await call(api, "POST", path, body))[:2], 401, "unauthorized")
    await asyncio.sleep(0.1)
    assert bob.received("system:x") == [] and bob.close_code is None


@pytest.mark.parametrize("body, field", [
    ({"target": "broadcast", "event": "message:received"}, "event"),  # spoofing a chat message
    ({"target": "broadcast", "event": "system:shutdown"}, "event"),  # the server's own
    ({"target": "broadcast", "event": "system:"}, "event"),
    ({"target": "broadcast", "event": "System:Notice"}, "event"),
    ({"target": "broadcast", "event": "system:a b"}, "event"),
    ({"target": "broadcast", "event": "system:" + "x" * 49}, "event"),
    ({"target": "broadcast"}, "event"),
    ({"target": "everyone", "event": "system:x"}, "target"),
    ({"event": "system:x"}, "target"),
    ({"target": "broadcast", "id": "book:1", "event": "system:x"}, "id"),
    ({"target": "room", "event": "system:x"}, "id"),
    ({"target": "room", "id": "a room", "event": "system:x"}, "id"),
    ({"target": "user", "id": "x" * 129, "event": "system:x"}, "id"),
    ({"target": "broadcast", "event": "system:x", "data": "text"}, "data"),
    ({"target": "broadcast", "event": "system:x", "data": [1]}, "data"),
    ({"target": "broadcast", "event": "system:x", "priority": 1}, "priority"),
])
async def test_publish_refuses_bad_requests_precisely(api, body, field) -> None:
    status, payload = await publish(api, body)
    assert field in error_of(status, payload, 400, "invalid_input")["fields"]


async def test_disconnect_closes_every_socket_of_the_user_with_4003(api) -> None:
    bob, bob_phone, alice = await connect(api, "bob"), await connect(api, "bob"), await connect(api, "alice")
    status, body, _ = await call(api, "POST", "/api/admin/disconnect", {"user_id": "bob", "reason": "abuse report"},
                                 as_user="root", roles=("admin",))
    assert status == 200 and body == {"user_id": "bob", "disconnected": 2}
    for connection in (bob, bob_phone):
        assert await connection.closed() == 4003
        assert connection.close_reason == "abuse report"
    assert (await alice.ok("ping", {}))["server_time"] > 0  # the others stay connected
    status, body, _ = await call(api, "POST", "/api/admin/disconnect", {"user_id": "alice"},
                                 as_user="root", roles=("admin",))
    assert body["disconnected"] == 1 and await alice.closed() == 4003
    assert alice.close_reason == "disconnected by an operator"

    for bad, field in (({"user_id": "a b"}, "user_id"), ({}, "user_id"),
                       ({"user_id": "bob", "reason": "é" * 70}, "reason"),  # 70 characters, 140 bytes
                       ({"user_id": "bob", "reason": "x" * 101}, "reason"), ({"user_id": "bob", "code": 1000}, "code")):
        status, payload, _ = await call(api, "POST", "/api/admin/disconnect", bad, as_user="root", roles=("admin",))
        assert field in error_of(status, payload, 400, "invalid_input")["fields"], bad


async def test_admin_calls_are_on_the_strict_tier(start_app) -> None:
    app = await start_app(RATE_LIMIT_STRICT_MAX="2")
    for _ in range(2):
        assert (await publish(app, {"target": "broadcast", "event": "system:x"}))[0] == 202
    status, body, response = await call(app, "POST", "/api/admin/disconnect", {"user_id": "bob"},
                                        as_user="root", roles=("admin",))
    assert error_of(status, body, 429, "rate_limited")["policy"] == "strict"
    assert int(response.headers["Retry-After"]) >= 1
    # The general tier is separate: reading still works.
    assert (await call(app, "GET", "/api/presence", as_user="root", roles=("admin",)))[0] == 200

"""Room history and presence over REST, checked against what WebSocket clients of the same
server send and see."""

from __future__ import annotations

import pytest

from tests.support.api import UNLIMITED, call, error_of
from tests.support.ws import WSClient, make_token


@pytest.fixture
async def api(start_app):
    return await start_app(**UNLIMITED)


async def connect(app, user: str) -> WSClient:
    return await WSClient.connect(app.ws_url(), make_token(user))


async def joined(app, user: str, room: str = "book:42") -> WSClient:
    client = await connect(app, user)
    await client.ok("join:room", {"room": room})
    return client


async def history(app, query: str = "", room: str = "book:42") -> tuple[int, dict]:
    status, body, _ = await call(app, "GET", f"/api/rooms/{room}/messages{query}", as_user="rita")
    return status, body


async def test_history_has_the_semantics_of_history_fetch(api) -> None:
    alice = await joined(api, "alice")
    for n in range(1, 6):
        await alice.ok("message:send", {"room": "book:42", "text": f"m{n}", "client_msg_id": f"c{n}"})

    status, body = await history(api)
    assert status == 200 and body["room"] == "book:42" and not body["has_more"]
    assert [(m["seq"], m["text"], m["sender"]) for m in body["messages"]] == [
        (n, f"m{n}", "alice") for n in range(1, 6)]
    for query, data, seqs, more in (
        ("?limit=2", {"limit": 2}, [4, 5], True),  # the newest
        ("?after=2&limit=2", {"after": 2, "limit": 2}, [3, 4], True),  # replay after a reconnect
        ("?after=4", {"after": 4}, [5], False),
        ("?before=3", {"before": 3}, [1, 2], False),  # scroll-back
    ):
        status, body = await history(api, query)
        assert status == 200
        assert ([m["seq"] for m in body["messages"]], body["has_more"]) == (seqs, more), query
        fetched = await alice.ok("history:fetch", {"room": "book:42", **data})
        assert fetched["messages"] == body["messages"] and fetched["has_more"] == body["has_more"]
    status, body = await history(api, room="book:7")
    assert status == 200 and body == {"room": "book:7", "messages": [], "has_more": False}


async def test_history_refuses_bad_parameters_and_reserved_rooms(api) -> None:
    for query, field in (("?before=3&after=1", "before"), ("?limit=101", "limit"), ("?limit=0", "limit"),
                         ("?before=0", "before"), ("?after=-1", "after"), ("?after=x", "after"),
                         ("?page=2", "page"), ("?limit=5&limit=6", "limit")):
        status, body = await history(api, query)
        assert field in error_of(status, body, 400, "invalid_input")["fields"], query
    for room in ("a%20b", "x" * 65, "book%2F42", "%F0%9F%93%9A"):
        status, body = await history(api, room=room)
        assert "room" in error_of(status, body, 400, "invalid_input")["fields"], room
    for room in ("dm:alice:bob", "user:alice", "_system"):
        status, body = await history(api, room=room)
        error_of(status, body, 403, "forbidden")
    error_of(*(await call(api, "GET", "/api/rooms/book:42/messages"))[:2], 401, "unauthorized")


async def test_room_presence_lists_the_members_online_with_their_status(api) -> None:
    alice, bob = await joined(api, "alice"), await joined(api, "bob")
    await bob.ok("presence:update", {"status": "away"})
    await joined(api, "carol", room="book:7")
    status, body, _ = await call(api, "GET", "/api/rooms/book:42/presence", as_user="rita")
    assert status == 200 and body["room"] == "book:42"
    assert [(m["user"], m["status"]) for m in body["members"]] == [("alice", "online"), ("bob", "away")]
    await bob.close()
    await alice.expect("room:left")
    _, body, _ = await call(api, "GET", "/api/rooms/book:42/presence", as_user="rita")
    assert [m["user"] for m in body["members"]] == ["alice"]
    _, body, _ = await call(api, "GET", "/api/rooms/book:1/presence", as_user="rita")
    assert body == {"room": "book:1", "members": []}
    error_of(*(await call(api, "GET", "/api/rooms/dm:alice:bob/presence", as_user="rita"))[:2], 403, "forbidden")
    error_of(*(await call(api, "GET", "/api/rooms/a%20b/presence", as_user="rita"))[:2], 400, "invalid_input")
    error_of(*(await call(api, "GET", "/api/rooms/book:42/presence"))[:2], 401, "unauthorized")


async def test_user_presence_online_offline_and_never_seen(api) -> None:
    alice = await connect(api, "alice")
    status, body, _ = await call(api, "GET", "/api/presence/alice", as_user="rita")
    assert status == 200 and (body["user"], body["status"]) == ("alice", "online")
    await alice.close()
    _, body, _ = await call(api, "GET", "/api/presence/alice", as_user="rita")
    assert body["status"] == "offline" and body["last_seen"].endswith("Z")
    _, body, _ = await call(api, "GET", "/api/presence/nobody", as_user="rita")
    assert body == {"user": "nobody", "status": "offline", "last_seen": None}
    for bad in ("a%20b", "x" * 129):
        status, body, _ = await call(api, "GET", f"/api/presence/{bad}", as_user="rita")
        assert "user_id" in error_of(status, body, 400, "invalid_input")["fields"]
    error_of(*(await call(api, "GET", "/api/presence/alice"))[:2], 401, "unauthorized")


async def test_connected_users_are_for_admins(api) -> None:
    await connect(api, "bob")
    await connect(api, "alice")
    await connect(api, "alice")
    status, body, _ = await call(api, "GET", "/api/presence", as_user="root", roles=("admin",))
    assert status == 200 and body == {"users": ["alice", "bob"], "count": 2}
    for roles in (("reader",), ("editor",)):
        error_of(*(await call(api, "GET", "/api/presence", as_user="eve", roles=roles))[:2], 403, "forbidden")
    error_of(*(await call(api, "GET", "/api/presence"))[:2], 401, "unauthorized")

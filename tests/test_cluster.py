"""Several processes as one server, through a real redis-server the tests kill and restart:
cross-process delivery (exactly once, in each sender's order), direct messages, presence
(including a SIGKILLed process), the server-side API, Redis outages, and subscriptions that
follow local interest."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.app import TEST_SECRET, RunningApp, json_body
from tests.support.procs import RedisProcess, ServerProcess
from tests.support.ws import WSClient, make_token


@pytest.fixture
def cluster_env(redis_url: str, mongo_url: str, mongo_db: str) -> dict[str, str]:
    return {
        "MANGU_ENV": "test", "PORT": "0", "LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "JWT_SECRET": TEST_SECRET,
        "REDIS_URL": redis_url, "MONGODB_URL": mongo_url, "MONGODB_DB": mongo_db, "PRESENCE_TTL": "3",
        "REDIS_TIMEOUT": "500", "WS_MESSAGE_RATE": "1000", "WS_MESSAGE_BURST": "1000",
    }


@pytest.fixture
def other_process(cluster_env: dict[str, str]) -> Iterator[ServerProcess]:
    """server.py as a second process of the cluster."""
    server = ServerProcess(cluster_env).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def here(start_app, cluster_env: dict[str, str]) -> RunningApp:
    """This test's own process of the cluster (in process, so its server-side API is at hand)."""
    env = {k: v for k, v in cluster_env.items() if k not in ("PORT", "LOG_FORMAT", "LOG_LEVEL", "MANGU_ENV")}
    app = await start_app(**env)
    await _wait(lambda: app.services.bus.connected, "the bus to connect")
    return app


async def _wait(predicate: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _eventually_async(call: Any, accept: Any, what: str, timeout: float = 15) -> Any:
    """Await ``call()`` until ``accept`` takes its result (the processes resync on their own schedule)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await call()
        if accept(result):
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {result}"
        await asyncio.sleep(0.2)


async def member(url: str, user: str, room: str | None = "book:42") -> WSClient:
    client = await WSClient.connect(url, make_token(user))
    if room:
        await client.ok("join:room", {"room": room})
    return client


def channels(redis: RedisProcess, pattern: str = "mangu:room:*") -> set[str]:
    reply = redis.cli("PUBSUB", "CHANNELS", pattern)
    return {line for line in reply.split("\r\n") if line.startswith("mangu:")}


async def test_ten_senders_across_two_processes_every_member_gets_all_in_order_once(other_process, here) -> None:
    there = other_process.ws_url()
    senders = [await member(here.ws_url() if i % 2 else there, f"s{i}") for i in range(10)]
    listeners = [await member(here.ws_url(), "l-here"), await member(there, "l-there")]

    async def send_all(index: int, client: WSClient) -> None:
        for n in range(100):
            await client.ok("message:send", {"room": "book:42", "text": f"{index}:{n}", "client_msg_id": f"m{n}"},
                            timeout=60)

    await asyncio.gather(*(send_all(i, c) for i, c in enumerate(senders)))
    for client in listeners + senders:
        received = await client.wait_count("message:received", 1000, timeout=60)
        await asyncio.sleep(0.05)
        texts = [m["text"] for m in client.received("message:received")]
        assert len(texts) == 1000 and len(set(texts)) == 1000  # all, none twice
        for index in range(10):
            assert [int(t.split(":")[1]) for t in texts if t.startswith(f"{index}:")] == list(range(100))
        assert sorted(m["seq"] for m in received) == list(range(1, 1001))


async def test_direct_messages_and_presence_across_processes(other_process, here) -> None:
    alice = await member(here.ws_url(), "alice")
    bob = await member(other_process.ws_url(), "bob")
    bob_phone = await member(here.ws_url(), "bob", room=None)
    # the join ack lists members on every process
    carol = await WSClient.connect(other_process.ws_url(), make_token("carol"))
    members = (await carol.ok("join:room", {"room": "book:42"}))["members"]
    assert {m["user"] for m in members} == {"alice", "bob", "carol"}
    await alice.expect("room:joined", user="carol")

    alice_there = await member(other_process.ws_url(), "alice", room=None)
    await alice.ok("message:direct", {"to": "bob", "text": "across"})
    for client in (bob, bob_phone, alice_there):  # the sender's other connection, on the other process
        got = (await client.expect("message:direct"))["data"]
        assert (got["sender"], got["to"], got["text"]) == ("alice", "bob", "across")
    await asyncio.sleep(0.2)
    assert [len(c.received("message:direct")) for c in (bob, bob_phone, alice_there, alice)] == [1, 1, 1, 0]

    await bob.ok("presence:update", {"status": "busy"})
    assert (await alice.expect("presence:updated", user="bob"))["data"]["status"] == "busy"
    assert (await here.services.hub.get_user_presence("bob"))["status"] == "busy"
    assert set(await here.services.hub.get_connected_users()) >= {"alice", "bob", "carol"}


async def test_a_sigkilled_process_users_go_offline_within_the_ttl(here, cluster_env) -> None:
    doomed = await asyncio.to_thread(ServerProcess(cluster_env).start)  # (the app's loop keeps running)
    try:
        alice = await member(here.ws_url(), "alice")
        await member(doomed.ws_url(), "dave")
        await alice.expect("room:joined", user="dave")
        assert (await here.services.hub.get_user_presence("dave"))["status"] == "online"
        doomed.signal(signal.SIGKILL)
        killed = time.monotonic()
        offline = await alice.expect("presence:updated", timeout=10, user="dave")
        assert time.monotonic() - killed <= 3.5  # PRESENCE_TTL is 3 s (plus a little scheduling)
        assert offline["data"]["status"] == "offline" and offline["data"]["last_seen"]
        await alice.expect("room:left", user="dave")
        assert (await here.services.hub.get_user_presence("dave"))["status"] == "offline"
        assert "dave" not in await here.services.hub.get_connected_users()
        members = (await alice.ok("join:room", {"room": "book:42"}))["members"]
        assert [m["user"] for m in members] == ["alice"]
    finally:
        await asyncio.to_thread(doomed.stop)


async def test_server_side_api_reaches_other_processes(other_process, here) -> None:
    there_a = await member(other_process.ws_url(), "erin")
    there_b = await member(other_process.ws_url(), "frank", room="book:7")
    hub = here.services.hub
    await _wait(lambda: channels_seen(here), "subscriptions")

    hub.send_to_user("erin", "system:notice", {"n": 1})
    assert (await there_a.expect("system:notice"))["data"] == {"n": 1}
    hub.send_to_room("book:7", "system:room", {"n": 2})
    assert (await there_b.expect("system:room"))["data"] == {"n": 2}
    hub.broadcast("system:maintenance", {"at": "02:00"})
    for client in (there_a, there_b):
        assert (await client.expect("system:maintenance"))["data"] == {"at": "02:00"}
    await asyncio.sleep(0.2)
    assert there_b.received("system:notice") == [] and there_a.received("system:room") == []

    erin_here = await member(here.ws_url(), "erin", room=None)
    assert hub.disconnect_user("erin", 4003, "removed by an operator") == 1
    assert await there_a.closed(5) == 4003 and await erin_here.closed(5) == 4003
    assert there_a.close_reason == "removed by an operator"
    assert (await there_b.ok("ping"))["server_time"]  # nobody else


def channels_seen(app: RunningApp) -> bool:
    return app.services.bus.connected


async def test_subscribed_to_a_room_only_while_it_has_a_local_member(here, redis_server: RedisProcess) -> None:
    assert "mangu:room:book:9" not in channels(redis_server)
    first = await member(here.ws_url(), "gina", room="book:9")
    second = await member(here.ws_url(), "hal", room="book:9")
    await _wait(lambda: "mangu:room:book:9" in channels(redis_server), "the room subscription")
    await first.ok("leave:room", {"room": "book:9"})
    await asyncio.sleep(0.2)
    assert "mangu:room:book:9" in channels(redis_server)  # hal is still here
    await second.close()
    await _wait(lambda: "mangu:room:book:9" not in channels(redis_server), "the room unsubscription")
    # user channels follow the same rule
    assert "mangu:user:gina" in channels(redis_server, "mangu:user:*")
    await first.close()
    await _wait(lambda: "mangu:user:gina" not in channels(redis_server, "mangu:user:*"), "the user unsubscription")


async def wait_health(app: RunningApp, status: str, timeout: float = 10) -> dict:
    """Poll the deep check (cached for HEALTH_CACHE_MS) until it says ``status``."""
    deadline = time.monotonic() + timeout
    while True:
        response = await app.fetch("/api/health")
        report = json_body(response)
        if report["status"] == status:
            return {"code": response.code, **report}
        assert time.monotonic() < deadline, json.dumps(report["checks"])
        await asyncio.sleep(0.2)


async def test_redis_restart_mid_conversation(other_process, here, redis_server: RedisProcess) -> None:
    alice, ann = await member(here.ws_url(), "alice"), await member(here.ws_url(), "ann")
    bob = await member(other_process.ws_url(), "bob")
    await alice.ok("message:send", {"room": "book:42", "text": "before"})
    await bob.expect("message:received", text="before")

    await asyncio.to_thread(redis_server.kill)
    await _wait(lambda: not here.services.bus.connected, "the bus to notice")
    # members on one process keep talking
    await alice.ok("message:send", {"room": "book:42", "text": "during"})
    await ann.expect("message:received", text="during")
    report = await wait_health(here, "degraded")
    assert report["code"] == 200 and report["checks"]["redis"]["status"] == "fail"
    assert json_body(await here.fetch("/api/health/ready"))["status"] == "ready"

    await asyncio.to_thread(redis_server.start)
    await _wait(lambda: here.services.bus.connected, "the bus to reconnect", 15)
    deadline = time.monotonic() + 15
    while True:  # the other process reconnects on its own schedule
        reply = await alice.ok("message:send", {"room": "book:42", "text": f"after {time.monotonic()}"})
        try:
            await bob.expect("message:received", timeout=0.5, seq=reply["seq"])
            break
        except AssertionError:
            assert time.monotonic() < deadline, "cross-process delivery did not resume"
    texts = [m["text"] for m in bob.received("message:received")]
    assert len(texts) == len(set(texts))  # no duplicates
    # the missed one is in the history
    missed = await bob.ok("history:fetch", {"room": "book:42", "after": 1})
    assert "during" in [m["text"] for m in missed["messages"]]
    assert (await wait_health(here, "healthy"))["code"] == 200
    # presence is written again to the emptied Redis by both processes: each sees the other's
    # users online, and a join ack on either lists the members of both
    await _eventually_async(lambda: here.services.hub.get_user_presence("bob"), lambda e: e["status"] == "online",
                            "bob online as seen from this process")
    carol = await WSClient.connect(other_process.ws_url(), make_token("carol"))
    await _eventually_async(lambda: carol.ok("join:room", {"room": "book:42"}),
                            lambda ack: {m["user"] for m in ack["members"]} == {"alice", "ann", "bob", "carol"},
                            "the join ack on the other process to list both processes' members")
    cleo = await WSClient.connect(here.ws_url(), make_token("cleo"))
    members = (await cleo.ok("join:room", {"room": "book:42"}))["members"]
    assert {m["user"] for m in members} == {"alice", "ann", "bob", "carol", "cleo"}
    assert all(m["status"] == "online" for m in members)


async def test_admin_publish_reaches_sockets_on_two_processes(other_process, here) -> None:
    readers = [await member(here.ws_url(), "ivy", room="book:3"),
               await member(other_process.ws_url(), "jon", room="book:3")]
    bystander = await member(other_process.ws_url(), "kim", room="book:4")
    admin = {"Authorization": f"Bearer {make_token('root', roles=['admin'])}"}
    notice = {"message": "Maintenance at 02:00 UTC", "minutes": 15}
    for body, receivers in (
        ({"target": "room", "id": "book:3", "event": "system:maintenance", "data": notice}, readers),
        ({"target": "user", "id": "jon", "event": "system:maintenance", "data": notice}, readers[1:]),
        ({"target": "broadcast", "event": "system:maintenance", "data": notice}, [*readers, bystander]),
    ):
        response = await here.fetch("/api/admin/publish", method="POST", body=body, headers=admin)
        assert response.code == 202, response.body
        for client in receivers:
            assert (await client.expect("system:maintenance"))["data"] == notice
    await asyncio.sleep(0.2)
    assert [len(c.received("system:maintenance")) for c in (*readers, bystander)] == [2, 3, 1]
    response = await here.fetch("/api/admin/disconnect", method="POST", body={"user_id": "jon", "reason": "bye"},
                                headers=admin)
    assert response.code == 200
    assert await readers[1].closed(5) == 4003

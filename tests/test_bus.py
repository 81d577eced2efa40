"""The Redis bus against a real redis-server: delivery across two buses (two processes'
worth), reconnect and resubscribe after Redis restarts, a subscriber that stops answering,
the health probe, and callbacks that fail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from mangu.metrics import Metrics
from mangu.realtime.bus import Bus, BusUnavailable
from tests.support.app import eventually
from tests.support.procs import RedisProcess


@pytest.fixture
async def make_bus(redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    """``await make_bus(node_id, **options)``: a started Bus on the module's redis-server,
    with its own client and metrics (as one server process would have)."""
    made: list[tuple[Bus, Redis]] = []

    async def make(node_id: str, **options: Any) -> Bus:
        client = Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
        bus = Bus(client, node_id, Metrics(version="test"), timeout=options.pop("timeout", 1.0),
                  backoff_initial=0.05, backoff_max=0.5, **options)
        await bus.start()
        await eventually(lambda: bus.connected, what=f"bus {node_id} to connect")
        made.append((bus, client))
        return bus

    try:
        yield make
    finally:
        for bus, client in made:
            await bus.close()
            await client.aclose()


def sample(bus: Bus, name: str, **labels: str) -> float:
    return bus._metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_message_published_by_one_process_reaches_the_others(make_bus) -> None:
    a, b = await make_bus("node-a"), await make_bus("node-b")
    got: list[tuple[str, bytes]] = []
    await a.subscribe("room:book:1", lambda channel, data: got.append((channel, data)))

    receivers = await b.publish("room:book:1", b'{"text":"hi"}')
    await eventually(lambda: got, what="delivery")
    assert got == [("room:book:1", b'{"text":"hi"}')]
    assert receivers == 1
    assert sample(a, "mangu_bus_messages_total", direction="in") == 1
    assert sample(b, "mangu_bus_messages_total", direction="out") == 1
    assert sample(a, "mangu_bus_up") == 1

    await a.unsubscribe("room:book:1")
    assert await b.publish("room:book:1", b"after") == 0
    assert "room:book:1" not in a.channels


async def test_reconnects_and_resubscribes_after_redis_restarts(make_bus, redis_server: RedisProcess,
                                                                log_capture) -> None:
    a, b = await make_bus("node-a"), await make_bus("node-b")
    got: list[bytes] = []
    await a.subscribe("room:book:2", lambda channel, data: got.append(data))

    await asyncio.to_thread(redis_server.stop)
    await eventually(lambda: not a.connected, what="the bus to notice")
    assert sample(a, "mangu_bus_up") == 0
    with pytest.raises(BusUnavailable):
        await b.publish("room:book:2", b"lost")
    with pytest.raises(BusUnavailable):
        await a.probe(1.0)  # at once: the subscriber is known to be gone
    await a.subscribe("room:book:3", lambda channel, data: got.append(data))  # while down

    await asyncio.to_thread(redis_server.start)
    await eventually(lambda: a.connected and b.connected, what="both buses to reconnect")
    await b.publish("room:book:2", b"back")
    await b.publish("room:book:3", b"new")
    await eventually(lambda: len(got) == 2, what="delivery after the restart")
    assert sorted(got) == [b"back", b"new"]
    assert sample(a, "mangu_bus_reconnects_total") >= 1
    assert log_capture.find(message="bus disconnected; reconnecting")
    assert log_capture.find(message="bus reconnected")


async def test_a_subscriber_that_stops_answering_is_replaced(make_bus, redis_server: RedisProcess) -> None:
    bus = await make_bus("node-a", keepalive=0.2, timeout=0.3)
    got: list[bytes] = []
    await bus.subscribe("room:book:4", lambda channel, data: got.append(data))
    before = sample(bus, "mangu_bus_reconnects_total")
    # Redis stops answering every client for a while (the connection stays open, silent).
    redis_server.cli("CLIENT", "PAUSE", "1500", "ALL")
    await eventually(lambda: sample(bus, "mangu_bus_reconnects_total") > before, timeout=5,
                     what="the keep-alive to give up on the silent connection")
    await eventually(lambda: bus.connected, timeout=10, what="a new connection")
    publisher = Redis.from_url(redis_server.url)
    try:
        await publisher.publish("room:book:4", b"still here")
    finally:
        await publisher.aclose()
    await eventually(lambda: got == [b"still here"], what="delivery on the new connection")


async def test_probe_round_trip_and_failing_callbacks(make_bus, log_capture) -> None:
    bus = await make_bus("node-a")
    seconds = await bus.probe(1.0)
    assert 0 < seconds < 1.0

    got: list[bytes] = []

    def broken(channel: str, data: bytes) -> None:
        raise ValueError("bad payload")

    await bus.subscribe("room:bad", broken)
    await bus.subscribe("room:good", lambda channel, data: got.append(data))
    await bus.publish("room:bad", b"1")
    await bus.publish("room:good", b"2")
    await eventually(lambda: got == [b"2"], what="delivery after a failing callback")
    failed = log_capture.find(message="bus callback failed", channel="room:bad")
    assert failed and failed[0]["exception"]["type"] == "ValueError"
    assert bus.connected

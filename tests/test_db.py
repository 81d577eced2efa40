"""The database layer against a real nx-27017 child (or MONGODB_URL): the driver's pool and
timeout options, pool bounds and idle close, command timing and the slow-query log,
transactions (and their refusal by a standalone server), outages at start-up and while
running (over HTTP too), a health ping bounded against a server that never answers, a close
bounded when the driver does not finish, and the embedded development MongoDB."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import time
import warnings
from pathlib import Path

import psutil
import pytest
from pymongo import AsyncMongoClient

from mangu import __version__
from mangu.db import DatabaseUnavailable, TransactionsUnsupported
from mangu.embedded_mongo import EmbeddedMongo
from mangu.log import bind_context, reset_context
from tests.support.api import UNLIMITED, call
from tests.support.app import RunningApp, eventually, json_body
from tests.support.procs import MongoProcess, ServerProcess, port_open, wait_until
from tests.support.relay import StandaloneMongoRelay


def sample(app: RunningApp, name: str, **labels: str) -> float:
    return app.services.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_200_concurrent_queries_stay_within_the_pool_and_idle_connections_close(start_app) -> None:
    app = await start_app(DATABASE_POOL_MAX=5, DATABASE_POOL_MIN=0, DATABASE_IDLE_TIMEOUT=300)
    messages = app.services.messages
    await messages.append("book:1", "ana", "first", "c-1")

    results = await asyncio.gather(*(messages.history("book:1") for _ in range(200)))

    assert all(len(r) == 1 for r in results)
    stats = app.services.db.pool_stats()
    assert 1 <= stats["peak_open"] <= 5
    assert stats["max_size"] == 5
    assert stats["checkouts"] >= 200
    assert stats["in_use"] == 0 and stats["waiting"] == 0
    exposition = app.services.metrics.render(None)[0].decode()
    assert 'mangu_db_pool_connections{state="open"}' in exposition
    # Idle for longer than DATABASE_IDLE_TIMEOUT: the driver's maintenance closes them all.
    await eventually(lambda: app.services.db.pool_stats()["open"] == 0, what="idle connections to close")
    stats = app.services.db.pool_stats()
    assert stats["closed"] == stats["created"]
    assert sample(app, "mangu_db_pool_connections", state="open") == 0


async def test_slow_query_is_logged_with_correlation_id_and_every_command_is_timed(start_app, log_capture) -> None:
    app = await start_app(SLOW_QUERY_THRESHOLD=0)
    metrics_before = {c: sample(app, "mangu_db_command_duration_seconds_count", command=c)
                      for c in ("insert", "findAndModify", "find")}
    token = bind_context(correlation_id="req-slow-1")
    try:
        for i in range(3):
            await app.services.messages.append("book:9", "ana", f"secret text {i}", f"c-{i}")
            await app.services.messages.history("book:9", after=i)
    finally:
        reset_context(token)

    for command in ("insert", "findAndModify", "find"):
        counted = sample(app, "mangu_db_command_duration_seconds_count", command=command)
        assert counted - metrics_before[command] == 3, command
    slow = log_capture.find(message="slow_query", correlation_id="req-slow-1")
    assert {(r["command"], r["collection"]) for r in slow} >= {
        ("insert", "messages"), ("findAndModify", "counters"), ("find", "messages")
    }
    assert all(r["level"] == "WARNING" and r["duration_ms"] >= 0 for r in slow)
    assert sample(app, "mangu_db_slow_queries_total", command="insert") >= 3
    # names only: no document content, no filter value (pymongo's own DEBUG loggers, which do
    # show documents, are held at WARNING by configure_logging in the server)
    ours = "\n".join(line for line, r in zip(log_capture.lines, log_capture.records)
                     if r["logger"].startswith("mangu"))
    assert "slow_query" in ours
    assert "secret text" not in ours and "c-1" not in ours


async def test_query_logging_writes_a_debug_line_per_command(start_app, log_capture) -> None:
    app = await start_app(ENABLE_QUERY_LOGGING="true")
    await app.services.messages.history("book:3")
    lines = log_capture.find(message="db_command", command="find", collection="messages")
    assert lines and lines[0]["level"] == "DEBUG"
    assert not log_capture.find(message="slow_query")


async def test_transaction_commits(start_app) -> None:
    app = await start_app()
    db = app.services.db

    async def move(session) -> str:
        await db.collection("ledger").insert_one({"_id": "a", "n": 1}, session=session)
        await db.collection("ledger").insert_one({"_id": "b", "n": 2}, session=session)
        return "done"

    assert await db.transaction(move) == "done"
    async with db.operation() as mdb:
        assert sorted([d["_id"] async for d in mdb.ledger.find()]) == ["a", "b"]


async def test_transaction_abort_rolls_back_and_reraises(start_app) -> None:
    app = await start_app()
    db = app.services.db

    class Refused(Exception):
        pass

    async def half_then_fail(session) -> None:
        await db.collection("ledger").insert_one({"_id": "x", "n": 1}, session=session)
        raise Refused("no")

    with pytest.raises(Refused):
        await db.transaction(half_then_fail)
    async with db.operation() as mdb:
        assert await mdb.ledger.find_one({"_id": "x"}) is None


async def test_database_down_at_start_then_up_without_restart(start_app, own_mongo: MongoProcess, log_capture) -> None:
    started = time.monotonic()
    app = await start_app(MONGODB_URL=own_mongo.url, DATABASE_HEARTBEAT_INTERVAL=500)
    assert time.monotonic() - started < 3  # start-up did not wait for MongoDB
    db = app.services.db
    await eventually(lambda: db.known_down, what="the driver to find MongoDB down")

    health = await db.health(timeout=1.0)
    assert health["status"] == "fail" and health["latency_ms"] < 1000
    assert "127.0.0.1" not in health["message"]
    refused_before = sample(app, "mangu_db_calls_refused_total")
    t0 = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        await app.services.messages.append("book:1", "ana", "hello", "c-1")
    assert time.monotonic() - t0 < 0.1  # refused at once, not after DATABASE_TIMEOUT
    assert sample(app, "mangu_db_calls_refused_total") == refused_before + 1
    assert not db.available

    await asyncio.to_thread(own_mongo.start)
    await eventually(lambda: db.available, what="MongoDB to be seen again")
    message, created = await app.services.messages.append("book:1", "ana", "hello", "c-1")
    assert created and message["seq"] == 1
    assert (await db.health(timeout=1.0))["status"] == "pass"
    # the driver publishes topology changes within a second
    await eventually(lambda: sample(app, "mangu_db_up") == 1, what="db_up to be 1")
    assert log_capture.find(message="database available")


async def test_outage_while_running_fails_fast_and_recovers(start_app, own_mongo: MongoProcess, log_capture) -> None:
    await asyncio.to_thread(own_mongo.start)
    app = await start_app(MONGODB_URL=own_mongo.url, DATABASE_HEARTBEAT_INTERVAL=500)
    messages, db = app.services.messages, app.services.db
    await messages.append("book:2", "ana", "before", "c-1")

    await asyncio.to_thread(own_mongo.kill)
    await eventually(lambda: db.known_down, what="the outage to be noticed")
    t0 = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        await messages.history("book:2")
    assert time.monotonic() - t0 < 0.1
    outage = "database unavailable: store calls are refused until it answers again"
    await eventually(lambda: bool(log_capture.find(message=outage)), what="the outage log line")
    assert sample(app, "mangu_db_up") == 0

    await asyncio.to_thread(own_mongo.start)
    await eventually(lambda: db.available, what="MongoDB to come back")
    history = await messages.history("book:2")
    assert [m["text"] for m in history] == ["before"]  # the same data, no restart
    await eventually(lambda: sample(app, "mangu_db_up") == 1, what="db_up back to 1")


async def test_server_started_without_mongodb_serves_books_once_it_is_up(start_app, own_mongo: MongoProcess) -> None:
    app = await start_app(MONGODB_URL=own_mongo.url, DATABASE_HEARTBEAT_INTERVAL=500, HEALTH_CACHE_MS=0,
                          **UNLIMITED)
    await eventually(lambda: app.services.db.known_down, what="the driver to find MongoDB down")
    health = await app.fetch("/api/health")
    assert health.code == 503 and json_body(health)["checks"]["database"]["status"] == "fail"
    status, payload, _ = await call(app, "GET", "/api/books", as_user="rita")
    assert status == 503, payload

    await asyncio.to_thread(own_mongo.start)  # the same process, never restarted
    deadline = time.monotonic() + 15
    while (health := await app.fetch("/api/health")).code != 200:
        assert time.monotonic() < deadline, json_body(health)
        await asyncio.sleep(0.2)
    assert json_body(health)["checks"]["database"]["status"] == "pass"
    status, payload, _ = await call(app, "GET", "/api/books", as_user="rita")
    assert status == 200 and payload["items"] == []


async def test_transaction_on_a_standalone_server_is_a_clear_error(start_app, mongo_server: MongoProcess) -> None:
    # nx-27017 takes transactions (without isolating them), so the refusal of a standalone
    # mongod comes from a relay in front of it that answers startTransaction as mongod does;
    # every other command, the driver's handshake included, reaches nx-27017.
    relay = StandaloneMongoRelay(mongo_server.port).start()
    try:
        app = await start_app(MONGODB_URL=relay.url)
        db = app.services.db
        await eventually(lambda: db.available, what="MongoDB through the relay")

        async def write(session) -> None:
            await db.collection("ledger").insert_one({"_id": "never"}, session=session)

        with pytest.raises(TransactionsUnsupported) as err:
            await db.transaction(write)
        assert "need a replica set or a sharded cluster" in str(err.value)
        assert relay.refused == 1  # refused once: not retried as a transient error
        async with db.operation() as mdb:
            assert await mdb.ledger.find_one({"_id": "never"}) is None
    finally:
        relay.close()


async def test_the_driver_uses_the_configured_pool_and_timeouts(start_app, mongo_server: MongoProcess) -> None:
    relay = StandaloneMongoRelay(mongo_server.port).start()
    try:
        app = await start_app(MONGODB_URL=relay.url, DATABASE_POOL_MIN=2, DATABASE_POOL_MAX=20,
                              DATABASE_IDLE_TIMEOUT=45000, DATABASE_TIMEOUT=4000, DATABASE_STATEMENT_TIMEOUT=7000)
        # minPoolSize: two connections open with no request made
        await eventually(lambda: sample(app, "mangu_db_pool_connections", state="open") == 2,
                         what="the pool to open its two connections")
        assert app.services.db.pool_stats()["min_size"] == 2 and app.services.db.pool_stats()["max_size"] == 20
        # the name every connection introduces itself with, as MongoDB's logs and currentOp show it
        names = {h.get("client", {}).get("application", {}).get("name") for h in relay.handshakes}
        assert names == {f"mangu/{__version__}"}
        # the rest, as the driver holds them (nothing on the wire tells them apart)
        options = app.services.db._client.options
        pool = options.pool_options
        assert (pool.min_pool_size, pool.max_pool_size, pool.max_idle_time_seconds) == (2, 20, 45)
        assert pool.connect_timeout == 4 and options.server_selection_timeout == 4
        assert options.timeout == 7
        assert options.retry_reads and options.retry_writes
    finally:
        relay.close()


async def test_health_stays_within_its_bound_against_a_server_that_never_answers(start_app) -> None:
    with socket.socket() as silent:  # the kernel completes the connections; nothing answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        app = await start_app(MONGODB_URL=f"mongodb://127.0.0.1:{port}/", DATABASE_TIMEOUT=20000,
                              DATABASE_STATEMENT_TIMEOUT=20000)
        started = time.monotonic()
        health = await app.services.db.health(timeout=0.5)
        elapsed = time.monotonic() - started
    assert health["status"] == "fail"
    assert health["message"].startswith("ping timed out")  # the bound ended it, not a refusal
    assert elapsed < 3  # the 0.5 s bound, far from DATABASE_TIMEOUT's 20 s even on a loaded machine
    assert str(port) not in health["message"]


async def test_close_goes_on_when_the_driver_never_finishes_closing(start_app, log_capture) -> None:
    # The one stand-in here: in one CI run the driver's close, after ending its sessions,
    # waited for its monitor tasks past the test's 300 s limit, which cannot be brought
    # about on demand. So the real close runs (sessions ended, pool closed) and then never
    # returns, as it did there.
    app = await start_app(DATABASE_TIMEOUT=1000)
    db = app.services.db
    client = db._client
    real_close = client.close

    async def close_then_never_return() -> None:
        await real_close()
        await asyncio.Event().wait()

    client.close = close_then_never_return
    started = time.monotonic()
    await db.close()
    elapsed = time.monotonic() - started

    assert 5.5 < elapsed < 9  # DATABASE_TIMEOUT and 5 s
    warned = log_capture.find(message="database client did not finish closing within 6.0 s; going on without waiting")
    assert warned and warned[0]["level"] == "WARNING"
    with pytest.raises(DatabaseUnavailable, match="closed"):
        await app.services.messages.history("book:1")
    await db.close()  # a second close is a no-op, done at once
    assert time.monotonic() - started - elapsed < 1


async def test_a_close_while_mongodb_is_down_does_not_wait_database_timeout(start_app, own_mongo: MongoProcess) -> None:
    await asyncio.to_thread(own_mongo.start)
    app = await start_app(MONGODB_URL=own_mongo.url, DATABASE_TIMEOUT=20000, DATABASE_HEARTBEAT_INTERVAL=500)
    db = app.services.db
    await eventually(lambda: db.available, what="MongoDB to be seen")
    await app.services.messages.append("book:1", "ana", "hello", "c-1")  # the driver holds a session now
    await asyncio.to_thread(own_mongo.kill)
    await eventually(lambda: db.known_down, what="the driver to find MongoDB down")
    started = time.monotonic()
    await db.close()
    # Ending the driver's sessions needs a server: the close gives that 2 s, not the 20 s of
    # DATABASE_TIMEOUT (the server lets the sessions expire by themselves).
    assert time.monotonic() - started < 6
    with pytest.raises(DatabaseUnavailable, match="closed"):
        await app.services.messages.history("book:1")


def _connections_to(port: int, excluding: set[int]) -> list:
    """This process's TCP sockets to ``port`` (connected or connecting), but those from
    the local ports ``excluding``."""
    return [c for c in psutil.Process().net_connections("tcp")
            if c.raddr and c.raddr.port == port and c.laddr.port not in excluding]


async def test_a_close_while_the_driver_connects_leaves_no_socket_open(start_app) -> None:
    # A listener whose accept queue is full: the kernel drops the SYNs of further connects,
    # which wait for the driver's connect timeout (DATABASE_TIMEOUT). The close stops the
    # driver's monitor and pool tasks in the middle of those connects, which PyMongo 4.20
    # alone leaves to the collector (an unclosed socket and a ResourceWarning).
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            theirs = {filler.getsockname()[1] for filler in fillers}
            app = await start_app(MONGODB_URL=f"mongodb://127.0.0.1:{port}/", DATABASE_TIMEOUT=1000)
            await eventually(lambda: _connections_to(port, theirs), what="the driver connecting")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                started = time.monotonic()
                await app.services.db.close()
                elapsed = time.monotonic() - started
                gc.collect()
            assert not _connections_to(port, theirs)
            assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
            assert elapsed < 5  # the connects end by their 1 s bound, not a wait of their own
        finally:
            for filler in fillers:
                filler.close()


# -- the embedded development MongoDB


async def test_embedded_mongo_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    embedded = EmbeddedMongo(tmp_path / "mongo")
    url = await embedded.start()
    client: AsyncMongoClient = AsyncMongoClient(url)
    await client.mangu.notes.insert_one({"_id": 1, "text": "kept"})
    await client.close()
    pid = embedded.pid
    await embedded.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    url = await embedded.start()
    client = AsyncMongoClient(url)
    try:
        assert (await client.mangu.notes.find_one({"_id": 1}))["text"] == "kept"
    finally:
        await client.close()
        await embedded.stop()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _embedded_child(server: ServerProcess) -> tuple[int, int]:
    record = server.wait_for(lambda r: r.get("message") == "embedded MongoDB started", 30)
    return record["pid"], record["port"]


def test_server_without_database_settings_starts_embedded_mongo_and_stops_it(tmp_path: Path) -> None:
    server = ServerProcess({"MANGU_ENV": "development", "LOG_FORMAT": "json", "PORT": "0",
                            "DATA_DIR": str(tmp_path)}).start()
    try:
        pid, port = _embedded_child(server)
        assert (tmp_path / "mongo").is_dir()
        server.wait_for(lambda r: r.get("message") == "database set up", 30)  # indexes made through it
        assert server.stop() == 0
    finally:
        server.stop()
    wait_until(lambda: _gone(pid), 5, what="the embedded MongoDB to exit")
    assert not port_open(port)


def test_embedded_mongo_dies_with_a_killed_server(tmp_path: Path) -> None:
    server = ServerProcess({"MANGU_ENV": "test", "LOG_FORMAT": "json", "PORT": "0",
                            "DATA_DIR": str(tmp_path)}).start()
    try:
        pid, port = _embedded_child(server)
        server.signal(signal.SIGKILL)
        server.wait(10)
    finally:
        server.stop()
    wait_until(lambda: _gone(pid), 10, what="the orphaned embedded MongoDB to exit")
    assert not port_open(port)


def test_embedded_mongo_is_not_started_twice_on_one_data_dir(tmp_path: Path) -> None:
    env = {"MANGU_ENV": "test", "LOG_FORMAT": "json", "PORT": "0", "DATA_DIR": str(tmp_path)}
    first = ServerProcess(env).start()
    second = ServerProcess(env)
    try:
        _embedded_child(first)
        second.start()
        record = second.wait_for(lambda r: r.get("message", "").startswith("embedded MongoDB did not start"))
        assert record["level"] == "ERROR" and "in use by another embedded MongoDB" in record["message"]
    finally:
        second.stop()
        first.stop()


@pytest.mark.real_mongodb
async def test_transaction_writes_stay_invisible_outside_until_commit(start_app) -> None:
    # nx-27017 does not isolate transactions; this runs against the MongoDB of MONGODB_URL.
    app = await start_app()
    db = app.services.db
    seen: dict[str, object] = {}

    async def write_then_look(session) -> None:
        await db.collection("ledger").insert_one({"_id": "isolated"}, session=session)
        async with db.operation() as mdb:
            seen["outside"] = await mdb.ledger.find_one({"_id": "isolated"})

    await db.transaction(write_then_look)
    assert seen["outside"] is None
    async with db.operation() as mdb:
        assert await mdb.ledger.find_one({"_id": "isolated"}) == {"_id": "isolated"}

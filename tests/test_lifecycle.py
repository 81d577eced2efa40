"""The process under systemd: notify protocol (READY, STATUS, WATCHDOG, STOPPING, RELOADING),
the watchdog stopping when the event loop is blocked, the SIGHUP reload, and the graceful
shutdown on SIGTERM (in-flight requests finish, readiness 503 first, exit 0; a second
signal exits at once; presence leaves Redis; a WebSocket upgrade while draining is
503)."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from mangu.services import DRAINING
from tests.support.app import TEST_SECRET, RunningApp, eventually, json_body
from tests.support.notify import notified_server
from tests.support.procs import ServerProcess, port_open, wait_until
from tests.support.ws import WSClient, make_token

BASE = {"MANGU_ENV": "test", "PORT": "0", "LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "LOG_PROBES": "true"}


def request(port: int, path: str, timeout: float = 10.0) -> tuple[int, Any, http.client.HTTPMessage]:
    """One GET on a new connection: (status, JSON body or text, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(body), response.headers
    except ValueError:
        return response.status, body.decode(), response.headers


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    """One GET on a new connection: (status, JSON body or text)."""
    return request(port, path, timeout)[:2]


def messages_of(server: ServerProcess) -> list[str]:
    return [r.get("message", "") for r in server.records]


def index_of(messages: list[str], prefix: str) -> int:
    return next(i for i, m in enumerate(messages) if m.startswith(prefix))


# -- systemd notify protocol


def test_notify_socket_gets_ready_status_watchdog_then_stopping_in_order() -> None:
    # an abstract "@..." address, as systemd uses
    with notified_server({**BASE, "WATCHDOG_USEC": "300000"}) as (server, notify):
        ready_at, ready = notify.wait_for("READY", "1")
        assert ready["STATUS"].startswith("ready: 0 WebSocket connections, 0 HTTP requests in flight")
        # pinged at half of WATCHDOG_USEC (0.15 s), so several within a second
        wait_until(lambda: len(notify.received("WATCHDOG", "1", after=ready_at)) >= 4, 5, what="watchdog pings")
        server.signal(signal.SIGTERM)
        stopping_at, stopping = notify.wait_for("STOPPING", "1")
        assert stopping["STATUS"].startswith("draining:")
        assert server.wait(15) == 0
    keys = notify.keys()
    assert keys[0] == "STATUS"  # "starting", before anything slow
    # (pings may start during start-up too: systemd ignores them until READY=1)
    assert keys.index("READY") < keys.index("STOPPING")
    assert keys.index("WATCHDOG") < keys.index("STOPPING")
    assert "READY" not in keys[keys.index("STOPPING"):]
    pings = [at for at, _ in notify.received("WATCHDOG", "1", after=ready_at) if at < stopping_at]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < 1.0, gaps
    assert "Traceback" not in server.stderr


def test_a_blocked_event_loop_stops_the_watchdog_pings() -> None:
    with notified_server({**BASE, "WATCHDOG_USEC": "200000"}) as (server, notify):
        ready_at, _ = notify.wait_for("READY", "1")
        wait_until(lambda: len(notify.received("WATCHDOG", after=ready_at)) >= 3, 5, what="watchdog pings")
        sent = time.monotonic()
        status, body = get(server.port, "/_test/block?ms=2000")
        answered = time.monotonic()
        assert (status, body) == (200, {"blocked_ms": 2000})
        # the loop was surely blocked from shortly after the request until shortly before the answer
        assert notify.received("WATCHDOG", after=sent + 0.4) == notify.received("WATCHDOG", after=answered - 0.1)
        resumed = len(notify.received("WATCHDOG", after=answered))
        wait_until(lambda: len(notify.received("WATCHDOG", after=answered)) >= resumed + 3, 5, what="pings to resume")


def test_watchdog_pings_only_for_the_pid_systemd_names() -> None:
    with notified_server({**BASE, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}) as (server, notify):
        notify.wait_for("READY", "1")
        time.sleep(0.5)  # five ping intervals
        assert notify.received("WATCHDOG") == []
        assert server.stop() == 0


def test_a_notify_socket_nobody_listens_on_never_stops_the_server(tmp_path: Path) -> None:
    server = ServerProcess({**BASE, "NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "200000"}).start()
    try:
        assert get(server.port, "/ping") == (200, "pong")
        record = server.wait_for(lambda r: r.get("message", "").startswith("systemd notification not sent"))
        assert record["level"] == "WARNING" and record["notification"] == ["STATUS"]
        server.signal(signal.SIGTERM)
        assert server.wait(15) == 0
    finally:
        server.stop()
    assert "Traceback" not in server.stderr


def test_sighup_reopens_the_log_file_and_rereads_the_log_level(tmp_path: Path) -> None:
    log_file = tmp_path / "mangu.log"
    env_file = tmp_path / "mangu.env"
    env_file.write_text(f"LOG_LEVEL=INFO\nLOG_FILE={log_file}\n")
    env = {key: value for key, value in BASE.items() if key != "LOG_LEVEL"}
    # a filesystem-path socket this time
    with notified_server(env, tmp_path / "notify", args=["--env-file", str(env_file)]) as (server, notify):
        assert get(server.port, "/ping")[0] == 200
        wait_until(lambda: "GET /ping 200" in log_file.read_text(), 5, what="the access line")

        log_file.rename(tmp_path / "mangu.log.1")  # what logrotate does
        env_file.write_text(f"LOG_LEVEL=WARNING\nLOG_FILE={log_file}\n")
        before = time.monotonic()
        server.signal(signal.SIGHUP)
        reloading_at, reloading = notify.wait_for("RELOADING", "1")
        # MONOTONIC_USEC is CLOCK_MONOTONIC, the clock this test reads too
        assert abs(int(reloading["MONOTONIC_USEC"]) / 1e6 - before) < 5
        notify.wait_for("READY", "1", after=reloading_at)

        assert get(server.port, "/ping")[0] == 200  # INFO: no longer logged
        assert get(server.port, "/_test/block?ms=0")[0] == 200  # logs a WARNING
        wait_until(lambda: "blocking the event loop" in log_file.read_text(), 5, what="the warning")
        new = log_file.read_text()
        assert "log files reopened" in new and "log level INFO -> WARNING" in new
        assert "GET /ping" not in new
        old = (tmp_path / "mangu.log.1").read_text()
        assert "GET /ping 200" in old and "log files reopened" not in old

        # a file that no longer validates: the level stays, the operator is told why
        env_file.write_text(f"LOG_LEVEL=LOUD\nLOG_FILE={log_file}\n")
        after = time.monotonic()
        server.signal(signal.SIGHUP)
        notify.wait_for("READY", "1", after=after)
        record = server.wait_for(lambda r: r.get("message", "").startswith("reload: the configuration"))
        assert record["level"] == "WARNING" and record["log_level"] == "WARNING"
        assert any(p.startswith("LOG_LEVEL='LOUD'") for p in record["problems"])
        server.signal(signal.SIGTERM)
        assert server.wait(15) == 0
    assert "Traceback" not in server.stderr


def test_a_log_file_that_cannot_be_reopened_is_reported_and_logging_goes_on(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    server = ServerProcess({**BASE, "LOG_FILE": str(log_dir / "mangu.log")}).start()
    try:
        shutil.rmtree(log_dir)  # nowhere to open a new file
        server.signal(signal.SIGHUP)
        record = server.wait_for(lambda r: r.get("message", "").startswith("log file not reopened"))
        assert record["level"] == "ERROR" and record["log_file"] == str(log_dir / "mangu.log")
        assert get(server.port, "/ping") == (200, "pong")
        server.wait_for(lambda r: r.get("path") == "/ping")  # still logging
        server.signal(signal.SIGTERM)
        assert server.wait(15) == 0
    finally:
        server.stop()
    assert server.stderr == ""


# -- graceful shutdown


def test_sigterm_lets_in_flight_requests_finish_after_readiness_turns_503(mongo_url: str, mongo_db: str) -> None:
    server = ServerProcess({
        **BASE, "MONGODB_URL": mongo_url, "MONGODB_DB": mongo_db,
        "SHUTDOWN_TIMEOUT": "8000", "SHUTDOWN_READY_DELAY": "1000",
    }).start()
    pool = ThreadPoolExecutor(10)
    try:
        assert get(server.port, "/api/health/ready") == (
            200, {"status": "ready", "reason": "ready", "node_id": wait_node_id(server)}
        )
        slow = [pool.submit(get, server.port, "/_test/slow?ms=3000", 20) for _ in range(10)]
        wait_until(lambda: messages_of(server).count("slow request started") == 10, 10, what="10 requests in flight")

        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        # readiness says 503 at once, on new connections, while the listener is still open...
        status, body, headers = wait_until(lambda: poll_ready(server.port), 1.0, interval=0.01, what="readiness 503")
        assert status == 503 and body["reason"] == "draining"
        assert headers["Connection"] == "close"  # the next request goes elsewhere
        # ...then the listener closes: new connections are refused
        wait_until(lambda: not port_open(server.port), 5, what="the listener to close")
        closed = time.monotonic()
        assert closed - signalled >= 0.9  # SHUTDOWN_READY_DELAY

        results = [future.result(timeout=20) for future in slow]
        assert results == [(200, {"slept_ms": 3000})] * 10
        assert server.wait(15) == 0
        assert time.monotonic() - signalled < 8  # well within SHUTDOWN_TIMEOUT
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        server.stop()
    messages = messages_of(server)
    started = index_of(messages, "shutdown started by SIGTERM")
    assert started < index_of(messages, "listener closed") < messages.index("stopped")
    listener = next(r for r in server.records if r.get("message") == "listener closed")
    assert listener["requests_in_flight"] == 10
    assert not any(m.startswith("shutdown timeout") for m in messages)
    assert "Traceback" not in server.stderr


def wait_node_id(server: ServerProcess) -> str:
    return server.wait_for(lambda r: "node_id" in r and r.get("logger") == "mangu.server")["node_id"]


def poll_ready(port: int) -> tuple[int, Any, http.client.HTTPMessage] | None:
    """Readiness on a new connection, when it answers 503."""
    answer = request(port, "/api/health/ready", timeout=2)
    return answer if answer[0] == 503 else None


def test_requests_past_the_shutdown_timeout_are_cut_and_the_process_still_exits_0(
    mongo_url: str, mongo_db: str
) -> None:
    # The session's MongoDB, not an embedded one: stopping that child may take up to its own
    # 5 s bound, which is not what this test times.
    server = ServerProcess({
        **BASE, "MONGODB_URL": mongo_url, "MONGODB_DB": mongo_db, "SHUTDOWN_TIMEOUT": "500",
    }).start()
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(catch(get, server.port, "/_test/slow?ms=20000", 30)))
    try:
        thread.start()
        server.wait_for(lambda r: r.get("message") == "slow request started")
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(10) == 0
        assert time.monotonic() - signalled < 5
        thread.join(10)
    finally:
        server.stop()
    assert isinstance(outcome[0], (http.client.HTTPException, OSError))  # the connection was closed
    warning = server.wait_for(lambda r: r.get("message", "").startswith("shutdown timeout"))
    assert warning["level"] == "WARNING" and warning["requests_in_flight"] == 1
    assert "Traceback" not in server.stderr


def catch(func: Any, *args: Any) -> Any:
    try:
        return func(*args)
    except Exception as exc:  # the outcome under test
        return exc


def test_a_second_sigterm_during_the_drain_exits_at_once_non_zero() -> None:
    server = ServerProcess({**BASE, "SHUTDOWN_TIMEOUT": "20000"}).start()
    thread = threading.Thread(target=catch, args=(get, server.port, "/_test/slow?ms=15000", 30), daemon=True)
    try:
        thread.start()
        server.wait_for(lambda r: r.get("message") == "slow request started")
        server.signal(signal.SIGTERM)
        server.wait_for(lambda r: r.get("message", "").startswith("listener closed"))
        again = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(5) == 128 + signal.SIGTERM
        assert time.monotonic() - again < 2
    finally:
        server.stop()
    record = server.wait_for(lambda r: r.get("message") == "second SIGTERM during shutdown: exiting now")
    assert record["level"] == "ERROR"
    assert "stopped" not in messages_of(server)
    assert "Traceback" not in server.stderr


# -- readiness and the test-only endpoints, in process


async def test_readiness_is_503_once_draining(app: RunningApp) -> None:
    response = await app.fetch("/api/health/ready")
    assert response.code == 200 and json_body(response)["status"] == "ready"
    app.services.state = DRAINING
    response = await app.fetch("/api/health/ready")
    assert response.code == 503
    assert json_body(response)["reason"] == "draining"


async def test_a_request_answered_after_draining_began_closes_its_connection(app: RunningApp) -> None:
    # http.client asks for keep-alive (HTTP/1.1 with no Connection field); Tornado's client would not.
    status, _, headers = await asyncio.to_thread(request, app.port, "/_test/slow?ms=0")
    assert status == 200 and headers["Connection"] is None  # kept alive while serving
    in_flight = asyncio.ensure_future(asyncio.to_thread(request, app.port, "/_test/slow?ms=400"))
    await eventually(lambda: app.services.in_flight.count == 1, what="the request to be in flight")
    app.services.state = DRAINING  # the shutdown begins while it is being served
    status, body, headers = await in_flight
    assert (status, body) == (200, {"slept_ms": 400})
    assert headers["Connection"] == "close"  # its next request goes elsewhere


async def test_test_only_endpoints_are_404_outside_the_test_environment(start_app, mongo_url: str) -> None:
    production = await start_app(MANGU_ENV="production", MONGODB_URL=mongo_url, CLIENT_URL="https://mangu.example")
    for path in ("/_test/slow?ms=0", "/_test/block?ms=0"):
        response = await production.fetch(path)
        assert response.code == 404 and json_body(response)["error"]["code"] == "not_found"
    test = await start_app()
    assert (await test.fetch("/_test/slow?ms=5")).code == 200
    for bad in ("abc", "-1", "60001"):
        response = await test.fetch(f"/_test/slow?ms={bad}")
        assert response.code == 400 and "ms:" in json_body(response)["error"]["message"]


async def test_sigterm_drains_websockets_spread_out_while_requests_finish(mongo_url: str, mongo_db: str) -> None:
    server = ServerProcess({
        **BASE, "MONGODB_URL": mongo_url, "MONGODB_DB": mongo_db, "JWT_SECRET": TEST_SECRET,
        "SHUTDOWN_TIMEOUT": "8000", "SHUTDOWN_DRAIN_MS": "1500", "SHUTDOWN_READY_DELAY": "1000",
    }).start()
    pool = ThreadPoolExecutor(10)
    try:
        url = f"ws://127.0.0.1:{server.port}/ws"
        clients = await asyncio.gather(*(WSClient.connect(url, make_token(f"reader{i}")) for i in range(100)))
        await asyncio.gather(*(c.ok("join:room", {"room": "book:7"}) for c in clients))
        slow = [pool.submit(get, server.port, "/_test/slow?ms=2000", 20) for _ in range(10)]
        await asyncio.to_thread(
            wait_until, lambda: messages_of(server).count("slow request started") == 10, 10, 0.02, "10 requests"
        )
        server.signal(signal.SIGTERM)
        started = time.monotonic()
        # readiness turns 503 while the listener is still open and before any socket is closed
        status, body, _ = await asyncio.to_thread(wait_until, lambda: poll_ready(server.port), 5, 0.01, "readiness 503")
        assert status == 503 and body["reason"] == "draining"
        assert all(c.close_code is None for c in clients)
        await asyncio.to_thread(wait_until, lambda: not port_open(server.port), 10, 0.02, "the listener to close")
        codes = await asyncio.gather(*(c.closed(10) for c in clients))
        closed_at = time.monotonic()
        assert codes == [1001] * 100
        for client in clients:
            notice = client.received("system:shutdown")
            assert notice == [{"reason": "server restarting", "reconnect": True}]
        assert closed_at - started >= 0.75  # spread over SHUTDOWN_DRAIN_MS, not all at once
        results = [future.result(timeout=20) for future in slow]
        assert results == [(200, {"slept_ms": 2000})] * 10
        assert await asyncio.to_thread(server.wait, 15) == 0
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        server.stop()
    drained = next(r for r in server.records if r.get("message", "").startswith("websockets drained"))
    assert drained["websockets_closed"] == 100
    assert "Traceback" not in server.stderr
    messages = messages_of(server)
    assert index_of(messages, "listener closed") < index_of(messages, "websockets drained")


async def test_sigterm_takes_this_process_and_its_users_out_of_redis_presence(
        redis_url: str, mongo_url: str, mongo_db: str) -> None:
    server = ServerProcess({
        **BASE, "MONGODB_URL": mongo_url, "MONGODB_DB": mongo_db, "JWT_SECRET": TEST_SECRET,
        "REDIS_URL": redis_url, "SHUTDOWN_DRAIN_MS": "500",
    }).start()
    users = {f"member{i}" for i in range(5)}
    cluster = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        node = wait_node_id(server)
        clients = await asyncio.gather(*(WSClient.connect(server.ws_url(), make_token(user)) for user in users))
        await asyncio.gather(*(c.ok("join:room", {"room": "book:7"}) for c in clients))
        # what other processes see while it runs
        await asyncio.to_thread(
            wait_until, lambda: set(cluster.zrange("mangu:online", 0, -1)) == users, 10, 0.05, "users online"
        )
        assert node in cluster.zrange("mangu:nodes", 0, -1)
        assert cluster.smembers(f"mangu:nu:{node}") == users
        assert cluster.zcard("mangu:rm:book:7") == 5

        server.signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait, 25) == 0
        assert node not in cluster.zrange("mangu:nodes", 0, -1)
        assert cluster.zrange("mangu:online", 0, -1) == []
        assert cluster.exists(f"mangu:nu:{node}", "mangu:rm:book:7", *(f"mangu:pres:{u}" for u in users)) == 0
        assert all(cluster.exists(f"mangu:seen:{u}") for u in users)  # offline now, with a last_seen
    finally:
        cluster.close()
        server.stop()
    assert not any(r.get("level") == "ERROR" for r in server.records)
    assert "Traceback" not in server.stderr


def test_a_websocket_upgrade_while_draining_is_503_json_with_retry_after() -> None:
    server = ServerProcess({**BASE, "JWT_SECRET": TEST_SECRET, "SHUTDOWN_READY_DELAY": "5000"}).start()
    try:
        server.signal(signal.SIGTERM)
        wait_until(lambda: poll_ready(server.port), 4, what="readiness 503")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request("GET", f"/ws?token={make_token('late')}", headers={
                "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            })
            response = conn.getresponse()
            body = json.loads(response.read())
        finally:
            conn.close()
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        assert response.headers["Content-Type"].startswith("application/json")
        assert body["error"]["code"] == "unavailable"
        assert server.wait(20) == 0
    finally:
        server.stop()
    assert "Traceback" not in server.stderr

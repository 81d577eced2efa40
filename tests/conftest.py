"""Fixtures: real redis-server and nx-27017 child processes, and the real app on an unused port."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tests.support.app import LogCapture, RunningApp, make_settings
from tests.support.procs import MongoProcess, RedisProcess
from tests.support.sockets import track_socket_origins


@pytest.fixture(scope="session", autouse=True)
def socket_origins() -> Iterator[None]:
    """A socket left open fails its test with the stack that made it (tests/support/sockets.py)."""
    stop = track_socket_origins()
    yield
    stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="also run the long soak and load tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Deselected, not skipped: these need something CI does not have, and say so in the header.
    keep, drop = [], []
    real_mongo = bool(os.environ.get("MONGODB_URL"))
    soak = config.getoption("--soak")
    for item in items:
        if (item.get_closest_marker("real_mongodb") and not real_mongo) or (
            item.get_closest_marker("soak") and not soak
        ):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config: pytest.Config) -> list[str]:
    mongo = os.environ.get("MONGODB_URL")
    return [
        "mongodb: " + ("MONGODB_URL (real-MongoDB tests included)" if mongo
                       else "nx-27017 child (real_mongodb tests deselected)"),
        f"soak tests: {'included' if config.getoption('--soak') else 'deselected (use --soak)'}",
    ]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisProcess]:
    """A private redis-server for this test module; tests may kill and restart it."""
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """A clean database on the module's Redis, restarted first if a test left it down."""
    if not redis_server.running:
        redis_server.start()
    redis_server.cli("FLUSHALL")
    return redis_server.url


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoProcess]:
    """One nx-27017 child for the session (tests that stop MongoDB start their own)."""
    server = MongoProcess(tmp_path_factory.mktemp("mongo")).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def own_mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoProcess]:
    """An nx-27017 of this test's own, not started yet: the test starts, stops and kills it."""
    server = MongoProcess(tmp_path_factory.mktemp("own-mongo"))
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def mongo_url(request: pytest.FixtureRequest) -> str:
    """MONGODB_URL when set (a real MongoDB), else the session's nx-27017 child."""
    url = os.environ.get("MONGODB_URL")
    if url:
        return url
    return request.getfixturevalue("mongo_server").url


@pytest.fixture
def mongo_db(request: pytest.FixtureRequest) -> str:
    """A database name of this test's own (parametrized tests included: their names differ
    only at the end, so the name carries a digest of the whole test name)."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:32]
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    return f"{name}_{digest}_{os.getpid()}"


@pytest.fixture
def log_capture() -> Iterator[LogCapture]:
    handler = LogCapture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
async def start_app(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Any]]:
    """``await start_app(VAR=value, ...)``: the real app on an unused port with those settings.

    Unless ``MONGODB_URL`` is given, it uses ``mongo_url`` (the session's nx-27017, or
    MONGODB_URL) with a database of this test's own.
    """
    apps: list[RunningApp] = []

    async def start(**overrides: Any) -> RunningApp:
        if "MONGODB_URL" not in overrides:
            overrides["MONGODB_URL"] = request.getfixturevalue("mongo_url")
            overrides.setdefault("MONGODB_DB", request.getfixturevalue("mongo_db"))
        app = await RunningApp(make_settings(**overrides)).start()
        apps.append(app)
        return app

    try:
        yield start
    finally:
        for app in reversed(apps):
            await app.stop()


@pytest.fixture
async def app(start_app: Callable[..., Any]) -> RunningApp:
    """The app with test defaults: no Redis; the session's nx-27017 with a database of its own."""
    return await start_app()

"""A WebSocket test client over a real socket (Tornado's client), speaking docs/protocol.md."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import jwt
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.support.app import TEST_SECRET


def make_token(sub: str = "alice", ttl: float = 3600, secret: str = TEST_SECRET, algorithm: str = "HS256",
               **claims: Any) -> str:
    now = time.time()
    payload = {"sub": sub, "iat": int(now), "exp": int(now + ttl), **claims}
    return jwt.encode(payload, secret, algorithm=algorithm)


class WSClient:
    """One connection. ``events`` holds every frame received, in order."""

    _refs = itertools.count(1)
    opened: list[WSClient] = []  # closed by the conftest fixture after each test

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []
        self._consumed: set[int] = set()
        self._closed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())
        WSClient.opened.append(self)

    @classmethod
    async def connect(cls, url: str, token: str | None = None, *, header_token: str | None = None,
                      origin: str | None = None, wait_ready: bool = True, **kwargs: Any) -> WSClient:
        headers = {}
        if header_token:
            headers["Authorization"] = f"Bearer {header_token}"
        if origin:
            headers["Origin"] = origin
        if token:
            url += ("&" if "?" in url else "?") + f"token={token}"
        request = HTTPRequest(url, headers=headers, connect_timeout=10, request_timeout=10)
        conn = await websocket_connect(request, **kwargs)
        client = cls(conn)
        if wait_ready and (token or header_token):
            await client.expect("session:ready")
        return client

    async def _read(self) -> None:
        while True:
            message = await self.conn.read_message()
            if message is None:
                self._closed.set()
                self._arrived.set()
                return
            self.events.append(json.loads(message))
            self._arrived.set()

    def send(self, event: str, data: Any = None, ref: str | None = None) -> None:
        frame: dict[str, Any] = {"event": event}
        if data is not None:
            frame["data"] = data
        if ref is not None:
            frame["ref"] = ref
        self.conn.write_message(json.dumps(frame))

    def send_raw(self, text: str | bytes, binary: bool = False) -> None:
        self.conn.write_message(text, binary=binary)

    async def request(self, event: str, data: Any = None, timeout: float = 10) -> dict[str, Any]:
        """Send with a fresh ref; return the ack or error frame carrying that ref."""
        ref = f"r{next(self._refs)}"
        self.send(event, data, ref)
        return await self.wait_for(lambda f: f.get("ref") == ref and f["event"] in ("ack", "error"), timeout)

    async def ok(self, event: str, data: Any = None, timeout: float = 10) -> dict[str, Any]:
        """request() that must be acked; returns the ack's data."""
        reply = await self.request(event, data, timeout)
        assert reply["event"] == "ack", reply
        return reply["data"]

    async def wait_for(self, predicate: Any, timeout: float = 10) -> dict[str, Any]:
        """The first matching frame not already returned by an earlier wait_for/expect."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(len(self.events)):
                if index not in self._consumed and predicate(self.events[index]):
                    self._consumed.add(index)
                    return self.events[index]
            if self._closed.is_set():
                raise AssertionError(f"connection closed ({self.close_code}) while waiting; got {self.events[-5:]}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for a frame; last frames: {self.events[-5:]}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass

    async def expect(self, event: str, timeout: float = 10, **fields: Any) -> dict[str, Any]:
        return await self.wait_for(
            lambda f: f["event"] == event and all(f.get("data", {}).get(k) == v for k, v in fields.items()), timeout
        )

    async def wait_count(self, event: str, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """Wait until ``count`` frames of ``event`` have arrived; their data."""
        deadline = time.monotonic() + timeout
        while len(self.received(event)) < count:
            if self._closed.is_set() or time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received(event))} of {count} {event} frames")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                pass
        return self.received(event)

    def received(self, event: str) -> list[dict[str, Any]]:
        return [f["data"] for f in self.events if f["event"] == event]

    async def closed(self, timeout: float = 10) -> int | None:
        await asyncio.wait_for(self._closed.wait(), timeout)
        return self.conn.close_code

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    @property
    def close_reason(self) -> str | None:
        return self.conn.close_reason

    async def close(self, code: int | None = None) -> None:
        if not self._closed.is_set():
            self.conn.close(code)
            try:
                await asyncio.wait_for(self._closed.wait(), 5)
            except TimeoutError:
                pass
        self._reader.cancel()

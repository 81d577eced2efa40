"""The realtime protocol over real sockets: rooms, messages, history and replay, direct
messages, typing, presence, validation, limits and flow control."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
import zlib
from collections.abc import Iterator

import pytest

from tests.support.app import json_body
from tests.support.procs import MongoProcess
from tests.support.ws import WSClient, make_token


@pytest.fixture
async def rt(start_app, mongo_url: str, mongo_db: str):
    return await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, WS_TYPING_TIMEOUT="0.5",
                           WS_ABUSE_LIMIT="5")


async def connect(app, user: str, **kwargs) -> WSClient:
    return await WSClient.connect(app.ws_url(), make_token(user), **kwargs)


async def joined(app, user: str, room: str = "book:42") -> WSClient:
    client = await connect(app, user)
    await client.ok("join:room", {"room": room})
    return client


async def test_join_lists_members_and_tells_the_others(rt) -> None:
    alice = await joined(rt, "alice")
    bob = await connect(rt, "bob")
    ack = await bob.ok("join:room", {"room": "book:42"})
    assert ack["room"] == "book:42"
    assert {(m["user"], m["status"]) for m in ack["members"]} == {("alice", "online"), ("bob", "online")}
    seen = await alice.expect("room:joined", room="book:42")
    assert seen["data"]["user"] == "bob" and seen["data"]["status"] == "online"
    assert (await bob.ok("leave:room", {"room": "book:42"})) == {"room": "book:42"}
    assert (await alice.expect("room:left"))["data"] == {"room": "book:42", "user": "bob"}
    reply = await bob.request("message:send", {"room": "book:42", "text": "hi"})
    assert reply["event"] == "error" and reply["data"]["code"] == "not_member"


async def test_message_is_stored_then_delivered_to_every_member(rt) -> None:
    alice, bob = await joined(rt, "alice"), await joined(rt, "bob")
    alice_second_tab = await joined(rt, "alice")
    outsider = await connect(rt, "carol")
    ack = await alice.ok("message:send", {"room": "book:42", "text": "Chapter 3!", "client_msg_id": "c-1"})
    assert ack["seq"] == 1 and ack["room"] == "book:42" and ack["id"] and ack["ts"].endswith("Z")
    for member in (alice, bob, alice_second_tab):
        got = (await member.expect("message:received"))["data"]
        assert got == {"id": ack["id"], "room": "book:42", "seq": 1, "sender": "alice", "text": "Chapter 3!",
                       "client_msg_id": "c-1", "ts": ack["ts"]}
    await asyncio.sleep(0.1)
    assert outsider.received("message:received") == []
    history = await outsider.ok("history:fetch", {"room": "book:42"})
    assert [m["text"] for m in history["messages"]] == ["Chapter 3!"]


async def test_retried_client_msg_id_is_stored_and_delivered_once(rt) -> None:
    alice, bob = await joined(rt, "alice"), await joined(rt, "bob")
    first = await alice.ok("message:send", {"room": "book:42", "text": "once", "client_msg_id": "retry-1"})
    again = await alice.ok("message:send", {"room": "book:42", "text": "once", "client_msg_id": "retry-1"})
    assert again == first
    await alice.ok("message:send", {"room": "book:42", "text": "next", "client_msg_id": "retry-2"})
    await bob.expect("message:received", text="next")
    assert [m["text"] for m in bob.received("message:received")] == ["once", "next"]
    history = await bob.ok("history:fetch", {"room": "book:42"})
    assert [(m["seq"], m["text"]) for m in history["messages"]] == [(1, "once"), (2, "next")]


async def test_replay_after_reconnect_returns_exactly_what_was_missed(rt) -> None:
    alice, bob = await joined(rt, "alice"), await joined(rt, "bob")
    for i in range(3):
        await alice.ok("message:send", {"room": "book:42", "text": f"before {i}"})
    await bob.expect("message:received", text="before 2")
    last_seen = bob.received("message:received")[-1]["seq"]
    await bob.close()
    for i in range(5):
        await alice.ok("message:send", {"room": "book:42", "text": f"missed {i}"})
    bob = await joined(rt, "bob")
    page = await bob.ok("history:fetch", {"room": "book:42", "after": last_seen, "limit": 3})
    assert [m["text"] for m in page["messages"]] == ["missed 0", "missed 1", "missed 2"] and page["has_more"]
    rest = await bob.ok("history:fetch", {"room": "book:42", "after": page["messages"][-1]["seq"]})
    assert [m["text"] for m in rest["messages"]] == ["missed 3", "missed 4"] and not rest["has_more"]
    back = await bob.ok("history:fetch", {"room": "book:42", "before": 3, "limit": 10})
    assert [m["seq"] for m in back["messages"]] == [1, 2]


async def test_ten_senders_hundred_messages_each_in_order_none_twice(rt) -> None:
    senders = [await joined(rt, f"s{i}") for i in range(10)]
    listeners = [await joined(rt, f"l{i}") for i in range(3)]

    async def send_all(index: int, client: WSClient) -> None:
        for n in range(100):
            await client.ok("message:send", {"room": "book:42", "text": f"{index}:{n}", "client_msg_id": f"m{n}"},
                            timeout=60)

    await asyncio.gather(*(send_all(i, c) for i, c in enumerate(senders)))
    for member in listeners + senders:
        await member.wait_count("message:received", 1000, 60)
        texts = [m["text"] for m in member.received("message:received")]
        assert len(texts) == 1000 and len(set(texts)) == 1000
        for index in range(10):
            mine = [int(t.split(":")[1]) for t in texts if t.startswith(f"{index}:")]
            assert mine == list(range(100))
    seqs = sorted(m["seq"] for m in listeners[0].received("message:received"))
    assert seqs == list(range(1, 1001))


async def test_direct_messages(rt) -> None:
    alice, alice2 = await connect(rt, "alice"), await connect(rt, "alice")
    bob, bob2 = await connect(rt, "bob"), await connect(rt, "bob")
    ack = await alice.ok("message:direct", {"to": "bob", "text": "psst", "client_msg_id": "d1"})
    assert ack["conversation"] == "dm:alice:bob" and ack["seq"] == 1
    for client in (bob, bob2, alice2):
        got = (await client.expect("message:direct"))["data"]
        assert (got["sender"], got["to"], got["text"], got["conversation"]) == ("alice", "bob", "psst", "dm:alice:bob")
    await asyncio.sleep(0.1)
    assert alice.received("message:direct") == []  # the sending connection has the ack instead
    await bob.ok("message:direct", {"to": "alice", "text": "hey"})
    history = await alice.ok("history:fetch", {"with": "bob"})
    assert [(m["sender"], m["text"]) for m in history["messages"]] == [("alice", "psst"), ("bob", "hey")]
    carol = await connect(rt, "carol")
    assert (await carol.ok("history:fetch", {"with": "bob"}))["messages"] == []  # her own (empty) conversation
    reply = await carol.request("join:room", {"room": "dm:alice:bob"})
    assert reply["data"]["code"] == "forbidden"


async def test_typing_is_relayed_throttled_and_stopped_by_silence_or_disconnect(rt) -> None:
    alice, bob = await joined(rt, "alice"), await joined(rt, "bob")
    for _ in range(5):
        alice.send("typing:start", {"room": "book:42"})
    started = await bob.expect("typing:start")
    assert started["data"] == {"room": "book:42", "user": "alice"}
    stopped = await bob.expect("typing:stop", timeout=3)  # silence for WS_TYPING_TIMEOUT (0.5 s)
    assert stopped["data"] == {"room": "book:42", "user": "alice"}
    assert len(bob.received("typing:start")) == 1  # five starts within a second: one relay
    assert alice.received("typing:start") == []  # never echoed to the typer
    await asyncio.sleep(1.1)
    await alice.ok("typing:start", {"room": "book:42"})
    await bob.expect("typing:start")
    await alice.close()
    await bob.expect("typing:stop", timeout=2)
    history = await bob.ok("history:fetch", {"room": "book:42"})
    assert history["messages"] == []  # typing is never stored


async def test_presence_online_away_offline_with_last_seen(rt) -> None:
    bob = await joined(rt, "bob")
    alice = await joined(rt, "alice")
    await bob.expect("room:joined", user="alice")
    ack = await alice.ok("presence:update", {"status": "away"})
    assert ack["status"] == "away"
    assert (await bob.expect("presence:updated"))["data"]["status"] == "away"
    alice_phone = await joined(rt, "alice")
    await alice.close()  # another connection remains: still not offline
    await asyncio.sleep(0.2)
    assert [p["status"] for p in bob.received("presence:updated")] == ["away"]
    before = time.time()
    await alice_phone.close()
    offline = (await bob.expect("presence:updated", status="offline"))["data"]
    assert offline["user"] == "alice" and offline["last_seen"]
    assert abs(time.mktime(time.strptime(offline["last_seen"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone - before) < 5
    await bob.expect("room:left", user="alice")
    members = (await bob.ok("join:room", {"room": "book:42"}))["members"]
    assert [m["user"] for m in members] == ["bob"]
    reply = await bob.request("presence:update", {"status": "invisible"})
    assert reply["data"]["code"] == "invalid_payload" and reply["data"]["field"] == "status"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2, 3]", "invalid_frame"),
        ('{"event": 42}', "invalid_frame"),
        ('{"event": "room:explode", "ref": "x1"}', "unknown_event"),
        ('{"event": "message:send", "data": "hello", "ref": "x2"}', "invalid_payload"),
        ('{"event": "message:send", "data": {"room": "book:42", "text": 7}, "ref": "x3"}', "invalid_payload"),
        ('{"event": "message:send", "data": {"room": "book:42", "text": "   "}, "ref": "x4"}', "invalid_payload"),
        ('{"event": "join:room", "data": {"room": "has space"}, "ref": "x5"}', "invalid_payload"),
        ('{"event": "join:room", "data": {"room": "' + "x" * 65 + '"}, "ref": "x6"}', "invalid_payload"),
        ('{"event": "join:room", "data": {"room": {"$gt": ""}}, "ref": "x7"}', "invalid_payload"),
        ('{"event": "join:room", "data": {"room": "_admin"}, "ref": "x8"}', "forbidden"),
        ('{"event": "history:fetch", "data": {"room": "book:42", "limit": 500}, "ref": "x9"}', "invalid_payload"),
        ('{"event": "history:fetch", "data": {"room": "book:42", "after": -1}, "ref": "x10"}', "invalid_payload"),
        ('{"event": "history:fetch", "data": {"room": "book:42", "with": "bob"}, "ref": "x11"}', "invalid_payload"),
        ('{"event": "message:direct", "data": {"to": "b o b", "text": "x"}, "ref": "x12"}', "invalid_payload"),
        ('{"event": "message:send", "data": {"room": "book:42", "text": "' + "y" * 4001 + '"}, "ref": "x13"}',
         "invalid_payload"),
        ('{"event": "ping", "ref": {"nested": true}}', "invalid_frame"),
        ('{"event": "typing:start", "data": {"room": "book:7"}, "ref": "x14"}', "not_member"),
        ('{"event": "leave:room", "data": {"room": "has space"}, "ref": "x15"}', "invalid_payload"),
        ('{"event": "history:fetch", "data": {"room": "_x"}, "ref": "x16"}', "forbidden"),
        ('{"event": "history:fetch", "data": {"room": "user:x"}, "ref": "x17"}', "forbidden"),
        ('{"event": "history:fetch", "data": {"room": "book:42", "before": 5, "after": 1}, "ref": "x18"}',
         "invalid_payload"),
    ],
)
async def test_invalid_frames_get_a_precise_error_and_the_connection_stays(rt, frame: str, code: str) -> None:
    client = await joined(rt, "alice")
    client.send_raw(frame)
    error = await client.expect("error")
    assert error["data"]["code"] == code and error["data"]["message"]
    ref = json.loads(frame).get("ref") if frame.startswith("{") and "ref" in frame else None
    if isinstance(ref, str):
        assert error["ref"] == ref
    assert (await client.ok("ping"))["server_time"]  # still open


async def test_binary_frames_and_repeated_abuse_close_1008(rt) -> None:
    client = await joined(rt, "alice")
    client.send_raw(b"\x00\x01", binary=True)
    assert (await client.expect("error"))["data"]["code"] == "unsupported_data"
    for _ in range(4):
        client.send_raw("{broken")
    assert await client.closed(5) == 1008


async def test_oversize_frame_closes_1009(rt) -> None:
    client = await joined(rt, "alice")
    client.send_raw(json.dumps({"event": "message:send", "data": {"room": "book:42", "text": "z" * 70_000}}))
    assert await client.closed(5) == 1009


def raw_ws(port: int, token: str, rcvbuf: int | None = None, deflate: bool = False) -> socket.socket:
    """A bare socket that completes the upgrade and then does only what the test says
    (``deflate``: with permessage-deflate negotiated)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    extension = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
    sock.sendall(
        f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extension}\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101")
    assert (b"permessage-deflate" in response) == deflate
    return sock


def client_frame(opcode: int, payload: bytes, rsv1: bool = False) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x80 | (0x40 if rsv1 else 0) | opcode, 0x80 | len(payload)]) + mask + masked


def deflated(payload: bytes) -> bytes:
    """A permessage-deflate message body (RFC 7692 7.2.1: the sync flush's tail removed)."""
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def server_frames(sock: socket.socket, timeout: float = 10) -> Iterator[tuple[int, bool, bytes]]:
    """(opcode, compressed, payload) of each frame the server sends, until the stream ends."""
    sock.settimeout(timeout)
    buffer = b""
    while True:
        while len(buffer) >= 2:
            length, header = buffer[1] & 0x7F, 2
            if length == 126:
                length, header = struct.unpack("!H", buffer[2:4])[0], 4
            elif length == 127:
                length, header = struct.unpack("!Q", buffer[2:10])[0], 10
            if len(buffer) < header + length:
                break
            yield buffer[0] & 0x0F, bool(buffer[0] & 0x40), buffer[header:header + length]
            buffer = buffer[header + length:]
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        buffer += chunk


def read_close(sock: socket.socket, timeout: float = 10) -> tuple[int | None, str]:
    """Read frames until a close frame; its status code and reason (None, "" without one)."""
    for opcode, _, payload in server_frames(sock, timeout):
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            return code, payload[2:].decode()
    return None, ""


def read_close_code(sock: socket.socket, timeout: float = 10) -> int | None:
    return read_close(sock, timeout)[0]


@pytest.mark.parametrize("payload", [struct.pack("!H", 999), struct.pack("!H", 1005), struct.pack("!H", 1006),
                                     struct.pack("!H", 2000), struct.pack("!H", 5000), b"\x03"])
async def test_invalid_close_codes_are_answered_1002(rt, payload: bytes) -> None:
    sock = await asyncio.to_thread(raw_ws, rt.port, make_token("alice"))
    try:
        sock.sendall(client_frame(0x8, payload))
        assert await asyncio.to_thread(read_close_code, sock) == 1002
    finally:
        sock.close()


async def test_valid_close_code_is_echoed(rt) -> None:
    sock = await asyncio.to_thread(raw_ws, rt.port, make_token("alice"))
    try:
        sock.sendall(client_frame(0x8, struct.pack("!H", 4000) + b"bye"))
        assert await asyncio.to_thread(read_close_code, sock) == 4000
    finally:
        sock.close()


async def test_invalid_utf8_in_a_text_frame_closes_1007(rt) -> None:
    sock = await asyncio.to_thread(raw_ws, rt.port, make_token("alice"))
    try:
        sock.sendall(client_frame(0x1, b'{"event": "ping", "data": {"x": "\xff\xfe"}}'))
        assert await asyncio.to_thread(read_close, sock) == (1007, "invalid UTF-8 in text frame")
    finally:
        sock.close()


async def test_invalid_utf8_in_a_compressed_text_frame_closes_1007(start_app, mongo_url, mongo_db) -> None:
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, WS_COMPRESSION="true")
    sock = await asyncio.to_thread(raw_ws, app.port, make_token("alice"), deflate=True)
    try:
        frames = server_frames(sock)
        inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)

        async def next_message() -> dict:
            opcode, compressed, payload = await asyncio.to_thread(next, frames)
            assert opcode == 0x1 and compressed
            return json.loads(inflater.decompress(payload + b"\x00\x00\xff\xff"))

        assert (await next_message())["event"] == "session:ready"
        for ref in ("1", "2"):  # two messages: the compression context carries over between them
            sock.sendall(client_frame(0x1, deflated(b'{"event": "ping", "ref": "%s"}' % ref.encode()), rsv1=True))
            reply = await next_message()
            assert (reply["event"], reply["ref"]) == ("ack", ref)
        sock.sendall(client_frame(0x1, deflated(b'{"event": "ping", "data": {"x": "\xff"}}'), rsv1=True))
        assert await asyncio.to_thread(read_close, sock) == (1007, "invalid UTF-8 in text frame")
    finally:
        sock.close()


async def test_frame_rate_limit_answers_rate_limited(start_app, mongo_url, mongo_db) -> None:
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, WS_MESSAGE_RATE="2", WS_MESSAGE_BURST="3",
                          WS_ABUSE_LIMIT="2")
    client = await connect(app, "alice")
    for n in range(8):  # sent at once: the burst of 3 is acked, most of the rest refused
        client.send("ping", ref=f"p{n}")
    replies = [await client.wait_for(lambda f, n=n: f.get("ref") == f"p{n}") for n in range(8)]
    assert [r["event"] for r in replies[:3]] == ["ack", "ack", "ack"]
    limited = [r["data"] for r in replies[3:] if r["event"] == "error"]
    assert len(limited) >= 2 and all(e["code"] == "rate_limited" for e in limited)
    assert all(0 < e["retry_after_ms"] <= 600 for e in limited)
    # a fast client is not an abusive one: WS_ABUSE_LIMIT (2) rate_limited replies do not close it
    limited = max(limited, key=lambda e: e["retry_after_ms"])
    await asyncio.sleep(limited["retry_after_ms"] / 1000 + 0.05)
    assert (await client.request("ping"))["event"] == "ack"


async def test_websocket_disabled_answers_404(start_app, mongo_url, mongo_db) -> None:
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, ENABLE_WEBSOCKET="false")
    response = await app.fetch("/ws", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Authorization": f"Bearer {make_token('alice')}",
    })
    assert response.code == 404 and json_body(response)["error"]["code"] == "not_found"


async def test_a_process_at_capacity_closes_new_connections_1013(start_app, mongo_url, mongo_db) -> None:
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, WS_MAX_CONNECTIONS="1")
    first = await connect(app, "alice")
    second = await WSClient.connect(app.ws_url(), make_token("bob"), wait_ready=False)
    assert await second.closed(5) == 1013 and second.close_reason == "server at capacity"
    assert not second.received("session:ready")
    assert (await first.ok("ping"))["server_time"]
    await first.close()
    third = await connect(app, "carol")  # the slot is free again
    await third.close()


async def test_connection_and_room_caps(start_app, mongo_url, mongo_db) -> None:
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, WS_MAX_CONNECTIONS_PER_USER="2",
                          WS_MAX_ROOMS="2")
    first, second = await connect(app, "alice"), await connect(app, "alice")
    third = await WSClient.connect(app.ws_url(), make_token("alice"), wait_ready=False)
    assert await third.closed(5) == 1008
    await first.ok("join:room", {"room": "a"})
    await first.ok("join:room", {"room": "b"})
    assert (await first.request("join:room", {"room": "c"}))["data"]["code"] == "room_limit"
    await second.close()
    again = await connect(app, "alice")  # a slot freed up
    await again.close()


async def test_an_application_room_policy_refuses_rooms_with_forbidden(start_app, mongo_url, mongo_db) -> None:
    rt = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db)  # WS_ABUSE_LIMIT 20: eight refusals here
    rt.services.hub.room_policy = lambda principal, room: room.startswith("book:") or "editor" in principal.roles
    reader = await connect(rt, "alice")
    editor = await WSClient.connect(rt.ws_url(), make_token("erin", roles=["editor"]))
    for request in (("join:room", {"room": "staff:1"}), ("history:fetch", {"room": "staff:1"})):
        reply = await reader.request(*request)
        assert reply["event"] == "error" and reply["data"]["code"] == "forbidden"
    await reader.ok("join:room", {"room": "book:1"})
    await editor.ok("join:room", {"room": "staff:1"})
    assert (await editor.ok("history:fetch", {"room": "staff:1"}))["messages"] == []
    headers = {"Authorization": f"Bearer {make_token('alice')}"}
    assert (await rt.fetch("/api/rooms/staff:1/messages", headers=headers)).code == 403
    # reserved rooms stay refused whatever a policy allows: dm: rooms hold direct messages
    rt.services.hub.room_policy = lambda principal, room: True
    await editor.ok("message:direct", {"to": "bob", "text": "private"})
    for room in ("dm:bob:erin", "user:bob", "_admin"):
        for request in (("join:room", {"room": room}), ("history:fetch", {"room": room})):
            assert (await reader.request(*request))["data"]["code"] == "forbidden"
        assert (await rt.fetch(f"/api/rooms/{room}/messages", headers=headers)).code == 403


async def test_storage_down_refuses_sends_but_typing_and_presence_work(start_app, tmp_path) -> None:
    mongo = MongoProcess(tmp_path / "mongo").start()
    try:
        app = await start_app(MONGODB_URL=mongo.url, MONGODB_DB="outage", DATABASE_TIMEOUT="2000",
                              DATABASE_STATEMENT_TIMEOUT="2000")
        alice, bob = await joined(app, "alice"), await joined(app, "bob")
        await alice.ok("message:send", {"room": "book:42", "text": "before"})
        await bob.expect("message:received", text="before")
        mongo.kill()
        started = time.monotonic()
        reply = await alice.request("message:send", {"room": "book:42", "text": "during"}, timeout=15)
        assert reply["event"] == "error" and reply["data"]["code"] == "unavailable"
        assert reply["data"]["retry_after_ms"] > 0 and time.monotonic() - started < 5
        reply = await alice.request("message:direct", {"to": "bob", "text": "dm during"}, timeout=15)
        assert reply["event"] == "error" and reply["data"]["code"] == "unavailable"
        assert reply["data"]["retry_after_ms"] > 0
        await alice.ok("typing:start", {"room": "book:42"})
        await bob.expect("typing:start")
        await alice.ok("presence:update", {"status": "busy"})
        await bob.expect("presence:updated", status="busy")
        mongo.start()
        for _ in range(100):  # the driver reconnects by itself; no reconnect of the socket
            reply = await alice.request("message:send", {"room": "book:42", "text": "after"})
            if reply["event"] == "ack":
                break
            await asyncio.sleep(0.2)
        assert reply["event"] == "ack"
        await bob.expect("message:received", text="after")
        assert [m["text"] for m in bob.received("message:received")] == ["before", "after"]
        assert bob.received("message:direct") == []  # the refused direct message reached nobody
        assert (await bob.ok("history:fetch", {"with": "alice"}))["messages"] == []
    finally:
        mongo.kill()


async def test_a_client_that_never_reads_is_closed_1013_others_keep_receiving(start_app, mongo_url, mongo_db) -> None:
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, WS_SEND_QUEUE_BYTES="65536",
                          WS_SEND_QUEUE_FRAMES="50", WS_MESSAGE_RATE="10000", WS_MESSAGE_BURST="10000")
    sock = await asyncio.to_thread(raw_ws, app.port, make_token("sleepy"), 4096)
    sock.sendall(client_frame(0x1, b'{"event":"join:room","data":{"room":"r"}}'))
    alice, bob = await joined(app, "alice", "r"), await joined(app, "bob", "r")
    registry = app.services.metrics.registry

    def slow_consumers() -> float:
        return registry.get_sample_value("mangu_websocket_slow_consumers_total") or 0

    blob = "w" * 60_000  # the server-side API, to push megabytes quickly
    for n in range(400):
        app.services.hub.send_to_room("r", "system:load", {"n": n, "blob": blob})
        await asyncio.sleep(0)
        if slow_consumers() >= 1:
            break
    assert slow_consumers() == 1
    await bob.wait_count("system:load", n + 1, timeout=30)  # a reading member got every frame
    await alice.ok("message:send", {"room": "r", "text": "still flowing"})
    await bob.expect("message:received", text="still flowing")
    # the sleepy client, reading at last, finds the 1013 close after its backlog
    assert await asyncio.to_thread(read_close_code, sock, 10) == 1013
    sock.close()
    await asyncio.sleep(0.2)
    assert registry.get_sample_value("mangu_websocket_connections_closed_total", {"code": "1013"}) == 1


async def test_large_rooms_get_no_join_leave_or_presence_events_and_a_short_member_list(
    start_app, mongo_url, mongo_db
) -> None:
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, WS_ROOM_PRESENCE_MAX="3")
    first = await joined(app, "u1", "big")
    for user in ("u2", "u3"):
        await joined(app, user, "big")
        await first.expect("room:joined", user=user)  # still small: told
    fourth = await connect(app, "u4")
    ack = await fourth.ok("join:room", {"room": "big"})
    assert [m["user"] for m in ack["members"]] == ["u1", "u2", "u3"] and ack["truncated"] is True
    await fourth.ok("presence:update", {"status": "away"})
    await fourth.close()
    await first.ok("message:send", {"room": "big", "text": "messages still flow"})
    await first.expect("message:received", text="messages still flow")
    assert [e["user"] for e in first.received("room:joined")] == ["u2", "u3"]
    assert first.received("presence:updated") == [] and first.received("room:left") == []


async def test_a_peer_that_stops_answering_pings_is_dropped_and_goes_offline(start_app, mongo_url, mongo_db) -> None:
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, WS_PING_INTERVAL="1", WS_PING_TIMEOUT="1")
    watcher = await joined(app, "watcher")  # Tornado's client answers pings by itself
    sock = await asyncio.to_thread(raw_ws, app.port, make_token("ghost"))  # never reads, never pongs
    try:
        sock.sendall(client_frame(0x1, b'{"event":"join:room","data":{"room":"book:42"}}'))
        await watcher.expect("room:joined", user="ghost")
        started = time.monotonic()
        offline = await watcher.expect("presence:updated", timeout=8, user="ghost")
        # pinged within WS_PING_INTERVAL, dropped WS_PING_TIMEOUT later (checked every half second)
        assert offline["data"]["status"] == "offline" and 1.0 <= time.monotonic() - started <= 3.5
        await asyncio.sleep(1.5)  # more ping rounds: the watcher answered them and stays
        assert (await watcher.ok("ping"))["server_time"]
        assert app.services.hub.connection_count == 1
    finally:
        sock.close()

"""The pre-built frame path (mangu/realtime/frames.py): what it writes is what a standard
client reads, at every frame-length encoding; Tornado's byte counters stay right; the
normal path is used when permessage-deflate is negotiated; closed streams are harmless;
and the Tornado versions it reaches into are pinned."""

from __future__ import annotations

import asyncio

import pytest
import tornado

from mangu.realtime import frames
from tests.support.ws import WSClient, make_token


@pytest.fixture
async def rt(start_app, mongo_url: str, mongo_db: str):
    return await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db)


def test_the_installed_tornado_is_one_the_fast_path_is_tested_with() -> None:
    # Upgrading Tornado past SUPPORTED_TORNADO fails here: re-check frames.py against the
    # new websocket.py (WebSocketProtocol13.stream, _compressor, the byte counters) first.
    assert frames.tornado_supported(tornado.version_info)
    assert frames.PREBUILT_FRAMES
    assert frames.tornado_supported((6, 5, 10, 0)) and frames.tornado_supported((6, 6, 1, 0))
    assert not frames.tornado_supported((6, 4, 2, 0)) and not frames.tornado_supported((7, 0, 0, 0))


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_frame_header_encodes_each_length_form(size: int) -> None:
    frame = frames.text_frame(b"a" * size)
    assert frame[0] == 0x81  # FIN + text, unmasked (server to client)
    if size < 126:
        assert frame[1] == size and len(frame) == 2 + size
    elif size <= 0xFFFF:
        assert frame[1] == 126 and int.from_bytes(frame[2:4], "big") == size and len(frame) == 4 + size
    else:
        assert frame[1] == 127 and int.from_bytes(frame[2:10], "big") == size and len(frame) == 10 + size


async def test_standard_client_reads_every_length_and_counters_match(rt) -> None:
    client = await WSClient.connect(rt.ws_url(), make_token("alice"))
    await client.ok("join:room", {"room": "frames"})
    (handler,) = rt.services.hub.room_members("frames")
    protocol = handler.ws_connection
    message_bytes, wire_bytes = protocol._message_bytes_out, protocol._wire_bytes_out
    sizes = [0, 10, 120, 126, 1000, 65_000, 65_536, 150_000]
    sent_payload = sent_wire = 0
    for size in sizes:
        before = protocol._message_bytes_out
        rt.services.hub.send_to_room("frames", "system:test", {"blob": "b" * size})
        payload = protocol._message_bytes_out - before
        sent_payload += payload
        sent_wire += len(frames.text_frame(b"x" * payload))
    got = await client.wait_count("system:test", len(sizes))
    assert [len(data["blob"]) for data in got] == sizes
    assert protocol._message_bytes_out - message_bytes == sent_payload
    assert protocol._wire_bytes_out - wire_bytes == sent_wire


async def test_compression_negotiated_uses_the_normal_path(start_app, mongo_url, mongo_db) -> None:
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, WS_COMPRESSION="true")
    compressed = await WSClient.connect(app.ws_url(), make_token("alice"), compression_options={})
    plain = await WSClient.connect(app.ws_url(), make_token("bob"))
    for client in (compressed, plain):
        await client.ok("join:room", {"room": "z"})
    handlers = {h.user_id: h for h in app.services.hub.room_members("z")}
    assert handlers["alice"].ws_connection._compressor is not None
    assert handlers["bob"].ws_connection._compressor is None
    text = "compressible " * 300
    await plain.ok("message:send", {"room": "z", "text": text})
    for client in (compressed, plain):
        assert (await client.expect("message:received"))["data"]["text"] == text
    # the compressed connection sent fewer bytes on the wire than its messages' size
    protocol = handlers["alice"].ws_connection
    assert protocol._wire_bytes_out < protocol._message_bytes_out


async def test_delivery_to_a_closed_connection_is_harmless(rt) -> None:
    leaving = await WSClient.connect(rt.ws_url(), make_token("alice"))
    staying = await WSClient.connect(rt.ws_url(), make_token("bob"))
    for client in (leaving, staying):
        await client.ok("join:room", {"room": "c"})
    handlers = list(rt.services.hub.room_members("c"))
    gone = next(h for h in handlers if h.user_id == "alice")
    gone.ws_connection.stream.close()  # the peer vanished; the hub has not heard yet
    await asyncio.sleep(0)
    assert gone.send_frame(frames.text_frame(b"{}"), b"{}") is False
    assert rt.services.hub.send_to_room("c", "system:test", {"n": 1}) == 1
    assert (await staying.expect("system:test"))["data"] == {"n": 1}

"""The one place that reaches into Tornado's WebSocket protocol object.

Tornado has no public call to send an already-framed message: ``write_message`` frames,
copies and wraps every write in a task of its own, which is most of the cost of a fan-out.
A room message is framed once here and the same bytes are written to every member's
socket, keeping Tornado's byte counters: straight to the kernel when nothing is queued on
that connection (no Future, no loop callback), through the stream's buffer otherwise. When
permessage-deflate was negotiated (each connection has its own compression context) the
normal path is used.

The protocol subclass also validates the close codes clients send (RFC 6455 7.4: an
invalid code is answered with 1002) and answers invalid UTF-8 with 1007 instead of a bare
disconnect, in compressed frames too.

tests/test_frames.py pins this behaviour; SUPPORTED_TORNADO lists the versions it is
tested with. On any other version every write takes the normal ``write_message`` path.
"""

from __future__ import annotations

import struct
from typing import Any

import tornado
from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketProtocol13, _DecompressTooLargeError

from mangu.realtime.protocol import CLOSE_INVALID_DATA, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, valid_close_code

SUPPORTED_TORNADO = ((6, 5), (6, 6))

_FIN_TEXT = 0x80 | 0x1


def tornado_supported(version: tuple[int, ...] = tornado.version_info) -> bool:
    return tuple(version[:2]) in SUPPORTED_TORNADO


# The fast path only where its reach into Tornado's internals is known to hold.
PREBUILT_FRAMES = tornado_supported()


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame (server to client) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", _FIN_TEXT, n)
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", _FIN_TEXT, 126, n)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, n)
    return header + payload


class SlowConsumer(Exception):
    """The connection's send queue is over its bound."""


def write_frame(protocol: Any, frame: bytes, payload: bytes, max_frames: int) -> None:
    """Queue one pre-built frame on a connection.

    ``frame`` is ``text_frame(payload)``. Raises WebSocketClosedError when the connection is
    gone and SlowConsumer when its queue is over ``max_frames`` frames or over the stream's
    ``max_write_buffer_size`` bytes.
    """
    if protocol is None or protocol.is_closing():
        raise WebSocketClosedError()
    if not PREBUILT_FRAMES or protocol._compressor is not None:
        # permessage-deflate: every connection has its own compression context
        try:
            protocol.write_message(payload)
        except StreamBufferFullError:
            raise SlowConsumer() from None
        return
    stream = protocol.stream
    protocol._message_bytes_out += len(payload)
    protocol._wire_bytes_out += len(frame)
    if not stream.writing() and type(stream) is IOStream:
        # Nothing queued: hand the frame to the kernel now, as IOStream.write would, without
        # the Future and the loop callback it makes for every write.
        try:
            sent = stream.socket.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            raise WebSocketClosedError() from None  # reset or broken pipe: the reader sees the close
        if sent == len(frame):
            return
        frame = frame[sent:]
        protocol.mangu_queued_frames = 0
    # Frames queued since the stream's buffer was last empty: an upper bound of the queue.
    protocol.mangu_queued_frames = protocol.mangu_queued_frames + 1 if stream.writing() else 1
    if protocol.mangu_queued_frames > max_frames:
        raise SlowConsumer()
    try:
        stream.write(frame)
    except StreamBufferFullError:
        raise SlowConsumer() from None
    except StreamClosedError:
        raise WebSocketClosedError() from None


def lift_write_bound(protocol: Any) -> None:
    """Let a close frame through on a connection whose queue overflowed."""
    if protocol is not None and getattr(protocol, "stream", None) is not None:
        protocol.stream.max_write_buffer_size = None


def abort(protocol: Any) -> None:
    """Drop the connection now, without waiting for the peer's half of the close handshake
    (a peer that stopped answering pings will not send it)."""
    stream = getattr(protocol, "stream", None)
    if stream is not None and not stream.closed():
        stream.close()


def queued_bytes(protocol: Any) -> int:
    """Bytes waiting in the connection's write buffer (for tests and the slow-consumer log)."""
    stream = getattr(protocol, "stream", None)
    return len(stream._write_buffer) if stream is not None else 0


class ServerProtocol(WebSocketProtocol13):
    """WebSocketProtocol13 with close-code and UTF-8 validation."""

    mangu_queued_frames = 0

    def _handle_message(self, opcode: int, data: bytes) -> Any:
        if self.client_terminated:
            return None
        if opcode == 0x8:
            code = struct.unpack(">H", data[:2])[0] if len(data) >= 2 else None
            if len(data) == 1 or (code is not None and not valid_close_code(code)):
                return self._fail(CLOSE_PROTOCOL_ERROR, "invalid close code", code)
            if len(data) > 2:
                try:
                    data[2:].decode("utf-8")
                except UnicodeDecodeError:
                    return self._fail(CLOSE_INVALID_DATA, "invalid UTF-8 in close reason", code)
        elif opcode == 0x1:
            if self._frame_compressed:
                # Inflated here, once (the context carries over between messages), so that
                # the text can be checked; Tornado then takes it as an uncompressed frame.
                try:
                    data = self._decompressor.decompress(data)
                except _DecompressTooLargeError:
                    self.close(CLOSE_TOO_BIG, "message too big after decompression")
                    self._abort()
                    return None
                self._frame_compressed = False
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                return self._fail(CLOSE_INVALID_DATA, "invalid UTF-8 in text frame", None)
        return super()._handle_message(opcode, data)

    def _fail(self, code: int, reason: str, received: int | None) -> None:
        self.client_terminated = True
        self.close_code = received
        self.close_reason = reason
        self.close(code, reason)
        self.handler.mangu_close_sent = code
        return None

"""TCP relays between a client and a real server, for what the server cannot do by itself: a
network that drops every connection at once (the client sees no close, only the loss), that
holds the server's answers back, or refuses new connections; and a MongoDB that answers some
commands as another kind of deployment would.

Each relay runs in threads of its own, so the app under test (in the test's event loop) and a
browser or driver on either side all keep running.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import bson


def _abort(sock: socket.socket) -> None:
    """Close with a reset, as a dead link or a crashed peer would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)  # wakes a pump blocked in recv(): close() alone would not
    except OSError:
        pass
    sock.close()


class Link:
    """One relayed connection: the client's socket and the server's."""

    def __init__(self, relay: TcpRelay, client: socket.socket, server: socket.socket) -> None:
        self.relay = relay
        self.client = client
        self.server = server
        self.cut = False
        self.buffer = b""  # what the client sent that ``from_client`` has not used yet
        self._client_lock = threading.Lock()

    def to_server(self, data: bytes) -> None:
        self.server.sendall(data)

    def to_client(self, data: bytes) -> None:
        with self._client_lock:
            self.client.sendall(data)

    def abort(self) -> None:
        self.cut = True
        _abort(self.client)
        _abort(self.server)


class TcpRelay:
    """Listens on ``port`` (loopback) and relays each connection to ``target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.links: list[Link] = []
        self._listener: socket.socket | None = None
        self._flowing = threading.Event()  # set: the server's bytes go through
        self._flowing.set()
        self._lock = threading.Lock()

    # -- life cycle

    def start(self) -> TcpRelay:
        """Listen (again, on the same port after ``refuse``)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="relay-accept").start()
        return self

    def refuse(self) -> None:
        """Stop listening: new connections are refused (existing ones go on)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(): close() alone would not
            except OSError:
                pass
            listener.close()

    def close(self) -> None:
        self.refuse()
        self.cut()
        self._flowing.set()

    # -- faults

    def hold(self) -> None:
        """Keep what the server sends from reaching the clients (until ``release`` or ``cut``)."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Reset every connection at once; what was held back is lost with them."""
        with self._lock:
            links, self.links = self.links, []
        for link in links:
            link.abort()
        self._flowing.set()

    # -- relaying

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                server.settimeout(None)
            except OSError:
                _abort(client)
                continue
            link = Link(self, client, server)
            with self._lock:
                self.links.append(link)
            threading.Thread(target=self._pump_up, args=(link,), daemon=True, name="relay-up").start()
            threading.Thread(target=self._pump_down, args=(link,), daemon=True, name="relay-down").start()

    def _pump_up(self, link: Link) -> None:
        try:
            while data := link.client.recv(65536):
                link.buffer += data
                self.from_client(link)
        except OSError:
            pass
        self._end(link)

    def _pump_down(self, link: Link) -> None:
        try:
            while data := link.server.recv(65536):
                self._flowing.wait()
                if link.cut:
                    return
                link.to_client(data)
        except OSError:
            pass
        self._end(link)

    def _end(self, link: Link) -> None:
        if not link.cut:
            link.abort()
        with self._lock:
            if link in self.links:
                self.links.remove(link)

    def from_client(self, link: Link) -> None:
        """Pass on what the client sent (subclasses may answer some of it themselves)."""
        data, link.buffer = link.buffer, b""
        link.to_server(data)


OP_QUERY, OP_MSG = 2004, 2013
_HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode


class StandaloneMongoRelay(TcpRelay):
    """A real MongoDB-protocol server (nx-27017) seen through a relay that refuses transactions
    as a standalone mongod does: a command that starts one gets the server's own answer,
    ``IllegalOperation`` (code 20) "Transaction numbers are only allowed on a replica set member
    or mongos", and never reaches nx-27017. Everything else goes through untouched.

    ``handshakes`` keeps the first command of every connection (the driver's ``hello``, with
    its client metadata), as the server's log would show it.
    """

    REFUSAL = {
        "ok": 0.0,
        "errmsg": "Transaction numbers are only allowed on a replica set member or mongos",
        "code": 20,
        "codeName": "IllegalOperation",
    }

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.handshakes: list[dict[str, Any]] = []
        self.refused = 0
        self._seen: set[int] = set()

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def from_client(self, link: Link) -> None:
        while len(link.buffer) >= 4:
            length = struct.unpack_from("<i", link.buffer)[0]
            if len(link.buffer) < length:
                return
            message, link.buffer = link.buffer[:length], link.buffer[length:]
            command = _command_of(message)
            if id(link) not in self._seen:
                self._seen.add(id(link))
                self.handshakes.append(command or {})
            if command and command.get("startTransaction"):
                self.refused += 1
                link.to_client(_reply(message, self.REFUSAL))
            else:
                link.to_server(message)


def _command_of(message: bytes) -> dict[str, Any] | None:
    """The command document of an OP_MSG or OP_QUERY message (None for anything else)."""
    _, _, _, op_code = _HEADER.unpack_from(message)
    body = message[_HEADER.size:]
    if op_code == OP_MSG:
        # flagBits, then sections; kind 0 is the command document itself
        offset = 4
        while offset < len(body):
            kind = body[offset]
            size = struct.unpack_from("<i", body, offset + 1)[0]
            if kind == 0:
                return bson.decode(body[offset + 1:offset + 1 + size])
            offset += 1 + size
        return None
    if op_code == OP_QUERY:
        # flags, fullCollectionName (cstring), numberToSkip, numberToReturn, query
        end = body.index(b"\x00", 4)
        start = end + 1 + 8
        size = struct.unpack_from("<i", body, start)[0]
        return bson.decode(body[start:start + size])
    return None


def _reply(request: bytes, document: dict[str, Any]) -> bytes:
    """An OP_MSG answer to ``request`` carrying ``document``."""
    _, request_id, _, _ = _HEADER.unpack_from(request)
    payload = struct.pack("<I", 0) + b"\x00" + bson.encode(document)
    return _HEADER.pack(_HEADER.size + len(payload), request_id ^ 0x5A5A5A5A, request_id, OP_MSG) + payload

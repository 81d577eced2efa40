"""Reference: a bare Tornado broadcast server. Every text frame a client sends is written to
every open connection with a ``write_message`` loop: no auth, no storage, no JSON.

    python bench/reference/tornado_broadcast.py --port 8101
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import tornado.web
import tornado.websocket

clients: set[tornado.websocket.WebSocketHandler] = set()


class Broadcast(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    def open(self) -> None:
        clients.add(self)

    def on_message(self, message: str | bytes) -> None:
        for client in list(clients):
            try:
                client.write_message(message)
            except tornado.websocket.WebSocketClosedError:
                clients.discard(client)

    def on_close(self) -> None:
        clients.discard(self)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8101)
    args = parser.parse_args()
    app = tornado.web.Application([(r"/ws", Broadcast)], websocket_ping_interval=25, websocket_ping_timeout=20)
    app.listen(args.port, "127.0.0.1", backlog=4096)
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())

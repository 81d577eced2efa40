"""Reference: python-socketio (AsyncServer, Tornado mode). A client joins a room with a
``join`` event; a ``send`` event is emitted to everyone in the room as ``message``.

    python bench/reference/socketio_server.py --port 8102
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import socketio
import tornado.web

sio = socketio.AsyncServer(async_mode="tornado", cors_allowed_origins="*")


@sio.event
async def join(sid: str, room: str) -> str:
    await sio.enter_room(sid, room)
    return "joined"


@sio.event
async def send(sid: str, data: dict) -> None:
    await sio.emit("message", data, room=data["room"])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8102)
    args = parser.parse_args()
    app = tornado.web.Application([(r"/socket.io/", socketio.get_tornado_handler(sio))])
    app.listen(args.port, "127.0.0.1", backlog=4096)
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())

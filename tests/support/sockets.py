"""Where an unclosed socket was made: a diagnostic for ``ResourceWarning: unclosed <socket...>``.

The suite turns that warning into a failure (``filterwarnings = error``), but the warning
only names the socket, and it fires when the collector finds the socket, often in a later
test than the one that left it open. ``track_socket_origins`` remembers the stack that made
each socket until it is closed, and prints it (to the failing test's captured stderr) when a
socket reaches the unraisable hook still open. Running the suite under tracemalloc would tell
the same at twice the time.
"""

from __future__ import annotations

import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any

_STACK_LIMIT = 14


def track_socket_origins() -> Callable[[], None]:
    """Start remembering where sockets are made; returns the function that stops it."""
    origins: dict[int, str] = {}
    real_init, real_close, real_detach = socket.socket.__init__, socket.socket.close, socket.socket.detach
    real_hook = sys.unraisablehook

    def init(self: socket.socket, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        origins[id(self)] = "".join(traceback.format_stack(limit=_STACK_LIMIT)[:-1])

    def close(self: socket.socket) -> None:
        origins.pop(id(self), None)
        real_close(self)

    def detach(self: socket.socket) -> int:
        origins.pop(id(self), None)
        return real_detach(self)

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.object, socket.socket):
            origin = origins.pop(id(unraisable.object), None)
            if origin:
                print(f"{unraisable.object!r} was made here and never closed:\n{origin}", file=sys.stderr)
        real_hook(unraisable)

    socket.socket.__init__ = init  # type: ignore[method-assign]
    socket.socket.close = close  # type: ignore[method-assign]
    socket.socket.detach = detach  # type: ignore[method-assign]
    sys.unraisablehook = hook

    def stop() -> None:
        socket.socket.__init__ = real_init  # type: ignore[method-assign]
        socket.socket.close = real_close  # type: ignore[method-assign]
        socket.socket.detach = real_detach  # type: ignore[method-assign]
        sys.unraisablehook = real_hook

    return stop

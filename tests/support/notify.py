"""A stand-in for systemd's notify socket: a datagram socket that records what the server sends."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.procs import ServerProcess, wait_until


class NotifySocket:
    """Bound on an abstract address (``@name``) or on a filesystem path; every datagram is
    kept as (monotonic receive time, {KEY: VALUE}) in ``messages``."""

    def __init__(self, path: Path | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            name = f"mangu-test-{secrets.token_hex(6)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._running = True
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while self._running:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def keys(self) -> list[str]:
        """Every KEY received, in order (READY, STATUS, WATCHDOG, ...)."""
        return [key for _, fields in list(self.messages) for key in fields]

    def received(self, key: str, value: str | None = None, after: float = 0.0) -> list[tuple[float, dict[str, str]]]:
        return [
            (at, fields) for at, fields in list(self.messages)
            if at >= after and key in fields and (value is None or fields[key] == value)
        ]

    def wait_for(self, key: str, value: str | None = None, after: float = 0.0, timeout: float = 10.0) -> Any:
        """The first (time, fields) with KEY (=VALUE) received at or after ``after``."""
        return wait_until(lambda: self.received(key, value, after)[:1], timeout, what=f"{key} notification")[0]

    def close(self) -> None:
        self._running = False
        self._reader.join(2)
        self.sock.close()


@contextmanager
def notified_server(env: dict[str, str], socket_path: Path | None = None,
                    **kwargs: Any) -> Iterator[tuple[ServerProcess, NotifySocket]]:
    """A started ``server.py`` child whose NOTIFY_SOCKET is a NotifySocket; both are
    stopped on the way out, whatever the test did."""
    notify = NotifySocket(socket_path)
    server = ServerProcess({**env, "NOTIFY_SOCKET": notify.address}, **kwargs)
    try:
        yield server.start(), notify
    finally:
        server.stop()
        notify.close()

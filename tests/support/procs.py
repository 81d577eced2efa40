"""Real child processes for tests: redis-server, nx-27017 (MongoDB wire protocol), server.py.

Each runs on a free loopback port, can be stopped, killed and restarted on the same port,
and is cleaned up by the fixture that made it, even when the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mangu.config import VARIABLE_NAMES

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


# Everything server.py reads from its environment: the settings, and systemd's notify and
# watchdog variables. A child server gets only those its test sets, never the runner's own
# (a MONGODB_URL exported for the suite, a MANGU_ENV or LOG_LEVEL left in a shell).
SERVER_VARIABLES = frozenset(VARIABLE_NAMES) | {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}


def server_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of a child server: this process's, less every server setting, plus ``env``."""
    return {**{k: v for k, v in os.environ.items() if k not in SERVER_VARIABLES}, **env}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class ChildProcess:
    """A restartable child process on a fixed port."""

    name = "child"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return port_open(self.port)

    def start(self, timeout: float = 20.0) -> ChildProcess:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=ROOT
        )
        wait_until(lambda: self.proc.poll() is not None or self.ready(), timeout, what=f"{self.name} to start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode} at start")
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; waits until the port is free."""
        if self.running:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        wait_until(lambda: not port_open(self.port), 5, what=f"{self.name} port to close")

    def kill(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(5)
        wait_until(lambda: not port_open(self.port), 5, what=f"{self.name} port to close")

    def restart(self) -> None:
        self.stop()
        self.start()


class RedisProcess(ChildProcess):
    name = "redis-server"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        return [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--protected-mode", "no", "--loglevel", "warning", "--daemonize", "no",
        ]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        """Run one command through a raw RESP connection (no client library in the way)."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"".join(parts))
            return sock.recv(1 << 20).decode(errors="replace")


class MongoProcess(ChildProcess):
    """nx-27017: a MongoDB wire-protocol server on SQLite, with its data in ``data_dir``.

    Started through the server's own launcher (``python -m mangu.embedded_mongo``): quiet
    logs, its pid file in ``data_dir`` (nx-27017's default is one shared /tmp file), and it
    dies with the test process even when that is killed.
    """

    name = "nx-27017"

    def __init__(self, data_dir: str | Path, port: int | None = None) -> None:
        super().__init__(port)
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            PYTHON, "-m", "mangu.embedded_mongo", str(os.getpid()), "--host", "127.0.0.1", "-p", str(self.port),
            "--data-dir", str(self.data_dir), "--pid-file", str(self.data_dir / "nx-27017.pid"),
            "--log-file", os.devnull,
        ]

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"


class ServerProcess:
    """``python server.py`` as a child, with its JSON log lines collected from stdout."""

    def __init__(self, env: dict[str, str], args: list[str] | None = None, cwd: Path = ROOT,
                 launcher: list[str] | None = None) -> None:
        self.env = server_env(env)
        # Each server writes (the embedded MongoDB's files) under a DATA_DIR of its own.
        self._data_dir = None if "DATA_DIR" in env else tempfile.mkdtemp(prefix="mangu-data-")
        if self._data_dir:
            self.env["DATA_DIR"] = self._data_dir
        self.args = args or []
        self.launcher = launcher or []  # a command that execs the rest (e.g. to sandbox it)
        self.cwd = cwd
        self.lines: list[str] = []
        self.stderr = ""
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self._reader: threading.Thread | None = None

    def start(self, wait: bool = True, timeout: float = 30.0) -> ServerProcess:
        self.proc = subprocess.Popen(
            [*self.launcher, PYTHON, "server.py", *self.args], cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        if wait:
            record = self.wait_for(lambda r: "address" in r and r.get("logger") == "mangu.server", timeout)
            self.port = int(record["address"].rsplit(":", 1)[1])
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with self.proc.stderr:
            for line in self.proc.stderr:
                self.stderr += line

    @property
    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for record in self.records:
                if predicate(record):
                    return record
            if self.proc is not None and self.proc.poll() is not None and not self._reader_alive():
                raise RuntimeError(f"server exited ({self.proc.returncode}); stderr: {self.stderr[-2000:]}")
            return None

        return wait_until(find, timeout, what="a log record")

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ws_url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._join_readers()
        return code

    def _join_readers(self) -> None:
        for reader in (self._reader, getattr(self, "_stderr_reader", None)):
            if reader is not None:
                reader.join(5)
        if self._data_dir:
            shutil.rmtree(self._data_dir, ignore_errors=True)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._join_readers()
        return self.proc.returncode


def run_server_once(env: dict[str, str], args: list[str] | None = None,
                    timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run server.py to completion (for configuration errors, which exit before listening)."""
    return subprocess.run(
        [PYTHON, "server.py", *(args or [])], cwd=ROOT, env=server_env(env), capture_output=True,
        text=True, timeout=timeout,
    )

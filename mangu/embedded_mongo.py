"""The embedded development MongoDB: nx-27017 (a MongoDB wire-protocol server on SQLite) as
a child process on a free loopback port, its data kept in one directory across restarts.

Used when ``MONGODB_URL`` is ``embedded`` (the default) outside production. The child never
outlives the server, even one killed with SIGKILL: it asks the kernel for SIGTERM when its
parent dies (``PR_SET_PDEATHSIG``), and a watchdog thread in it checks the parent as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import bson
import psutil

log = logging.getLogger("mangu.embedded_mongo")

_ROOT = Path(__file__).resolve().parents[1]
_PR_SET_PDEATHSIG = 1
_WATCHDOG_INTERVAL_S = 0.5
_PORT_ATTEMPTS = 3
_OP_MSG = 2013


class EmbeddedMongoError(Exception):
    """The embedded MongoDB could not be started."""


class EmbeddedMongo:
    """One nx-27017 child with its data in ``directory``."""

    def __init__(self, directory: str | Path, host: str = "127.0.0.1") -> None:
        self.directory = Path(directory)
        self.host = host
        self.port: int | None = None
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str | None:
        return f"mongodb://{self.host}:{self.port}/" if self.port is not None else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def _pid_file(self) -> Path:
        return self.directory / "nx-27017.pid"

    @property
    def _log_file(self) -> Path:
        return self.directory / "nx-27017.log"

    async def start(self, timeout: float = 20.0) -> str:
        """Start the child and wait until it answers a ping; its URL. Raises EmbeddedMongoError."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._clear_stale_pid_file()
        deadline = time.monotonic() + timeout
        for _ in range(_PORT_ATTEMPTS):
            port = _free_port(self.host)
            proc = await self._spawn(port)
            if await _answers(proc, self.host, port, deadline):
                self._proc, self.port = proc, port
                log.info("embedded MongoDB started", extra={"pid": proc.pid, "port": port,
                                                            "data_dir": str(self.directory)})
                return f"mongodb://{self.host}:{port}/"
            await _end(proc, 2.0)
            if time.monotonic() >= deadline:
                break
        raise EmbeddedMongoError(
            f"nx-27017 did not start within {timeout:.0f}s; see {self._log_file}"
        )

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        code = await _end(proc, timeout)
        log.info("embedded MongoDB stopped", extra={"pid": proc.pid, "exit_code": code})

    async def _spawn(self, port: int) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        with open(self._log_file, "ab") as output:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mangu.embedded_mongo", str(os.getpid()),
                "--host", self.host, "-p", str(port), "--data-dir", str(self.directory),
                # Its log file handler would repeat what stderr already writes to the same file.
                "--pid-file", str(self._pid_file), "--log-file", os.devnull,
                stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output, env=env,
            )

    def _clear_stale_pid_file(self) -> None:
        # nx-27017 refuses to start while its pid file names a live process; after a crash
        # that pid may since belong to anything else.
        try:
            pid = int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            command = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            command = ""
        if "nx_27017" in command or "mangu.embedded_mongo" in command:
            raise EmbeddedMongoError(
                f"{self.directory} is in use by another embedded MongoDB (pid {pid}); "
                "give each server its own DATA_DIR or a MONGODB_URL"
            )
        self._pid_file.unlink(missing_ok=True)


def running_url(directory: str | Path) -> str | None:
    """The URL of the embedded MongoDB another process (a running server) keeps on
    ``directory``, so that a command-line tool can use the same database; None when none runs."""
    try:
        pid = int((Path(directory) / "nx-27017.pid").read_text().strip())
        command = psutil.Process(pid).cmdline()
        host, port = command[command.index("--host") + 1], int(command[command.index("-p") + 1])
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    if "mangu.embedded_mongo" not in command:
        return None
    return f"mongodb://{host}:{port}/"


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


async def _answers(proc: asyncio.subprocess.Process, host: str, port: int, deadline: float) -> bool:
    """True once the child answers a ping; False if it exits or the deadline passes."""
    while proc.returncode is None and time.monotonic() < deadline:
        try:
            if await asyncio.wait_for(_ping(host, port), 1.0):
                return True
        except (OSError, TimeoutError, ValueError):
            pass
        await asyncio.sleep(0.02)
    return False


async def _ping(host: str, port: int) -> bool:
    """One ``ping`` command as an OP_MSG on a fresh connection. (A throwaway driver client
    would start monitors that closing it too early can leave with an open socket.)"""
    body = b"\x00\x00\x00\x00" + b"\x00" + bson.encode({"ping": 1, "$db": "admin"})  # flags, section 0
    header = struct.pack("<iiii", 16 + len(body), 1, 0, _OP_MSG)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(header + body)
        await writer.drain()
        length, _, _, opcode = struct.unpack("<iiii", await reader.readexactly(16))
        reply = await reader.readexactly(length - 16)
    finally:
        writer.close()
        await writer.wait_closed()
    return opcode == _OP_MSG and bson.decode(reply[5:]).get("ok") == 1


async def _end(proc: asyncio.subprocess.Process, timeout: float) -> int:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()


# -- in the child


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` dies: the kernel's parent-death signal, plus a
    watchdog thread (for the window before prctl and for kernels without it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCHDOG_INTERVAL_S)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        os._exit(1)  # SIGTERM did not end it: leave no orphan

    if os.getppid() != parent:
        os._exit(1)  # the parent died before prctl took effect
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _child_main(argv: list[str]) -> None:
    if not argv or not argv[0].isdigit():
        # Started by EmbeddedMongo only; by hand, nx-27017's own command is the one to use.
        sys.exit("usage: python -m mangu.embedded_mongo PARENT_PID [nx-27017 options]\n"
                 "(the child process of the server's embedded MongoDB; it exits with PARENT_PID)")
    _die_with_parent(int(argv[0]))
    # nx-27017 logs every command with its documents at INFO: keep warnings only.
    for name in ("nx_27017", "neosqlite"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from nx_27017.nx_27017 import main

    sys.argv = ["nx-27017", *argv[1:]]
    main()


if __name__ == "__main__":
    _child_main(sys.argv[1:])

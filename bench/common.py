"""Shared pieces of the benchmarks: server processes, CPU and memory readings, the wsload
client (built from bench/loadgen/wsload.c on first use), tokens."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its reaped children) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server:
    """A server under test in its own process."""

    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None,
                 path: str = "/ws") -> None:
        self.name, self.argv, self.port, self.path = name, argv, port, path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()

    def start(self) -> Server:
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=_raise_nofile)
        wait_port(self.port, 60)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


def mangu_server(port: int, data_dir: str, mongo_url: str | None = None, **env: str) -> Server:
    """server.py tuned for load runs: the per-connection frame limit lifted (the publisher
    sends as fast as its own copies come back), logs at WARNING."""
    base = {
        "MANGU_ENV": "test", "PORT": str(port), "HOST": "127.0.0.1", "LOG_FORMAT": "json", "LOG_LEVEL": "WARNING",
        "JWT_SECRET": SECRET, "DATA_DIR": data_dir, "WS_MESSAGE_RATE": "100000", "WS_MESSAGE_BURST": "100000",
        "RATE_LIMIT_ENABLED": "false", "WS_SEND_QUEUE_FRAMES": "100000",
    }
    if mongo_url:
        base["MONGODB_URL"] = mongo_url
    base.update(env)
    return Server("mangu", [PYTHON, "server.py"], port, base)


def bare_server(port: int) -> Server:
    return Server("bare tornado", [PYTHON, "bench/reference/tornado_broadcast.py", "--port", str(port)], port)


def socketio_server(port: int) -> Server:
    return Server("python-socketio", [PYTHON, "bench/reference/socketio_server.py", "--port", str(port)], port,
                  path="/socket.io/")


class Mongo:
    """An nx-27017 child for the mangu server's storage, outside the server process (its CPU
    is reported on its own)."""

    def __init__(self, data_dir: str) -> None:
        self.port = free_port()
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "mangu.embedded_mongo", str(os.getpid()), "--host", "127.0.0.1", "-p", str(self.port),
             "--data-dir", data_dir, "--log-file", os.devnull],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )
        wait_port(self.port, 30)

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def wsload_binary() -> str:
    source = ROOT / "bench" / "loadgen" / "wsload.c"
    binary = ROOT / "bench" / "loadgen" / "wsload"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        compiler = shutil.which("cc") or shutil.which("gcc")
        if not compiler:
            raise SystemExit("bench: a C compiler is needed for bench/loadgen/wsload.c (apt-get install gcc)")
        subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True)
    return str(binary)


def write_tokens(path: str, users: list[str]) -> str:
    import jwt

    exp = int(time.time()) + 3 * 3600
    with open(path, "w") as handle:
        for user in users:
            handle.write(jwt.encode({"sub": user, "exp": exp, "roles": ["reader"]}, SECRET, algorithm="HS256") + "\n")
    return path


class Load:
    """One wsload process."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen([wsload_binary(), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, preexec_fn=_raise_nofile)

    def read_json(self, timeout: float = 120) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line:
                return json.loads(line)
            if self.proc.poll() is not None:
                raise RuntimeError(f"wsload exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
        raise TimeoutError("wsload said nothing")

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        result = self.read_json(60)
        self.proc.wait(10)
        return result

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def ws_target(server: Server, proto: str) -> list[str]:
    return ["--proto", proto, "--port", str(server.port), "--path", server.path]


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"

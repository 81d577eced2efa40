"""conf/nginx/mangu.conf with a real nginx in front of two server processes: the config
passes ``nginx -t``, the client address and a request id reach the server, a WebSocket
connects through it and events go both ways, and a rolling restart of both instances under
load loses no request."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import re
import signal
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.support.app import TEST_SECRET
from tests.support.procs import ROOT, ServerProcess, free_port, port_open, wait_until
from tests.support.ws import WSClient, make_token

NGINX = "/usr/sbin/nginx"
HOST = "mangu.example.com"
SERVER_ENV = {"MANGU_ENV": "test", "LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "LOG_PROBES": "true",
              "TRUSTED_PROXIES": "127.0.0.1", "JWT_SECRET": TEST_SECRET}


def write_certificate(directory: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (directory / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "privkey.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


class Nginx:
    """conf/nginx/mangu.conf as shipped, but on loopback ports of this test, with a test
    certificate, IPv4 only, and a 1 s fail_timeout to keep the rolling restart short."""

    def __init__(self, tmp_path: Path, upstream_ports: list[int]) -> None:
        self.dir = tmp_path
        self.http_port, self.https_port = free_port(), free_port()
        write_certificate(tmp_path)
        text = (ROOT / "conf" / "nginx" / "mangu.conf").read_text()
        text = "\n".join(line for line in text.splitlines() if "[::]" not in line)
        replacements = [
            ("server 127.0.0.1:8001 ", f"server 127.0.0.1:{upstream_ports[0]} "),
            ("server 127.0.0.1:8002 ", f"server 127.0.0.1:{upstream_ports[1]} "),
            ("listen 80;", f"listen 127.0.0.1:{self.http_port};"),
            ("listen 443 ssl", f"listen 127.0.0.1:{self.https_port} ssl"),
            ("/etc/ssl/mangu/", f"{tmp_path}/"),
            ("fail_timeout=5s", "fail_timeout=1s"),
        ]
        for old, new in replacements:
            assert old in text, f"conf/nginx/mangu.conf no longer has {old!r}"
            text = text.replace(old, new)
        (tmp_path / "mangu.conf").write_text(text)
        kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        temp = " ".join(f"{kind}_temp_path {tmp_path}/{kind};" for kind in kinds)
        (tmp_path / "nginx.conf").write_text(
            f"worker_processes 1;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{\n access_log {tmp_path}/access.log;\n {temp}\n include {tmp_path}/mangu.conf;\n}}\n"
        )
        self.command = [NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                        "-e", str(tmp_path / "error.log")]
        self.proc: subprocess.Popen | None = None

    def test_config(self) -> subprocess.CompletedProcess:
        return subprocess.run([*self.command, "-t"], capture_output=True, text=True, timeout=30)

    def start(self) -> Nginx:
        self.proc = subprocess.Popen([*self.command, "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: self.proc.poll() is not None or port_open(self.https_port), 10, what="nginx")
        assert self.proc.poll() is None, (self.dir / "error.log").read_text()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        context = ssl.create_default_context(cafile=str(self.dir / "fullchain.pem"))
        conn = http.client.HTTPSConnection("127.0.0.1", self.https_port, timeout=15, context=context)
        conn.request(method, path, body=b"" if method == "POST" else None, headers={"Host": HOST, **(headers or {})})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response


@pytest.fixture
def instances() -> Iterator[list[ServerProcess]]:
    ports = [free_port(), free_port()]
    servers = [ServerProcess({**SERVER_ENV, "PORT": str(port)}).start() for port in ports]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def nginx(tmp_path: Path, instances: list[ServerProcess]) -> Iterator[Nginx]:
    proxy = Nginx(tmp_path, [server.port for server in instances])  # type: ignore[misc]
    try:
        yield proxy
    finally:
        proxy.stop()


def test_config_passes_nginx_t(nginx: Nginx) -> None:
    result = nginx.test_config()
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr


def test_client_address_and_request_id_reach_the_server(nginx: Nginx, instances: list[ServerProcess]) -> None:
    nginx.start()
    response = nginx.request("GET", "/ping", {"X-Forwarded-For": "203.0.113.7"})
    assert response.status == 200
    correlation_id = response.headers["X-Correlation-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", correlation_id)  # nginx's $request_id
    record = wait_until(
        lambda: [r for s in instances for r in s.records if r.get("correlation_id") == correlation_id],
        5, what="the access line",
    )[0]
    assert record["remote_ip"] == "203.0.113.7" and record["path"] == "/ping"


async def test_a_websocket_connects_through_nginx_and_events_go_both_ways(
        nginx: Nginx, instances: list[ServerProcess]) -> None:
    nginx.start()
    # what a browser on the site sends: wss:// on the public name, its own Origin
    request = HTTPRequest(
        f"wss://127.0.0.1:{nginx.https_port}/ws?token={make_token('reader')}",
        headers={"Host": HOST, "Origin": f"https://{HOST}"},
        ca_certs=str(nginx.dir / "fullchain.pem"), connect_timeout=10, request_timeout=10,
    )
    client = WSClient(await websocket_connect(request))
    try:
        ready = await client.expect("session:ready")
        assert ready["data"]["user"] == "reader"
        await client.ok("join:room", {"room": "book:7"})
        ack = await client.ok("message:send", {"room": "book:7", "text": "through the proxy"})
        received = await client.expect("message:received", text="through the proxy")
        assert received["data"]["seq"] == ack["seq"]
    finally:
        await client.close()
    assert client.close_code == 1000 or client.close_code is None
    # the upgrade went through nginx: the server logged the handshake with nginx's request id
    assert any(r.get("path", "").startswith("/ws") and re.fullmatch(r"[0-9a-f]{32}", r.get("correlation_id", ""))
               for s in instances for r in s.records)


def test_a_rolling_restart_behind_nginx_loses_no_request(nginx: Nginx, instances: list[ServerProcess]) -> None:
    nginx.start()
    statuses: list[int | str] = []
    done = threading.Event()

    def load() -> None:
        # POSTs in flight when an instance stops: nginx cannot retry them elsewhere, so
        # only the graceful shutdown (they finish) keeps them from failing
        requests = (("GET", "/ping"), ("POST", "/_test/slow?ms=300"))
        while not done.is_set():
            try:
                statuses.append(nginx.request(*requests[len(statuses) % 2]).status)
            except (OSError, http.client.HTTPException) as exc:
                statuses.append(repr(exc))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        for i, old in enumerate(list(instances)):
            served = len(statuses)
            wait_until(lambda: len(statuses) > served + 10, 10, what="load before the restart")
            old.signal(signal.SIGTERM)
            assert old.wait(15) == 0
            instances[i] = ServerProcess({**SERVER_ENV, "PORT": str(old.port)}).start()
            # Back in nginx's rotation before the next one stops: nginx tries a failed upstream
            # again after its fail_timeout (1 s), and a slow start can fail that try too; so
            # wait until the new instance has served a request through nginx, not a fixed time.
            instances[i].wait_for(lambda record: record.get("logger") == "mangu.access", 15)
    finally:
        done.set()
        for worker in workers:
            worker.join(20)
    assert len(statuses) > 40
    assert [s for s in statuses if s != 200] == [], (nginx.dir / "error.log").read_text()

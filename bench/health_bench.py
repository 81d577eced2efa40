"""Latency of the operations endpoints under load, against a bare Tornado JSON handler in the
same run; and the /metrics scrape time with 1,000 WebSocket connections open.

    .venv/bin/python bench/health_bench.py [--duration 10] [--connections 64] [--ws 1000]

Both servers run as their own processes: the reference is a bare Tornado app with one JSON
handler; the server under test is this server's app (``make_app`` over ``Services``, as
``server.py`` builds it) with the embedded MongoDB, a private redis-server, JSON access logs
at INFO to /dev/null, plus one bench-only WebSocket route that counts its connections in
the server's metrics (the realtime endpoint needs tokens and rooms this bench does not
measure). wrk drives each URL with ``--connections`` clients on 2 threads for
``--duration`` seconds; its latency distribution gives p50 and p99. Goals: p99 at most
25 ms for the probes, at most 50 ms for the deep check (cached for HEALTH_CACHE_MS, as in
production). The scrape part opens ``--ws`` WebSocket connections, then times sequential
GET /metrics, before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tornado.web  # noqa: E402
import tornado.websocket  # noqa: E402
from tornado.httpclient import AsyncHTTPClient  # noqa: E402

from tests.support.procs import RedisProcess, free_port, port_open, wait_until  # noqa: E402

PROBES = ("/ping", "/api/health/live", "/api/health/ready")
DEEP = "/api/health"
PROBE_GOAL_MS, DEEP_GOAL_MS = 25.0, 50.0
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


# -- the two servers (run as children of the bench: --serve, --serve-bare)


class _JsonHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"status": "ok"})


async def _serve_bare(port: int) -> None:
    app = tornado.web.Application([(r"/json", _JsonHandler)])
    app.listen(port, "127.0.0.1")
    await _until_terminated()


async def _serve(port: int) -> None:
    from mangu.app import make_app, make_server
    from mangu.config import load_settings
    from mangu.lifecycle import settle_heap
    from mangu.log import configure_logging
    from mangu.services import Services

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, settings.log_file)
    services = Services(settings)
    await services.start()
    app = make_app(settings, services)
    metrics = services.metrics

    class BenchSocket(tornado.websocket.WebSocketHandler):
        """Bench-only: holds a connection open and counts it like the realtime endpoint does."""

        def check_origin(self, origin: str) -> bool:
            return True

        def open(self) -> None:
            metrics.ws_connections.inc()
            metrics.ws_connections_opened.inc()

        def on_message(self, message: Any) -> None:
            metrics.ws_messages.labels(direction="in", event="bench").inc()

        def on_close(self) -> None:
            metrics.ws_connections.dec()
            metrics.ws_connections_closed.labels(code=str(self.close_code or 1005)).inc()

    app.add_handlers(r".*", [(r"/bench-ws", BenchSocket)])
    server = make_server(app, settings)
    server.listen(port, "127.0.0.1")
    settle_heap()  # as Lifecycle.serve does
    await _until_terminated()
    server.stop()
    await services.close()


async def _until_terminated() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


# -- the bench


def wrk(url: str, connections: int, duration: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s", url],
        capture_output=True, text=True, check=True,
    ).stdout
    percentiles = re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    latency = {pct: float(v) * _UNIT[unit] for pct, v, unit in percentiles}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": latency["50"],
        "p99": latency["99"],
        "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


async def scrape_times(url: str, count: int) -> tuple[list[float], int]:
    client = AsyncHTTPClient()
    times, size = [], 0
    for _ in range(count):
        t0 = time.perf_counter()
        response = await client.fetch(url)
        times.append((time.perf_counter() - t0) * 1000)
        size = len(response.body)
    return times, size


async def open_websockets(url: str, count: int) -> list[Any]:
    sockets: list[Any] = []
    for start in range(0, count, 100):
        batch = range(start, min(count, start + 100))
        sockets += await asyncio.gather(*(tornado.websocket.websocket_connect(url) for _ in batch))
    return sockets


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def start(mode: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, mode, str(port)], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    wait_until(lambda: proc.poll() is not None or port_open(port), 60, what=f"{mode} to listen")
    if proc.poll() is not None:
        raise RuntimeError(f"{mode} exited with {proc.returncode}")
    return proc


async def run(args: argparse.Namespace) -> None:
    redis = RedisProcess().start()
    bare_port, port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    data = tempfile.mkdtemp(prefix="mangu-health-bench-")
    try:
        procs.append(start("--serve-bare", bare_port, {}))
        procs.append(start("--serve", port, {
            "MANGU_ENV": "development", "LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "DATA_DIR": data,
            "REDIS_URL": redis.url, "RATE_LIMIT_ENABLED": "false",
        }))
        base = f"http://127.0.0.1:{port}"
        client = AsyncHTTPClient()
        for _ in range(100):  # until MongoDB and Redis are up
            if (await client.fetch(base + DEEP, raise_error=False)).code == 200:
                break
            await asyncio.sleep(0.1)

        rows: list[tuple[str, str, dict[str, float]]] = []
        rows.append(("bare Tornado JSON handler (reference)", "/json",
                     wrk(f"http://127.0.0.1:{bare_port}/json", args.connections, args.duration, args.threads)))
        for path in (*PROBES, DEEP):
            rows.append(("mangu", path, wrk(base + path, args.connections, args.duration, args.threads)))

        before, size_before = await scrape_times(base + "/metrics", args.scrapes)
        sockets = await open_websockets(f"ws://127.0.0.1:{port}/bench-ws", args.ws)
        after, size_after = await scrape_times(base + "/metrics", args.scrapes)
        exposition = (await client.fetch(base + "/metrics")).body.decode()
        open_count = re.search(r"^mangu_websocket_connections ([\d.]+)$", exposition, re.M)
        for ws in sockets:
            ws.close()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis.kill()

    reference = rows[0][2]
    print(f"# health_bench: wrk -t{args.threads} -c{args.connections} -d{args.duration}s per URL; "
          f"{args.scrapes} sequential scrapes of /metrics with {args.ws} WebSocket connections")
    print(f"# python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print()
    print("| endpoint | req/s | p50 ms | p99 ms | p99 vs bare Tornado | goal (p99) | non-2xx |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for server, path, r in rows:
        goal = "" if server != "mangu" else (
            f"≤ {PROBE_GOAL_MS:g} ms: {'met' if r['p99'] <= PROBE_GOAL_MS else 'NOT met'}" if path in PROBES
            else f"≤ {DEEP_GOAL_MS:g} ms: {'met' if r['p99'] <= DEEP_GOAL_MS else 'NOT met'}")
        label = path if server == "mangu" else f"{path} ({server})"
        print(f"| {label} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p99'] / reference['p99']:.2f}× "
              f"| {goal} | {r['non_2xx']:.0f} |")
    print()
    print("| /metrics scrape | WebSocket connections | p50 ms | p99 ms | bytes |")
    print("|---|---:|---:|---:|---:|")
    print(f"| before | 0 | {statistics.median(before):.2f} | {percentile(before, 0.99):.2f} | {size_before} |")
    held = f"{float(open_count.group(1)):.0f}" if open_count else "?"
    print(f"| with connections open | {held} | {statistics.median(after):.2f} "
          f"| {percentile(after, 0.99):.2f} | {size_after} |")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in ("--serve", "--serve-bare"):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        asyncio.run((_serve if sys.argv[1] == "--serve" else _serve_bare)(int(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per URL")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ws", type=int, default=1000, help="WebSocket connections held open for the scrape")
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

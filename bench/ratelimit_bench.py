"""Throughput and latency of one JSON endpoint with no limiter, the memory limiter and the
Redis limiter, side by side in one run.

    .venv/bin/python bench/ratelimit_bench.py [--duration 10] [--connections 64] [--threads 2] [--rounds 5]

Each configuration runs the real app (services, handlers, the access log at WARNING) in a
server process of its own; ``wrk`` loads it from another process, every request carrying an
``X-Forwarded-For`` from a pool of client addresses (``--clients``, 1,000) (the server trusts 127.0.0.1 as
its proxy), so the limiter keys one bucket pair per address. The limits are set high enough
that nothing is refused: what is measured is the cost of deciding. Rounds alternate the
configurations so drift in machine speed hits them all; the median round is reported, with
the CPU use of the server, wrk and redis-server over the measured run (a process near 100%
of one core is the bottleneck), and then the median of each round's own ratios (a round's
configurations run back to back). With two CPUs or more, the server has the last CPU to itself
and wrk and redis-server share the others (``--no-pin`` leaves placement to the scheduler),
so that where the scheduler puts the load generator is not part of what is measured.
Goals: memory >= 0.95 and Redis >= 0.70 of no limiter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("none", "memory", "redis")
PATH = "/bench/books/42"

# A new client address per request, cycling through CLIENTS of them.
WRK_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  local i = n % CLIENTS
  return wrk.format(nil, nil, {["X-Forwarded-For"] = "10." .. (i % 250) .. "." .. math.floor(i / 250) % 250 .. ".9"})
end
"""


# -- the server side (a process of its own: bench/ratelimit_bench.py --serve MODE --port N)


def bench_environ(mode: str) -> dict[str, str]:
    """The server's settings for ``mode`` (none, memory or redis, before its REDIS_URL)."""
    return {
        "MANGU_ENV": "production", "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json",
        "JWT_SECRET": "bench-secret-0123456789abcdef0123456789abcdef", "MONGODB_URL": "mongodb://127.0.0.1:1/",
        "TRUSTED_PROXIES": "127.0.0.1", "RATE_LIMIT_ENABLED": "false" if mode == "none" else "true",
        # Quotas no client of the run exhausts, refilling slower than the clients spend them (a
        # token every 0.86 s, against about one request a second per client), as for clients
        # that use part of their quota; the burst bucket is full again between two requests.
        "RATE_LIMIT_MAX": "100000", "RATE_LIMIT_WINDOW": "86400000", "RATE_LIMIT_BURST": "1000",
    }


def serve(mode: str, port: int, redis_url: str | None) -> None:
    import tornado.web
    from tornado.netutil import bind_sockets

    from handlers.base import APIHandler
    from mangu.app import make_app, make_server
    from mangu.lifecycle import settle_heap
    from mangu.config import load_settings
    from mangu.log import configure_logging
    from mangu.services import Services

    class BookHandler(APIHandler):
        def get(self, book_id: str) -> None:
            self.write_json({"id": book_id, "title": "Dune", "author": "Frank Herbert", "year": 1965})

    class StatsHandler(APIHandler):
        rate_limit = None

        def get(self) -> None:
            registry = self.services.metrics.registry
            self.write_json({
                "batches": registry.get_sample_value("mangu_ratelimit_redis_batch_size_count") or 0,
                "batched": registry.get_sample_value("mangu_ratelimit_redis_batch_size_sum") or 0,
                "backend": self.services.limiter.backend,
            })

    environ = {**bench_environ(mode), "PORT": str(port)}
    if mode == "redis":
        environ["REDIS_URL"] = redis_url or ""
    settings = load_settings(environ)
    configure_logging(settings.log_level, settings.log_format)

    async def main() -> None:
        services = Services(settings)
        await services.start()
        assert services.limiter.backend == ("redis" if mode == "redis" else "memory")
        app = make_app(settings, services)
        app.add_handlers(r".*", [
            tornado.web.url(r"/bench/books/([0-9]+)", BookHandler, {"route": "/bench/books/{id}"}),
            tornado.web.url(r"/bench/stats", StatsHandler, {"route": "/bench/stats"}),
        ])
        server = make_server(app, settings)
        server.add_sockets(bind_sockets(port, "127.0.0.1", backlog=1024))
        settle_heap()  # as Lifecycle.serve does
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the load side


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer")
        time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def to_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def placement(args: argparse.Namespace) -> tuple[set[int] | None, set[int] | None]:
    """CPUs for (the server, wrk and redis-server): the last one, and the others; None for any."""
    cpus = sorted(os.sched_getaffinity(0))
    if not args.pin or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def pinned(cpus: set[int] | None) -> Any:
    """A preexec_fn that keeps the child on ``cpus`` (None: wherever the scheduler likes)."""
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def run_wrk(url: str, args: argparse.Namespace, script: str, duration: int) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--latency", "-s", script, url],
        capture_output=True, text=True, check=True, timeout=duration + 60, preexec_fn=pinned(placement(args)[1]),
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": to_ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "p99": to_ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "wrk_cpu": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / duration,
    }


def measure(mode: str, args: argparse.Namespace, script: str, redis_pid: int | None, redis_url: str) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--port", str(port), "--redis-url", redis_url],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=pinned(placement(args)[0]),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base + "/ping")
        run_wrk(base + PATH, args, script, args.warmup)
        stats_before = _stats(base)
        server_cpu, redis_cpu = cpu_seconds(server.pid), cpu_seconds(redis_pid) if redis_pid else 0.0
        started = time.monotonic()
        result = run_wrk(base + PATH, args, script, args.duration)
        elapsed = time.monotonic() - started
        result["server_cpu"] = (cpu_seconds(server.pid) - server_cpu) / elapsed
        result["cpu_us"] = result["server_cpu"] / result["rps"] * 1e6
        result["redis_cpu"] = (cpu_seconds(redis_pid) - redis_cpu) / elapsed if redis_pid and mode == "redis" else 0.0
        stats = _stats(base)
        batches = stats["batches"] - stats_before["batches"]
        result["batch"] = (stats["batched"] - stats_before["batched"]) / batches if batches else 0.0
        if mode == "redis" and stats["backend"] != "redis":
            raise RuntimeError("the Redis limiter fell back to memory during the run")
        return result
    finally:
        server.terminate()
        server.wait(10)


def _stats(base: str) -> dict[str, float]:
    import json

    with urllib.request.urlopen(base + "/bench/stats", timeout=5) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk before each measured run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=1000, help="distinct client addresses (X-Forwarded-For)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="leave the server, wrk and redis-server wherever the scheduler puts them")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.redis_url)
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install wrk)")

    redis_port = free_port()
    redis = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, preexec_fn=pinned(placement(args)[1]),
    )
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    load_before = os.getloadavg()[0]
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT.replace("CLIENTS", str(args.clients)))
        script.flush()
        try:
            time.sleep(0.3)
            for _ in range(args.rounds):
                for mode in MODES:
                    results[mode].append(measure(mode, args, script.name, redis.pid, redis_url))
        finally:
            redis.terminate()
            redis.wait(10)

    def median(mode: str, field: str) -> float:
        return statistics.median(r[field] for r in results[mode])

    baseline = median("none", "rps")
    server_cpus, load_cpus = placement(args)
    where = "unpinned"
    if server_cpus and load_cpus:
        where = f"server on CPU {sorted(server_cpus)}, wrk and redis-server on {sorted(load_cpus)}"
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs ({where}); wrk -t{args.threads} -c{args.connections}"
          f" -d{args.duration}s --latency, {args.rounds} rounds, median round; {args.clients} client addresses;"
          f" load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{'limiter':<8} {'req/s':>8} {'vs none':>8} {'p50 ms':>7} {'p99 ms':>7} {'server CPU':>11}"
          f" {'µs CPU/req':>10} {'wrk CPU':>8} {'redis CPU':>10} {'reqs/EVALSHA':>13}")
    for mode in MODES:
        rps = median(mode, "rps")
        print(f"{mode:<8} {rps:>8.0f} {rps / baseline:>7.2f}x {median(mode, 'p50'):>7.2f} {median(mode, 'p99'):>7.2f}"
              f" {median(mode, 'server_cpu'):>10.0%} {median(mode, 'cpu_us'):>10.1f} {median(mode, 'wrk_cpu'):>8.0%}"
              f" {median(mode, 'redis_cpu'):>10.0%} {median(mode, 'batch'):>13.1f}")
    for mode in MODES:
        busiest = max(("server", median(mode, "server_cpu")), ("wrk", median(mode, "wrk_cpu")),
                      ("redis-server", median(mode, "redis_cpu")), key=lambda item: item[1])
        verdict = "CPU-bound" if busiest[1] >= 0.9 else "no process CPU-bound (latency-bound, or the CPUs are shared)"
        print(f"{mode}: busiest process {busiest[0]} at {busiest[1]:.0%} of one core: {verdict}")
    print("every round (req/s): " + "; ".join(
        f"{mode} " + ", ".join(f"{r['rps']:.0f}" for r in results[mode]) for mode in MODES))
    # Each round's own ratios (its configurations ran back to back, about half a minute apart):
    # less moved by drift in the machine's speed over the run than the ratio of medians.
    paired = {mode: statistics.median(r["rps"] / none["rps"] for r, none in zip(results[mode], results["none"]))
              for mode in ("memory", "redis")}
    print(f"median of each round's ratio: memory {paired['memory']:.3f}x, redis {paired['redis']:.3f}x")
    memory, redis_ratio = median("memory", "rps") / baseline, median("redis", "rps") / baseline
    print(f"goal: memory >= 0.95x: {'met' if memory >= 0.95 else 'NOT met'} ({memory:.2f}x); "
          f"redis >= 0.70x: {'met' if redis_ratio >= 0.70 else 'NOT met'} ({redis_ratio:.2f}x)")


if __name__ == "__main__":
    main()

"""Throughput and latency of one JSON endpoint with no limiter, the memory limiter and the
Redis limiter, side by side in one run.

    .venv/bin/python bench/ratelimit_bench.py [--sets 6] [--rounds 4] [--duration 5] [--connections 64]
    .venv/bin/python bench/ratelimit_bench.py --sequential [--rounds 5] [--duration 10]
    .venv/bin/python bench/ratelimit_bench.py --compare OTHER_CHECKOUT   # and its memory and no-limiter servers

Each configuration runs the real app (services, handlers, the access log at WARNING) in a
server process of its own; ``wrk`` loads it from another process, every request carrying an
``X-Forwarded-For`` from a pool of client addresses (``--clients``, 1,000) (the server trusts
127.0.0.1 as its proxy), so the limiter keys one bucket pair per address. The limits are set
high enough that nothing is refused: what is measured is the cost of deciding. With two CPUs
or more, the servers have the last CPU to themselves and wrk and redis-server share the
others (``--no-pin`` leaves placement to the scheduler), so that where the scheduler puts
the load generator is not part of what is measured.

By default the three servers run at the same time, on that one CPU, each loaded by a wrk of
its own for the same ``--duration`` (a round); the kernel shares the CPU among them, so a
change in the machine's speed (which on a shared virtual machine moves one server's
throughput by 10% from one few-second run to the next) hits all three alike, and each
round's ratio of requests served compares them under the very same conditions. Each server's
CPU time is read too: requests per CPU-second (the throughput of a server with a core to
itself) gives the same ratios when the CPU is shared fairly. ``--sets`` fresh sets of servers
(``--rounds`` rounds each) average out what differs from one server process to another
(memory layout, hash seeds). Reported: the median round's figures per configuration, then
the median of the rounds' ratios with a 95% interval (bootstrap), which the goals are
checked against.

``--sequential`` loads one server at a time instead (the method of the first benchmark
runs): a new server per configuration and round, alternating, the median round reported,
with each process's CPU use over the measured run. Its ratios move with the machine's speed
between runs. Goals: memory >= 0.95 and Redis >= 0.70 of no limiter.

``--compare OTHER_CHECKOUT`` adds two servers to each set: the memory limiter and no limiter
of that checkout's code (served by its own copy of this file), for telling two versions
apart; its memory limiter's ratios to both no-limiter servers, and the ratio of each of this
checkout's two servers to its server of the same mode, are printed too. A change to what
every request runs (not only the limiter) moves both of its servers, so the limiter's ratio
is read within each checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
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
COMPARED = "compared"  # the memory limiter of --compare's checkout
COMPARED_NONE = "compared-none"  # and its server with no limiter
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
    """CPUs for (the servers, wrk and redis-server): the last one, and the others; None for any."""
    cpus = sorted(os.sched_getaffinity(0))
    if not args.pin or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def pinned(cpus: set[int] | None) -> Any:
    """A preexec_fn that keeps the child on ``cpus`` (None: wherever the scheduler likes)."""
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def start_wrk(url: str, args: argparse.Namespace, script: str, duration: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--latency", "-s", script, url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=pinned(placement(args)[1]),
    )


def wrk_result(wrk: subprocess.Popen[str], duration: int) -> dict[str, float]:
    """Requests/s and p50/p99 latency (ms) of a wrk run, once it has ended."""
    out = wrk.communicate(timeout=duration + 60)[0]
    if wrk.returncode:
        raise RuntimeError(f"wrk failed:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return {
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": to_ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "p99": to_ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
    }


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Server:
    """A bench server process (``--serve MODE``) on a port of its own, of this checkout's code
    or of ``root``'s (its own bench/ratelimit_bench.py serves it), reported as ``name``."""

    def __init__(self, mode: str, args: argparse.Namespace, redis_url: str, root: Path = ROOT,
                 name: str | None = None) -> None:
        self.mode = mode
        self.name = name or mode
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        # The server's log goes to a file, never to a pipe nobody reads (a full pipe would
        # stall its event loop); stop() shows its errors.
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [sys.executable, str(root / "bench" / "ratelimit_bench.py"), "--serve", mode, "--port", str(port),
             "--redis-url", redis_url],
            cwd=root, stdout=subprocess.DEVNULL, stderr=self.log, text=True,
            preexec_fn=pinned(placement(args)[0]),
        )

    def stats(self) -> dict[str, Any]:
        import json

        with urllib.request.urlopen(self.base + "/bench/stats", timeout=5) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.seek(0)
        errors = [line for line in self.log if '"level":"ERROR"' in line or '"level":"CRITICAL"' in line
                  or line.startswith("Traceback")]
        self.log.close()
        if errors:
            first = errors[0].strip()[:500]
            print(f"{self.name} server logged {len(errors)} errors; the first: {first}", file=sys.stderr)


def run_round(servers: list[Server], args: argparse.Namespace, script: str, duration: int,
              redis_pid: int | None) -> dict[str, dict[str, float]]:
    """Load ``servers`` at the same time, each with a wrk of its own, for ``duration`` seconds:
    each one's wrk figures, CPU use and requests per EVALSHA."""
    cpu_before = {server.name: cpu_seconds(server.process.pid) for server in servers}
    stats_before = {server.name: server.stats() for server in servers}
    redis_before = cpu_seconds(redis_pid) if redis_pid else 0.0
    wrk_before = children_cpu()
    started = time.monotonic()
    wrks = [start_wrk(server.base + PATH, args, script, duration) for server in servers]
    results = [wrk_result(wrk, duration) for wrk in wrks]
    elapsed = time.monotonic() - started
    redis_cpu = (cpu_seconds(redis_pid) - redis_before) / elapsed if redis_pid else 0.0
    wrk_cpu = (children_cpu() - wrk_before) / elapsed
    round_: dict[str, dict[str, float]] = {}
    for server, result in zip(servers, results):
        cpu = cpu_seconds(server.process.pid) - cpu_before[server.name]
        stats, before = server.stats(), stats_before[server.name]
        if server.mode == "redis" and stats["backend"] != "redis":
            raise RuntimeError("the Redis limiter fell back to memory during the run")
        batches = stats["batches"] - before["batches"]
        result.update(
            server_cpu=cpu / elapsed, cpu_us=cpu / result["requests"] * 1e6, per_cpu_second=result["requests"] / cpu,
            wrk_cpu=wrk_cpu, redis_cpu=redis_cpu if server.mode == "redis" else 0.0,
            batch=(stats["batched"] - before["batched"]) / batches if batches else 0.0,
        )
        round_[server.name] = result
    return round_


Rounds = list[dict[str, dict[str, float]]]  # per round, per server: its figures


def side_by_side(args: argparse.Namespace, script: str, redis_pid: int, redis_url: str) -> Rounds:
    """``--sets`` sets of the three servers (and ``--compare``'s memory and no-limiter ones), each
    loaded ``--rounds`` times all at once."""
    rounds = []
    for _ in range(args.sets):
        servers = [Server(mode, args, redis_url) for mode in MODES]
        if args.compare:
            servers.append(Server("memory", args, redis_url, root=args.compare, name=COMPARED))
            servers.append(Server("none", args, redis_url, root=args.compare, name=COMPARED_NONE))
        try:
            for server in servers:
                wait_ready(server.base + "/ping")
            run_round(servers, args, script, args.warmup, redis_pid)
            for _ in range(args.rounds):
                rounds.append(run_round(servers, args, script, args.duration, redis_pid))
        finally:
            for server in servers:
                server.stop()
    return rounds


def sequential(args: argparse.Namespace, script: str, redis_pid: int, redis_url: str) -> Rounds:
    """``--rounds`` rounds, each loading a new server per configuration, one after the other."""
    rounds = []
    for _ in range(args.rounds):
        round_ = {}
        for mode in MODES:
            server = Server(mode, args, redis_url)
            try:
                wait_ready(server.base + "/ping")
                run_round([server], args, script, args.warmup, redis_pid)
                round_.update(run_round([server], args, script, args.duration, redis_pid))
            finally:
                server.stop()
        rounds.append(round_)
    return rounds


def median_interval(values: list[float], resamples: int = 4000) -> tuple[float, float, float]:
    """The median of ``values`` and a 95% bootstrap interval for it (a fixed seed: the same
    values give the same interval)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return statistics.median(values), medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def report(args: argparse.Namespace, rounds: Rounds, load_before: float) -> None:
    def median(mode: str, field: str) -> float:
        return statistics.median(r[mode][field] for r in rounds)

    names = MODES + ((COMPARED, COMPARED_NONE) if args.compare else ())

    server_cpus, load_cpus = placement(args)
    where = "unpinned"
    if server_cpus and load_cpus:
        where = f"servers on CPU {sorted(server_cpus)}, wrk and redis-server on {sorted(load_cpus)}"
    if args.sequential:
        method = f"one server at a time, {args.rounds} rounds"
    else:
        method = f"the {len(names)} servers side by side, {args.sets} sets of {args.rounds} rounds"
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs ({where}); wrk -t{args.threads} -c{args.connections}"
          f" -d{args.duration}s --latency per server; {method}; {args.clients} client addresses;"
          f" load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{'limiter':<13} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'server CPU':>11} {'µs CPU/req':>10}"
          f" {'req/CPU-s':>10} {'wrk CPU':>8} {'redis CPU':>10} {'reqs/EVALSHA':>13}")
    for mode in names:
        print(f"{mode:<13} {median(mode, 'rps'):>8.0f} {median(mode, 'p50'):>7.2f} {median(mode, 'p99'):>7.2f}"
              f" {median(mode, 'server_cpu'):>10.0%} {median(mode, 'cpu_us'):>10.1f}"
              f" {median(mode, 'per_cpu_second'):>10.0f} {median(mode, 'wrk_cpu'):>8.0%}"
              f" {median(mode, 'redis_cpu'):>10.0%} {median(mode, 'batch'):>13.1f}")
    if not args.sequential:
        print("(side by side, wrk CPU is that of all the round's wrk processes together)")
    print("every round (req/s): " + "; ".join(
        f"{mode} " + ", ".join(f"{r[mode]['rps']:.0f}" for r in rounds) for mode in names))
    # Each round's own ratios: its configurations ran at the same time (side by side) or
    # back to back (sequential), so drift in the machine's speed moves them less than it
    # moves the ratio of medians.
    verdicts = []
    for mode, goal in (("memory", 0.95), ("redis", 0.70)):
        ratios = [r[mode]["rps"] / r["none"]["rps"] for r in rounds]
        per_cpu = [r[mode]["per_cpu_second"] / r["none"]["per_cpu_second"] for r in rounds]
        mid, low, high = median_interval(ratios)
        cpu_mid, cpu_low, cpu_high = median_interval(per_cpu)
        print(f"{mode} vs none, median of {len(rounds)} rounds' ratios: requests {mid:.3f}x"
              f" (95% interval {low:.3f}-{high:.3f});"
              f" requests per CPU-second {cpu_mid:.3f}x ({cpu_low:.3f}-{cpu_high:.3f}); ratio of medians"
              f" {median(mode, 'rps') / median('none', 'rps'):.3f}x")
        verdicts.append(f"{mode} >= {goal:.2f}x: {'met' if mid >= goal else 'NOT met'} ({mid:.3f}x"
                        f"{', the whole interval above' if low >= goal else ''})")
    print("goal: " + "; ".join(verdicts))
    if args.compare:
        label = {COMPARED: f"memory of {args.compare}", COMPARED_NONE: f"none of {args.compare}",
                 "memory": "memory of this checkout", "none": "none of this checkout"}
        pairs = (("none", COMPARED), (COMPARED_NONE, COMPARED), (COMPARED, "memory"), (COMPARED_NONE, "none"))
        for name, other in pairs:
            mid, low, high = median_interval([r[other]["rps"] / r[name]["rps"] for r in rounds])
            print(f"{label.get(other, other)} vs {label.get(name, name)}: median of the rounds' ratios"
                  f" {mid:.3f}x (95% interval {low:.3f}-{high:.3f})")
    if args.sequential:
        for mode in MODES:
            busiest = max(("server", median(mode, "server_cpu")), ("wrk", median(mode, "wrk_cpu")),
                          ("redis-server", median(mode, "redis_cpu")), key=lambda item: item[1])
            verdict = ("CPU-bound" if busiest[1] >= 0.9
                       else "no process CPU-bound (latency-bound, or the CPUs are shared)")
            print(f"{mode}: busiest process {busiest[0]} at {busiest[1]:.0%} of one core: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequential", action="store_true", help="load one server at a time (the earlier method)")
    parser.add_argument("--duration", type=int, help="seconds of each measured wrk run (5 side by side, 10 sequential)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk before a server's first measured run")
    parser.add_argument("--connections", type=int, default=64, help="connections of each wrk")
    parser.add_argument("--threads", type=int, default=2, help="threads of each wrk")
    parser.add_argument("--sets", type=int, default=6, help="fresh sets of servers (side by side)")
    parser.add_argument("--rounds", type=int, help="measured rounds per set of servers (4), or in all (sequential, 5)")
    parser.add_argument("--clients", type=int, default=1000, help="distinct client addresses (X-Forwarded-For)")
    parser.add_argument("--compare", type=Path, metavar="OTHER_CHECKOUT",
                        help="also run the memory limiter and no limiter of another checkout, side by side")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="leave the servers, wrk and redis-server wherever the scheduler puts them")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.redis_url)
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install wrk)")
    if args.compare and args.sequential:
        parser.error("--compare runs side by side only")
    if args.compare:
        args.compare = args.compare.resolve()
    if args.duration is None:
        args.duration = 10 if args.sequential else 5
    if args.rounds is None:
        args.rounds = 5 if args.sequential else 4

    redis_port = free_port()
    redis = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, preexec_fn=pinned(placement(args)[1]),
    )
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    load_before = os.getloadavg()[0]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT.replace("CLIENTS", str(args.clients)))
        script.flush()
        try:
            time.sleep(0.3)
            run = sequential if args.sequential else side_by_side
            rounds = run(args, script.name, redis.pid, redis_url)
        finally:
            redis.terminate()
            redis.wait(10)
    report(args, rounds, load_before)


if __name__ == "__main__":
    main()

"""Room fan-out, side by side in one run: this server (message:send, stored in MongoDB,
delivered to every member), a bare Tornado broadcast server, python-socketio, and this
server as a cluster of two processes on Redis.

    .venv/bin/python bench/fanout_bench.py [--members 1000] [--messages 200] [--size 100]
                                           [--servers mangu,bare,socketio,mangu-cluster]

One room of N members, each on its own connection (split over --member-procs wsload
processes; for the cluster, half of them on each server process), and one publisher in the
room (on the first process) that sends M messages of about --size bytes, each once its own
copy came back. Reported per server: deliveries per second (N x M over the publishing time),
p50/p99 end-to-end latency (send to receive, CLOCK_MONOTONIC across processes), server CPU
per delivery (both processes for the cluster), the CPU share of every process (to show which
one was the bottleneck), and loss and duplicates. MongoDB (nx-27017 here) and Redis are
processes of their own; their CPU is shown on its own.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Load, Mongo, Server, bare_server, cpu_seconds, fmt, free_port, mangu_server, socketio_server, wait_port,
    write_tokens, ws_target,
)

NAMES = {"mangu": "mangu", "bare": "bare tornado", "socketio": "python-socketio", "mangu-cluster": "mangu, 2 procs"}


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--loglevel", "warning"], stdout=subprocess.DEVNULL,
        )
        wait_port(self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def servers_for(kind: str, workdir: str, mongo: Mongo, redis: RedisServer | None) -> list[Server]:
    db = {"MONGODB_DB": f"bench{time.time_ns()}"}
    if kind == "mangu":
        return [mangu_server(free_port(), workdir, mongo.url, **db)]
    if kind == "mangu-cluster":
        assert redis is not None
        return [mangu_server(free_port(), workdir, mongo.url, REDIS_URL=redis.url, **db) for _ in range(2)]
    if kind == "bare":
        return [bare_server(free_port())]
    return [socketio_server(free_port())]


def run_one(kind: str, args: argparse.Namespace, workdir: str, mongo: Mongo, redis: RedisServer | None) -> dict:
    proto = "mangu" if kind.startswith("mangu") else kind
    servers = servers_for(kind, workdir, mongo, redis)
    pub_tokens = write_tokens(f"{workdir}/pub-{kind}.txt", ["publisher"])
    for server in servers:
        server.start()
    procs = max(args.member_procs, len(servers))
    members: list[Load] = []
    try:
        per_proc = [args.members // procs + (1 if i < args.members % procs else 0) for i in range(procs)]
        for index, count in enumerate(per_proc):
            tokens = write_tokens(f"{workdir}/tokens-{kind}-{index}.txt", [f"m{index}-{i}" for i in range(count)])
            target = servers[index % len(servers)]
            members.append(Load(["--role", "members", *ws_target(target, proto), "--count", str(count),
                                 "--room", "bench", "--messages", str(args.messages), "--tokens", tokens]))
        for load in members:
            load.read_json(300)
        time.sleep(1.0)
        pids = [s.pid for s in servers]
        server_cpu0 = sum(cpu_seconds(pid) for pid in pids)
        side = {"db": mongo.proc.pid if proto == "mangu" else None,
                "redis": redis.proc.pid if (redis and kind == "mangu-cluster") else None}
        side0 = {name: cpu_seconds(pid) for name, pid in side.items() if pid}
        publisher = Load(["--role", "publisher", *ws_target(servers[0], proto), "--room", "bench", "--messages",
                          str(args.messages), "--size", str(args.size), "--tokens", pub_tokens])
        pub = publisher.read_json(600)
        server_cpu = sum(cpu_seconds(pid) for pid in pids) - server_cpu0
        side_cpu = {name: cpu_seconds(pid) - side0[name] for name, pid in side.items() if pid}
        time.sleep(1.0)
        stats = [load.stop() for load in members]
    finally:
        for load in members:
            load.kill()
        for server in servers:
            server.stop()
    elapsed = pub["elapsed_ms"] / 1000
    received = sum(s["received"] for s in stats)
    expected = args.members * args.messages
    duplicates = sum(s["duplicates"] for s in stats)
    return {
        "server": NAMES[kind], "deliveries": received, "expected": expected,
        "lost": expected - min(received, expected), "duplicates": duplicates,
        "elapsed": elapsed, "rate": received / elapsed,
        "p50": max(s["p50_ms"] for s in stats), "p99": max(s["p99_ms"] for s in stats),  # the worse process
        "server_cpu_us": server_cpu / max(received, 1) * 1e6,
        "server_cpu_share": server_cpu / elapsed / len(servers),
        "client_cpu_share": sum(s["cpu_ms"] for s in stats) / 1000 / elapsed,
        "side": {name: cpu / elapsed for name, cpu in side_cpu.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--member-procs", type=int, default=1)
    parser.add_argument("--servers", default="mangu,bare,socketio")
    args = parser.parse_args()
    kinds = args.servers.split(",")

    results = []
    with tempfile.TemporaryDirectory() as workdir:
        mongo = Mongo(f"{workdir}/mongo")
        redis = RedisServer() if "mangu-cluster" in kinds else None
        try:
            for kind in kinds:
                results.append(run_one(kind, args, workdir, mongo, redis))
        finally:
            mongo.stop()
            if redis:
                redis.stop()

    print(f"fan-out: {args.members} members, {args.messages} messages of ~{args.size} B, "
          f"{max(args.member_procs, 1)} member process(es) per server process")
    print(f"{'server':<16} {'deliv/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'srv µs/dl':>9} "
          f"{'srv CPU':>7} {'clients':>7} {'db/redis':>9} {'lost':>5} {'dup':>4}")
    for r in results:
        side = "/".join(f"{share:.0%}" for share in r["side"].values()) or "-"
        print(f"{r['server']:<16} {r['rate']:>9,.0f} {fmt(r['p50'], 2):>8} {fmt(r['p99'], 2):>8} "
              f"{r['server_cpu_us']:>9.1f} {r['server_cpu_share']:>6.0%} {r['client_cpu_share']:>7.0%} "
              f"{side:>9} {r['lost']:>5} {r['duplicates']:>4}")
    by = {r["server"]: r for r in results}
    if "mangu" in by:
        for other in ("bare tornado", "python-socketio", "mangu, 2 procs"):
            if other in by:
                print(f"mangu / {other}: {by['mangu']['rate'] / by[other]['rate']:.2f}x deliveries/s, "
                      f"p99 {by['mangu']['p99'] / by[other]['p99']:.2f}x")
    for r in results:
        bound = ("server" if r["server_cpu_share"] >= 0.85 else
                 "clients" if r["client_cpu_share"] >= 0.85 else "neither (latency-bound)")
        print(f"{r['server']}: CPU-bound process: {bound} (server {r['server_cpu_share']:.0%} of a core per process,"
              f" load clients {r['client_cpu_share']:.0%})")


if __name__ == "__main__":
    main()

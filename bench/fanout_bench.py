"""Room fan-out, side by side: this server (message:send, stored in MongoDB, delivered to
every member), a bare Tornado broadcast server, and python-socketio, in one run.

    .venv/bin/python bench/fanout_bench.py [--members 1000] [--messages 200] [--size 100]

One room of N members, each on its own connection (split over --member-procs wsload
processes), and one publisher in the room that sends M messages of about --size bytes, each
once its own copy came back. Reported per server: deliveries per second (N x M over the
publishing time), p50/p99 end-to-end latency (send to receive, CLOCK_MONOTONIC across
processes), server CPU per delivery, the CPU share of every process (to show which one was
the bottleneck), and loss/duplicates. The storage server (nx-27017 for this run) is a
separate process; its CPU is shown on its own line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Load, Mongo, Server, bare_server, cpu_seconds, fmt, free_port, mangu_server, socketio_server, write_tokens,
    ws_target,
)

PROTOS = {"mangu": "mangu", "bare": "bare", "socketio": "socketio"}


def run_one(kind: str, args: argparse.Namespace, workdir: str, mongo: Mongo | None) -> dict:
    port = free_port()
    if kind == "mangu":
        server: Server = mangu_server(port, workdir, mongo.url if mongo else None, MONGODB_DB=f"bench{time.time_ns()}")
    elif kind == "bare":
        server = bare_server(port)
    else:
        server = socketio_server(port)
    pub_tokens = write_tokens(f"{workdir}/pub-{kind}.txt", ["publisher"])
    server.start()
    members: list[Load] = []
    try:
        per_proc = [args.members // args.member_procs + (1 if i < args.members % args.member_procs else 0)
                    for i in range(args.member_procs)]
        for index, count in enumerate(per_proc):
            tokens = write_tokens(f"{workdir}/tokens-{kind}-{index}.txt", [f"m{index}-{i}" for i in range(count)])
            members.append(Load(["--role", "members", *ws_target(server, kind), "--count", str(count),
                                 "--room", "bench", "--messages", str(args.messages), "--tokens", tokens]))
        for load in members:
            load.read_json(300)
        time.sleep(0.5)
        server_cpu0 = cpu_seconds(server.pid)
        mongo_cpu0 = cpu_seconds(mongo.proc.pid) if (mongo and kind == "mangu") else 0.0
        publisher = Load(["--role", "publisher", *ws_target(server, kind), "--room", "bench", "--messages",
                          str(args.messages), "--size", str(args.size), "--tokens", pub_tokens])
        pub = publisher.read_json(600)
        server_cpu = cpu_seconds(server.pid) - server_cpu0
        mongo_cpu = (cpu_seconds(mongo.proc.pid) - mongo_cpu0) if (mongo and kind == "mangu") else None
        time.sleep(0.5)
        stats = [load.stop() for load in members]
    finally:
        for load in members:
            load.kill()
        server.stop()
    elapsed = pub["elapsed_ms"] / 1000
    received = sum(s["received"] for s in stats)
    expected = args.members * args.messages
    p50 = max(s["p50_ms"] for s in stats)  # conservative: the worse process
    p99 = max(s["p99_ms"] for s in stats)
    client_cpu = sum(s["cpu_ms"] for s in stats) / 1000
    return {
        "server": server.name, "deliveries": received, "expected": expected,
        "lost": expected - min(received, expected) if not any(s["duplicates"] for s in stats) else None,
        "duplicates": sum(s["duplicates"] for s in stats),
        "min_per_member": min(s["min_per_member"] for s in stats),
        "elapsed": elapsed, "rate": received / elapsed, "p50": p50, "p99": p99,
        "server_cpu_us": server_cpu / max(received, 1) * 1e6,
        "server_cpu_share": server_cpu / elapsed, "client_cpu_share": client_cpu / elapsed,
        "publisher_cpu_share": pub["cpu_ms"] / 1000 / elapsed,
        "db_cpu_share": None if mongo_cpu is None else mongo_cpu / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--member-procs", type=int, default=1)
    parser.add_argument("--servers", default="mangu,bare,socketio")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as workdir:
        mongo = Mongo(f"{workdir}/mongo") if "mangu" in args.servers else None
        try:
            for kind in args.servers.split(","):
                results.append(run_one(kind, args, workdir, mongo))
        finally:
            if mongo:
                mongo.stop()

    print(f"fan-out: {args.members} members, {args.messages} messages of ~{args.size} B, "
          f"{args.member_procs} member process(es)")
    print(f"{'server':<16} {'deliv/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'srv µs/dl':>9} "
          f"{'srv CPU':>7} {'clients':>7} {'db CPU':>7} {'lost':>5} {'dup':>4}")
    for r in results:
        print(f"{r['server']:<16} {r['rate']:>9,.0f} {fmt(r['p50'], 2):>8} {fmt(r['p99'], 2):>8} "
              f"{r['server_cpu_us']:>9.1f} {r['server_cpu_share']:>6.0%} {r['client_cpu_share']:>7.0%} "
              f"{'-' if r['db_cpu_share'] is None else format(r['db_cpu_share'], '.0%'):>7} "
              f"{'-' if r['lost'] is None else r['lost']:>5} {r['duplicates']:>4}")
    by = {r["server"]: r for r in results}
    if "mangu" in by:
        for other in ("bare tornado", "python-socketio"):
            if other in by:
                print(f"mangu / {other}: {by['mangu']['rate'] / by[other]['rate']:.2f}x deliveries/s, "
                      f"p99 {by['mangu']['p99'] / by[other]['p99']:.2f}x")
    for r in results:
        bound = "server" if r["server_cpu_share"] >= max(r["client_cpu_share"], 0.9) else (
            "clients" if r["client_cpu_share"] >= 0.9 else "neither (latency-bound)")
        print(f"{r['server']}: CPU-bound process: {bound}")


if __name__ == "__main__":
    main()

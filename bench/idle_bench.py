"""Memory per idle connection, side by side: this server (authenticated, each connection
joined to a room) against the bare Tornado broadcast server, in one run.

    .venv/bin/python bench/idle_bench.py [--connections 10000]

The server's RSS is read before and after the connections are opened (after a short
settle), and the difference is divided by the number of connections.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Load, Mongo, bare_server, free_port, mangu_server, rss_bytes, write_tokens, ws_target  # noqa: E402


def measure(kind: str, connections: int, procs: int, workdir: str, mongo: Mongo) -> dict:
    port = free_port()
    server = (mangu_server(port, workdir, mongo.url, WS_MAX_CONNECTIONS="100000") if kind == "mangu"
              else bare_server(port)).start()
    loads: list[Load] = []
    try:
        # warm up: one connection, so lazily built structures are not counted per connection
        warm_tokens = write_tokens(f"{workdir}/warm-{kind}.txt", ["warm"])
        warm = Load(["--role", "idle", *ws_target(server, kind), "--count", "1", "--room", "bench",
                     "--tokens", warm_tokens])
        warm.read_json(60)
        time.sleep(1.0)
        before = rss_bytes(server.pid)
        for index in range(procs):
            count = connections // procs
            tokens = write_tokens(f"{workdir}/idle-{kind}-{index}.txt", [f"i{index}-{i}" for i in range(count)])
            loads.append(Load(["--role", "idle", *ws_target(server, kind), "--count", str(count), "--room", "bench",
                               "--tokens", tokens]))
        opened = sum(load.read_json(600)["ready"] for load in loads)
        time.sleep(2.0)
        after = rss_bytes(server.pid)
        warm.kill()
    finally:
        for load in loads:
            load.kill()
        server.stop()
    return {"server": server.name, "connections": opened, "before": before, "after": after,
            "per_connection": (after - before) / opened}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        mongo = Mongo(f"{workdir}/mongo")
        try:
            results = [measure(kind, args.connections, args.procs, workdir, mongo) for kind in ("mangu", "bare")]
        finally:
            mongo.stop()
    print(f"idle connections: {args.connections} per server")
    print(f"{'server':<14} {'connections':>11} {'RSS before':>11} {'RSS after':>11} {'KB/conn':>8}")
    for r in results:
        print(f"{r['server']:<14} {r['connections']:>11,} {r['before'] / 2**20:>9.1f}MB {r['after'] / 2**20:>9.1f}MB "
              f"{r['per_connection'] / 1024:>8.1f}")
    mangu, bare = results
    print(f"mangu / bare tornado: {mangu['per_connection'] / bare['per_connection']:.2f}x memory per connection; "
          f"goal <= 20 KB: {'met' if mangu['per_connection'] <= 20 * 1024 else 'NOT met'}")


if __name__ == "__main__":
    main()

"""Latency of a message append and a history read: the pooled client the server uses, against
opening a new client for every operation, in one run.

    .venv/bin/python bench/db_bench.py [--ops 300] [--rounds 5] [--url mongodb://...]

Without ``--url`` (or MONGODB_URL) it starts the embedded nx-27017 in a temporary directory.
Both modes run the same ``MessageStore`` code; only where its database handle comes from
differs: the server's ``Database`` (one pool, warm connections) or a fresh
``AsyncMongoClient`` per operation (connect, handshake, then the commands, then close).
Operations run one at a time; rounds alternate the modes so machine drift hits both. The
earlier platform notes claimed pooling cuts query latency by about 80%: the last table
says what was measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pymongo import AsyncMongoClient  # noqa: E402
from pymongo.asynchronous.database import AsyncDatabase  # noqa: E402

from mangu.config import load_settings  # noqa: E402
from mangu.db import Database  # noqa: E402
from mangu.embedded_mongo import EmbeddedMongo  # noqa: E402
from mangu.metrics import Metrics  # noqa: E402
from mangu.store.messages import MessageStore  # noqa: E402


class ClientPerOperation:
    """What ``MessageStore`` needs from a database, with a new client for every operation."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name

    def on_setup(self, setup: Callable[[], Awaitable[None]]) -> None:
        pass  # the pooled store made the indexes already

    @asynccontextmanager
    async def operation(self) -> AsyncIterator[AsyncDatabase]:
        client: AsyncMongoClient = AsyncMongoClient(self.url, appname="mangu-bench/per-op")
        try:
            yield client[self.name]
        finally:
            await client.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def measure(op: Callable[[int], Awaitable[Any]], ops: int, start: int) -> list[float]:
    latencies = []
    for i in range(ops):
        t0 = time.perf_counter()
        await op(start + i)
        latencies.append(time.perf_counter() - t0)
    return latencies


async def run(url: str, ops: int, rounds: int) -> None:
    settings = load_settings({"MANGU_ENV": "test", "MONGODB_URL": url, "MONGODB_DB": f"bench_{os.getpid()}"})
    database = Database(settings, Metrics(version="bench"))
    pooled = MessageStore(database)
    await database.start(url)
    per_op = MessageStore(ClientPerOperation(url, settings.mongodb_db))  # type: ignore[arg-type]
    await pooled.append("bench:warm", "bench", "warm-up", None)  # set-up done, pool warm

    # history reads a room with 50 messages, as a client catching up would
    for i in range(50):
        await pooled.append("bench:history", "bench", f"message {i}", f"h-{i}")

    modes = {"pooled": pooled, "new client per op": per_op}
    results: dict[tuple[str, str], list[float]] = {(m, o): [] for m in modes for o in ("append", "history")}
    counter = 0
    for _ in range(rounds):
        for mode, store in modes.items():
            async def append(i: int, store: MessageStore = store) -> Any:
                return await store.append("bench:append", "bench", f"text {i}", f"a-{i}")

            async def history(i: int, store: MessageStore = store) -> Any:
                return await store.history("bench:history", limit=50)

            results[(mode, "append")] += await measure(append, ops, counter)
            counter += ops
            results[(mode, "history")] += await measure(history, ops, 0)
    await database.close()

    print(f"# db_bench: {ops} ops x {rounds} rounds per mode and operation, one at a time")
    print(f"# server: {url.split('@')[-1]}  pool: min {settings.database_pool_min}, max {settings.database_pool_max}")
    print(f"# python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print()
    print("| operation | mode | median ms | p99 ms |")
    print("|---|---|---:|---:|")
    for (mode, op), values in results.items():
        ms = [v * 1000 for v in values]
        print(f"| {op} | {mode} | {statistics.median(ms):.2f} | {percentile(ms, 0.99):.2f} |")
    print()
    print("| operation | median: pooled / per-op | p99: pooled / per-op | median latency cut by pooling |")
    print("|---|---:|---:|---:|")
    for op in ("append", "history"):
        pooled_ms = [v * 1000 for v in results[("pooled", op)]]
        fresh_ms = [v * 1000 for v in results[("new client per op", op)]]
        median_ratio = statistics.median(pooled_ms) / statistics.median(fresh_ms)
        p99_ratio = percentile(pooled_ms, 0.99) / percentile(fresh_ms, 0.99)
        print(f"| {op} | {median_ratio:.2f}x | {p99_ratio:.2f}x | {(1 - median_ratio) * 100:.0f}% |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=300, help="operations per mode, operation and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--url", default=os.environ.get("MONGODB_URL"), help="MongoDB (default: embedded nx-27017)")
    args = parser.parse_args()
    if args.url:
        await run(args.url, args.ops, args.rounds)
        return
    with tempfile.TemporaryDirectory(prefix="mangu-db-bench-") as directory:
        embedded = EmbeddedMongo(directory)
        url = await embedded.start()
        try:
            await run(url, args.ops, args.rounds)
        finally:
            await embedded.stop()


if __name__ == "__main__":
    asyncio.run(main())

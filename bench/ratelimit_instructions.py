"""CPU instructions of the rate limiter's request path (``APIHandler.prepare``), with no limiter
and with the memory limiter: a count that does not drift with the machine's speed, for
comparing two versions of that path when throughput runs (``bench/ratelimit_bench.py``) are
too noisy to tell them apart.

    .venv/bin/python bench/ratelimit_instructions.py [--root OTHER_CHECKOUT]

In a process of its own under valgrind (cachegrind), the real app (services, the bench's
endpoint and quotas: 100,000 a day, burst 1,000 a second, X-Forwarded-For from 127.0.0.1
trusted) gets 1,000 requests, one per client address of the throughput bench, each on this
server's connection class; ``prepare`` then runs over them in turn, without a socket or an
event loop, each call on a handler of its own, as the server makes one per request (what
``prepare`` keeps on the handler is then a new attribute every time; making the handler is
counted too, the same with and without a limiter). The process runs twice, with 1,000 and
3,000 calls of ``prepare`` (the first 1,000 make every address's buckets); the difference of
the two counts, over 2,000, is the cost of one call on buckets that exist, startup and the
rest left out. Hash seeds are fixed, so the count repeats to within a few hundred
instructions. About a minute.

Instructions are not time: a cache miss costs none, and the server's time per request also
holds the event loop, Tornado and the kernel. This says how much work a change removes; the
throughput bench says what that is worth. Needs valgrind (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("none", "memory")
CLIENTS = 1000


def run_prepare(environ: dict[str, str], calls: int) -> None:
    """The measured process: ``calls`` calls of prepare over CLIENTS requests, on the app
    that ``environ`` configures."""
    import socket

    import tornado.httputil
    import tornado.iostream

    from handlers.base import APIHandler
    from mangu import http1
    from mangu.app import make_app
    from mangu.config import load_settings
    from mangu.services import Services

    class BookHandler(APIHandler):
        def get(self, book_id: str) -> None:
            self.write_json({"id": book_id})

    settings = load_settings(environ)

    async def main() -> None:
        services = Services(settings)
        await services.start()
        app = make_app(settings, services)
        server_end, _client_end = socket.socketpair()
        connection = http1.Connection(tornado.iostream.IOStream(server_end), False, None, None)
        requests = []
        for i in range(CLIENTS):
            headers = tornado.httputil.HTTPHeaders({"Host": "bench", "X-Forwarded-For": f"10.{i % 250}.{i // 250}.9"})
            request = tornado.httputil.HTTPServerRequest(method="GET", uri="/bench/books/42", headers=headers,
                                                         connection=connection)
            request.remote_ip = "127.0.0.1"
            requests.append(request)
        for n in range(calls):
            # a handler of its own for each call, as the server makes one per request
            step = BookHandler(app, requests[n % CLIENTS], route="/bench/books/{id}").prepare()
            try:
                step.send(None)  # an allowed request's prepare never waits
            except StopIteration:
                pass
            else:
                raise RuntimeError("prepare waited")

    asyncio.run(main())


def instructions(root: Path, mode: str, calls: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, __file__, "--run", mode, str(calls), str(root)],
        cwd=root, env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=True, timeout=900,
    ).stderr
    match = re.search(r"I\s+refs:\s+([\d,]+)", out)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out[-2000:]}")
    return int(match.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose code is counted")
    parser.add_argument("--run", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        # The throughput bench's settings (from this file's folder), then the measured
        # checkout's code first on the path: importing ratelimit_bench puts this one's there.
        from ratelimit_bench import bench_environ

        sys.path.insert(0, args.run[2])
        run_prepare(bench_environ(args.run[0]), int(args.run[1]))
        return
    if not shutil.which("valgrind"):
        sys.exit("valgrind is needed (apt-get install valgrind)")
    root = args.root.resolve()
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        counts = {(mode, calls): pool.submit(instructions, root, mode, calls)
                  for mode in MODES for calls in (CLIENTS, 3 * CLIENTS)}
        per_call = {mode: (counts[mode, 3 * CLIENTS].result() - counts[mode, CLIENTS].result()) / (2 * CLIENTS)
                    for mode in MODES}
    print(f"python {sys.version.split()[0]}; {root}; instructions per APIHandler.prepare ({CLIENTS} client addresses)")
    for mode in MODES:
        print(f"{mode:<8} {per_call[mode]:>9,.0f}")
    print(f"the memory limiter adds {per_call['memory'] - per_call['none']:,.0f} instructions per request to prepare")


if __name__ == "__main__":
    main()

"""Cost per access-log record: this server's JSON formatting with redaction, against plain
python-json-logger formatters without redaction and the stdlib text formatter, in one run.

    .venv/bin/python bench/logging_bench.py [--records 50000] [--rounds 7]

Each formatter sits behind a StreamHandler writing to /dev/null, and the same access-log
call (message with args, ten extra fields, a bound correlation id) goes through
``logger.log``: the whole path a request pays. Rounds alternate formatters so drift in
machine speed hits them all; the median round is reported. Goal: redacted JSON at most
1.1x plain JsonFormatter.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pythonjsonlogger.json import JsonFormatter as PlainJsonFormatter  # noqa: E402
from pythonjsonlogger.orjson import OrjsonFormatter  # noqa: E402

from mangu.log import JsonFormatter, bind_context  # noqa: E402

FIELDS = {
    "method": "GET",
    "route": "/api/books/{book_id}",
    "path": "/api/books/42?include=reviews&page=2",
    "status": 200,
    "duration_ms": 3.47,
    "bytes": 1834,
    "remote_ip": "203.0.113.9",
    "user_id": "u-4821",
    "user_agent": "Mozilla/5.0 (X11; Linux x86_64) mangu-reader/2.3",
    "slow": False,
}


def formatters() -> dict[str, logging.Formatter]:
    return {
        "stdlib text": logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"),
        "JsonFormatter (plain)": PlainJsonFormatter(timestamp=True),
        "OrjsonFormatter (plain)": OrjsonFormatter(timestamp=True),
        "mangu JSON + redaction": JsonFormatter(),
    }


def measure(formatter: logging.Formatter, records: int) -> float:
    """Seconds per record through logger.log → handler → formatter → /dev/null."""
    logger = logging.getLogger(f"bench.{id(formatter)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    with open(os.devnull, "w") as sink:
        handler = logging.StreamHandler(sink)
        handler.setFormatter(formatter)
        logger.handlers[:] = [handler]
        plain = not isinstance(formatter, JsonFormatter)
        extra = {**FIELDS, "correlation_id": "3f2a9c1e8b7d4f60a1b2c3d4e5f60718"} if plain else FIELDS
        args = ("GET", FIELDS["path"], 200, 3.47)
        start = time.perf_counter()
        for _ in range(records):
            logger.log(logging.INFO, "%s %s %d %.1fms", *args, extra=extra)
        elapsed = time.perf_counter() - start
        logger.handlers.clear()
    return elapsed / records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    bind_context(correlation_id="3f2a9c1e8b7d4f60a1b2c3d4e5f60718")
    subjects = formatters()
    results: dict[str, list[float]] = {name: [] for name in subjects}
    for name, formatter in subjects.items():  # warm-up
        measure(formatter, 2000)
    for _ in range(args.rounds):
        for name, formatter in subjects.items():
            results[name].append(measure(formatter, args.records))

    baseline = statistics.median(results["JsonFormatter (plain)"])
    print(f"python {sys.version.split()[0]}, {args.records} records x {args.rounds} rounds, median per record")
    print(f"{'formatter':<26} {'µs/record':>10} {'vs JsonFormatter':>17}")
    for name, samples in results.items():
        median = statistics.median(samples)
        print(f"{name:<26} {median * 1e6:>10.2f} {median / baseline:>16.2f}x")
    ours = statistics.median(results["mangu JSON + redaction"]) / baseline
    print(f"goal: mangu JSON + redaction <= 1.10x JsonFormatter: {'met' if ours <= 1.10 else 'NOT met'} ({ours:.2f}x)")


if __name__ == "__main__":
    main()

"""MANGU realtime server: entry point.

    python server.py [--env-file PATH]

Loads and validates the settings (exit 78 on any problem, before listening), sets up
logging, builds the services and the app, listens, and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from tornado.netutil import bind_sockets

from mangu import __version__
from mangu.app import make_app, make_server
from mangu.config import EX_CONFIG, ConfigError, Settings, load_settings
from mangu.log import configure_logging, flush_logs, reopen_log_files
from mangu.services import Services

log = logging.getLogger("mangu.server")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="MANGU realtime server")
    parser.add_argument("--env-file", metavar="PATH", help="read settings from this env file (also MANGU_ENV_FILE)")
    return parser.parse_args(argv)


async def main(settings: Settings) -> int:
    services = Services(settings)
    await services.start()
    app = make_app(settings, services)
    server = make_server(app, settings)
    # Signals first: whoever sees the "listening" line may signal at once.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reopen_logs)
    sockets = bind_sockets(settings.port, settings.host, backlog=1024)
    server.add_sockets(sockets)
    host, port = sockets[0].getsockname()[:2]
    log.info(
        "mangu %s listening on %s:%d (%s)", __version__, host, port, settings.mangu_env,
        extra={"version": __version__, "env": settings.mangu_env, "address": f"{host}:{port}",
               "node_id": services.node_id},
    )
    await stop.wait()

    log.info("shutting down")
    server.stop()
    await server.close_all_connections()
    await services.close()
    log.info("stopped")
    return 0


def _reopen_logs() -> None:
    reopen_log_files()
    log.info("log files reopened")


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(env_file=args.env_file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"mangu: configuration error: {problem}", file=sys.stderr)
        return EX_CONFIG
    configure_logging(settings.log_level, settings.log_format, settings.log_file)
    try:
        return asyncio.run(main(settings))
    finally:
        flush_logs()


if __name__ == "__main__":
    sys.exit(run())

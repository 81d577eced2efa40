"""MANGU realtime server: entry point.

    python server.py [--env-file PATH]

Loads and validates the settings (exit 78 on any problem, before listening), sets up
logging, builds the services and the app, listens, tells systemd it is ready, and runs
until SIGTERM or SIGINT, then shuts down gracefully (mangu/lifecycle.py) and exits 0.
Exit 69 when it cannot listen; a second SIGTERM or SIGINT exits at once with 128 + signal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from tornado.netutil import bind_sockets

from mangu import __version__
from mangu.app import make_app, make_server
from mangu.config import EX_CONFIG, ConfigError, Settings, load_settings
from mangu.lifecycle import Lifecycle, Notifier
from mangu.log import configure_logging, flush_logs
from mangu.services import Services

log = logging.getLogger("mangu.server")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="MANGU realtime server")
    parser.add_argument("--env-file", metavar="PATH", help="read settings from this env file (also MANGU_ENV_FILE)")
    return parser.parse_args(argv)


async def main(settings: Settings) -> int:
    lifecycle = Lifecycle(settings, Notifier.from_environ())
    services = Services(settings)
    lifecycle.start(services)  # signals and watchdog pings from here on, even while connecting
    await services.start()
    app = make_app(settings, services)
    server = make_server(app, settings)
    try:
        sockets = bind_sockets(settings.port, settings.host, backlog=1024)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        await services.close()
        return os.EX_UNAVAILABLE
    server.add_sockets(sockets)
    host, port = sockets[0].getsockname()[:2]
    log.info(
        "mangu %s listening on %s:%d (%s)", __version__, host, port, settings.mangu_env,
        extra={"version": __version__, "env": settings.mangu_env, "address": f"{host}:{port}",
               "node_id": services.node_id},
    )
    return await lifecycle.serve(server)


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
    except KeyboardInterrupt:  # SIGINT before the signal handlers were installed
        return 128 + signal.SIGINT
    finally:
        flush_logs()


if __name__ == "__main__":
    sys.exit(run())

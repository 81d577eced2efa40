"""The process's life under systemd: readiness, status and watchdog notifications, the
SIGHUP reload, and the graceful shutdown on SIGTERM or SIGINT.

Only this module and server.py touch signals and process state. The notify protocol is
written directly (a datagram to ``$NOTIFY_SOCKET``); without that variable, as outside
systemd, every notification is silently skipped.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, MutableMapping
from typing import TYPE_CHECKING, Any

from mangu.config import ConfigError, Settings, load_settings, read_env_file
from mangu.log import flush_logs, reopen_log_files, set_level
from mangu.services import DRAINING

if TYPE_CHECKING:
    from tornado.httpserver import HTTPServer

    from mangu.services import Services

log = logging.getLogger("mangu.lifecycle")

STATUS_INTERVAL = 5.0  # seconds between STATUS= refreshes when systemd wants no watchdog pings
_DRAIN_GRACE = 2.0  # seconds the WebSocket drain may run past SHUTDOWN_DRAIN_MS (closing handshakes)
# Seconds for closing the connections and then the services, together; the connections get
# at most half, so the services (presence leaving Redis) always get the other half.
_CLOSE_BUDGET = 10.0
# Seconds without any request in flight before the remaining (idle) connections are closed:
# a request that arrived on one a moment ago gets the time to be dispatched, not cut.
_QUIET = 0.25


class Notifier:
    """The systemd notify protocol (sd_notify(3)): ``KEY=VALUE`` lines in one datagram.

    Sending never blocks the event loop: a datagram that cannot go at once is dropped,
    logged, and ``send`` returns False.
    """

    def __init__(self, address: str | None, watchdog_interval: float | None = None) -> None:
        self.watchdog_interval = watchdog_interval
        self._target: str | None = None
        self._socket: socket.socket | None = None
        if not address:
            return
        if address.startswith("@"):  # Linux abstract namespace
            self._target = "\0" + address[1:]
        elif address.startswith("/"):
            self._target = address
        else:
            log.warning("NOTIFY_SOCKET=%r: unsupported address; systemd notifications are off", address)
            return
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.setblocking(False)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """What systemd asked of this process (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``,
        ``WATCHDOG_PID``). The variables are removed from the environment, as
        sd_notify(unset_environment=1) does, so that no child process speaks for this one."""
        environ = os.environ if environ is None else environ
        address = environ.pop("NOTIFY_SOCKET", None)
        usec = environ.pop("WATCHDOG_USEC", None)
        pid = environ.pop("WATCHDOG_PID", None)
        interval = None
        if usec and (not pid or pid == str(os.getpid())):
            try:
                interval = int(usec) / 2_000_000  # ping at half the watchdog timeout
            except ValueError:
                log.warning("WATCHDOG_USEC=%r: not a number; watchdog pings are off", usec)
            else:
                interval = interval if interval > 0 else None
        return cls(address, interval)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True when it was sent."""
        if self._socket is None:
            return False
        try:
            self._socket.sendto("\n".join(assignments).encode(), self._target)
        except OSError as exc:
            log.warning(
                "systemd notification not sent: %s", exc.strerror or exc,
                extra={"notification": [a.split("=", 1)[0] for a in assignments]},
            )
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def settle_heap() -> None:
    """Move what start-up allocated (modules, settings, services, routes) out of the cyclic
    collector's reach. Each full collection would otherwise scan it all again: a pause of
    several milliseconds that lands on whichever requests are waiting, the p99 of every
    endpoint. Objects are still freed as usual when nothing refers to them."""
    gc.collect()
    gc.freeze()


def longest_shutdown(settings: Settings) -> float:
    """Seconds a graceful shutdown can last at most with these settings: the readiness
    delay, then the longer of the request timeout and the WebSocket drain (which run side by
    side), then the closing budget. systemd's TimeoutStopSec must be longer."""
    side_by_side = max(settings.shutdown_timeout / 1000, settings.shutdown_drain_ms / 1000 + _DRAIN_GRACE)
    return settings.shutdown_ready_delay / 1000 + side_by_side + _CLOSE_BUDGET


def reread_log_level(env_file: str | None) -> str:
    """LOG_LEVEL as a restart would read it, except that the env file wins over the
    environment: a running process's environment cannot have changed, the file can (and
    under systemd the environment holds the file's values from start-up).

    Raises ConfigError when the settings no longer validate, as a restart would fail.
    """
    environ = dict(os.environ)
    if env_file:
        try:
            from_file = read_env_file(env_file)
        except OSError as exc:
            raise ConfigError([f"MANGU_ENV_FILE={env_file!r}: unreadable file ({exc.strerror})"]) from None
        if "LOG_LEVEL" in from_file:
            environ["LOG_LEVEL"] = from_file["LOG_LEVEL"]
    return load_settings(environ, env_file=env_file).log_level


class Lifecycle:
    """Signals, systemd notifications and the graceful shutdown of one server process::

        lifecycle = Lifecycle(settings, Notifier.from_environ())
        lifecycle.start(services)               # signal handlers, watchdog; STATUS=starting
        await services.start(); ...listen...
        return await lifecycle.serve(server)    # READY=1, run until a signal, shut down

    On SIGTERM or SIGINT: readiness answers 503, STOPPING=1 goes out and every answer closes
    its connection, at once; after SHUTDOWN_READY_DELAY the listener closes; WebSockets are
    drained over SHUTDOWN_DRAIN_MS while in-flight HTTP requests get up to SHUTDOWN_TIMEOUT
    to finish; then connections and services (presence, Redis, MongoDB) are closed, logs
    flushed, and ``serve`` returns 0, within ``longest_shutdown(settings)`` seconds.
    A second SIGTERM or SIGINT exits at once with 128 + the signal number.
    """

    def __init__(self, settings: Settings, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier(None)
        self._services: Services | None = None
        self._stop = asyncio.Event()
        self._stop_signal = ""
        self._heartbeat: asyncio.Task[None] | None = None

    def start(self, services: Services) -> None:
        """Install the signal handlers and start the watchdog pings, before anything slow."""
        self._services = services
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        self._notify("STATUS=starting")
        if self.notifier.enabled:
            self._heartbeat = loop.create_task(self._beat(), name="systemd-heartbeat")

    async def serve(self, server: HTTPServer) -> int:
        """Tell systemd the server is ready, wait for SIGTERM / SIGINT, shut down gracefully;
        the exit status (0)."""
        if not self._stop.is_set():
            settle_heap()
            self._notify("READY=1", f"STATUS={self.status()}")
        await self._stop.wait()
        return await self._shutdown(server)

    def status(self) -> str:
        """The one-line state ``systemctl status`` shows."""
        services = self._services
        if services is None:
            return "starting"
        sockets = int(services.metrics.ws_connections.collect()[0].samples[0].value)
        return (
            f"{services.state}: {sockets} WebSocket connections,"
            f" {services.in_flight.count} HTTP requests in flight"
        )

    # -- signals

    def _on_stop_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._stop.is_set():
            log.error("second %s during shutdown: exiting now", name, extra={"signal": name})
            flush_logs()
            os._exit(128 + sig)
        self._stop_signal = name
        self._stop.set()

    def _on_reload_signal(self) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=reloading")
        try:
            reopen_log_files()
        except OSError as exc:
            # The old file stays open: nothing is lost, and the operator learns why.
            log.error("log file not reopened: %s", exc.strerror or exc, extra={"log_file": exc.filename})
        else:
            log.info("log files reopened")
        root = logging.getLogger()
        old = logging.getLevelName(root.level)
        try:
            new = reread_log_level(self.settings.env_file)
        except ConfigError as exc:
            log.warning(
                "reload: the configuration no longer validates; log level stays %s", old,
                extra={"problems": exc.problems, "log_level": old},
            )
        else:
            if new != old:
                # Logged while the more verbose of the two levels is in effect, so it shows.
                if logging.getLevelName(new) < root.level:
                    set_level(new)
                log.info("log level %s -> %s", old, new, extra={"log_level": new})
                set_level(new)
        self._notify("READY=1", f"STATUS={self.status()}")

    # -- notifications

    def _notify(self, *assignments: str) -> None:
        if not self.notifier.enabled:
            return
        if not self.notifier.send(*assignments) and self._services is not None:
            self._services.metrics.systemd_notify_failures.inc()

    async def _beat(self) -> None:
        """WATCHDOG=1 at half of WATCHDOG_USEC, from the event loop itself: when the loop is
        blocked the pings stop and systemd kills and restarts the process. STATUS= rides
        along whenever it changed."""
        interval = self.notifier.watchdog_interval or STATUS_INTERVAL
        last_status = ""
        while True:
            await asyncio.sleep(interval)
            lines = ["WATCHDOG=1"] if self.notifier.watchdog_interval else []
            status = self.status()
            if status != last_status:
                lines.append(f"STATUS={status}")
                last_status = status
            if lines:
                self._notify(*lines)

    # -- shutdown

    async def _shutdown(self, server: HTTPServer) -> int:
        services = self._services
        assert services is not None, "start() was not called"
        settings = self.settings
        began = time.monotonic()
        services.state = DRAINING  # readiness answers 503 from now on
        # Every answer from now on closes its connection ("Connection: close"), so keep-alive
        # clients and proxies take their next request elsewhere.
        server.conn_params.no_keep_alive = True
        self._notify("STOPPING=1", f"STATUS={self.status()}")
        log.info(
            "shutdown started by %s", self._stop_signal,
            extra={
                "signal": self._stop_signal, "ready_delay_ms": settings.shutdown_ready_delay,
                "drain_ms": settings.shutdown_drain_ms, "timeout_ms": settings.shutdown_timeout,
                "requests_in_flight": services.in_flight.count,
            },
        )
        if settings.shutdown_ready_delay:
            # Load balancers that poll readiness see the 503 and stop routing here first.
            await asyncio.sleep(settings.shutdown_ready_delay / 1000)
        server.stop()
        log.info("listener closed", extra={"requests_in_flight": services.in_flight.count})

        drain = asyncio.create_task(
            self._bounded(
                "websocket drain", services.drain_websockets(settings.shutdown_drain_ms),
                settings.shutdown_drain_ms / 1000 + _DRAIN_GRACE,
            )
        )
        if not await services.in_flight.wait_quiet(_QUIET, settings.shutdown_timeout / 1000):
            log.warning(
                "shutdown timeout: closing %d requests still in flight", services.in_flight.count,
                extra={"requests_in_flight": services.in_flight.count, "timeout_ms": settings.shutdown_timeout},
            )
        closed = await drain
        if closed:
            log.info("websockets drained", extra={"websockets_closed": closed})

        closing_until = time.monotonic() + _CLOSE_BUDGET
        await self._bounded("closing HTTP connections", server.close_all_connections(), _CLOSE_BUDGET / 2)
        await self._bounded("closing services", services.close(), closing_until - time.monotonic())
        self._notify("STATUS=stopped")
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        log.info("stopped", extra={"duration_ms": round((time.monotonic() - began) * 1000, 1)})
        flush_logs()
        self.notifier.close()
        return 0

    async def _bounded(self, what: str, step: Awaitable[Any], timeout: float) -> Any:
        """Run one shutdown step for at most ``timeout`` seconds; a failure is logged, and
        the shutdown goes on (it must end, and end without a traceback)."""
        try:
            return await asyncio.wait_for(step, timeout)
        except TimeoutError:
            log.error("shutdown: %s did not finish within %.1f s; going on", what, timeout, extra={"step": what})
        except Exception:
            log.exception("shutdown: %s failed; going on", what, extra={"step": what})
        return None

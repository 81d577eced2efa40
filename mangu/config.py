"""Typed, validated settings, read once from the environment and an optional env file.

Every setting the server reads is declared in ``_VARIABLES`` below; ``load_settings`` checks
all of them and reports every problem at once, so a bad deployment fails before it listens.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

EX_CONFIG = 78  # sysexits.h: configuration error

ENVIRONMENTS = ("development", "production", "test")
LOG_LEVELS = tuple("DEBUG INFO WARNING ERROR CRITICAL".split())
JWT_ALLOWED = tuple(f"{family}{bits}" for family in ("HS", "RS", "ES") for bits in (256, 384, 512))
EMBEDDED = "embedded"
MIN_SECRET_BYTES = 32


class ConfigError(Exception):
    """Raised with every problem found; each problem is one printable line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class _Invalid(ValueError):
    pass


# -- parsers: each turns the raw string into a typed value or raises _Invalid(what is accepted)


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise _Invalid(f"not a whole number; expected an integer from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise _Invalid(f"out of range; expected an integer from {lo} to {hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise _Invalid(f"not a number; expected a number from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise _Invalid(f"out of range; expected a number from {lo} to {hi}")
        return value

    return parse


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise _Invalid("not a boolean; expected true or false")


def _choice(*choices: str, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in choices:
            raise _Invalid(f"unknown choice; expected one of {', '.join(choices)}")
        return value

    return parse


def _text(raw: str) -> str:
    return raw.strip()


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _host(raw: str) -> str:
    """An IP address (IPv6 with or without brackets) or a host name (RFC 1123). A name is
    resolved only when the server binds."""
    value = raw.strip()
    bare = value[1:-1] if value[:1] == "[" and value[-1:] == "]" else value
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if len(value) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit():
        return value
    raise _Invalid("not an IP address or host name; expected an address such as 127.0.0.1, :: or localhost")


_DB_NAME_FORBIDDEN = set('/\\. "$\0')


def _database_name(raw: str) -> str:
    value = raw.strip()
    if _DB_NAME_FORBIDDEN & set(value) or len(value.encode()) > 63:
        raise _Invalid(
            "not a MongoDB database name; expected at most 63 bytes and none of / \\ . space \" $ or NUL"
        )
    return value


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _url(*schemes: str, allow_embedded: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if allow_embedded and value.lower() == EMBEDDED:
            return EMBEDDED
        accepted = f"expected a {' or '.join(s + '://' for s in schemes)} URL"
        if allow_embedded:
            accepted += f" or '{EMBEDDED}'"
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise _Invalid(f"malformed URL; {accepted}") from None
        if parts.scheme not in schemes:
            raise _Invalid(f"unsupported scheme; {accepted}")
        if parts.scheme != "unix" and not parts.hostname:
            raise _Invalid(f"no host; {accepted}")
        return value

    return parse


def _origins(raw: str) -> tuple[str, ...]:
    origins = []
    for item in _list(raw):
        if item == "*":
            origins.append(item)
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise _Invalid(
                f"malformed origin {item!r}; expected comma-separated scheme://host[:port] values or *"
            )
        origins.append(f"{parts.scheme}://{parts.netloc}".lower())
    return tuple(origins)


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for item in _list(raw):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise _Invalid(
                f"malformed address {item!r}; expected comma-separated IP addresses or CIDR networks"
            ) from None
    return tuple(nets)


def _algorithms(raw: str) -> tuple[str, ...]:
    algorithms = tuple(a.upper() for a in _list(raw))
    unknown = [a for a in algorithms if a not in JWT_ALLOWED]
    if unknown or not algorithms:
        raise _Invalid(
            f"unsupported or empty ({', '.join(unknown) or 'none given'});"
            f" expected a comma-separated list of {', '.join(JWT_ALLOWED)}"
        )
    return algorithms


def _readable_file(raw: str) -> str:
    path = raw.strip()
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise _Invalid(f"unreadable file ({exc.strerror}); expected a readable file path") from None
    return path


def _log_file(raw: str) -> str:
    path = raw.strip()
    parent = Path(path).parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise _Invalid("its directory does not exist or is not writable; expected a writable file path")
    if Path(path).exists() and not os.access(path, os.W_OK):
        raise _Invalid("file is not writable; expected a writable file path")
    return path


# -- the variables


@dataclass(frozen=True)
class _Var:
    name: str
    parse: Callable[[str], Any]
    default: Any  # a raw string, None (unset), or a callable(env_name) -> raw string
    doc: str

    @property
    def field(self) -> str:
        return self.name.lower()


def _by_env(**defaults: str) -> Callable[[str], str]:
    return lambda env: defaults.get(env, defaults["default"])


_VARIABLES: tuple[_Var, ...] = (
    # process
    _Var("MANGU_ENV", _choice(*ENVIRONMENTS), "development", "development | production | test"),
    _Var("HOST", _host, "127.0.0.1", "address to listen on: an IP address or a host name"),
    _Var("PORT", _int(0, 65535), "3001", "TCP port to listen on (0: any free port)"),
    _Var("NODE_ID", _text, None, "this process's name in the cluster (default: host-pid-random)"),
    _Var("DATA_DIR", _text, "var", "where the server writes (embedded MongoDB, development JWT secret)"),
    _Var("SHUTDOWN_TIMEOUT", _int(0, 600_000), "10000", "ms to let in-flight HTTP requests finish"),
    _Var("SHUTDOWN_DRAIN_MS", _int(0, 600_000), "5000", "ms over which WebSocket clients are closed"),
    _Var("SHUTDOWN_READY_DELAY", _int(0, 600_000), "0",
         "ms readiness answers 503 before the listener closes (for load balancers that poll it)"),
    # logging
    _Var("LOG_LEVEL", _choice(*LOG_LEVELS, upper=True), LOG_LEVELS[1], "minimum level logged"),
    _Var("LOG_FORMAT", _choice("json", "pretty"), _by_env(development="pretty", default="json"),
         "json (one JSON object per line) | pretty (readable, for development)"),
    _Var("LOG_FILE", _log_file, None, "also write logs to this file (reopened on SIGHUP)"),
    _Var("SLOW_REQUEST_THRESHOLD", _int(0, 3_600_000), "1000", "ms after which a request is flagged slow"),
    _Var("LOG_PROBES", _bool, "false",
         "access-log successful probes and scrapes (/ping, health, metrics) at INFO; else at DEBUG"),
    # HTTP
    _Var("CLIENT_URL", _origins, "http://localhost:3000", "allowed browser origins, comma separated"),
    _Var("TRUSTED_PROXIES", _networks, "", "proxies whose X-Forwarded-For is believed (IPs or CIDRs)"),
    _Var("MAX_BODY_SIZE", _int(1024, 64 * 1024 * 1024), "1048576", "largest request body in bytes"),
    _Var("ENABLE_DEMO_PAGE", _bool, _by_env(production="false", default="true"), "serve the demo page at /"),
    _Var("ENABLE_REGISTRATION", _bool, _by_env(production="false", default="true"),
         "allow POST /api/auth/register (self sign-up)"),
    # Redis
    _Var("REDIS_URL", _url("redis", "rediss", "unix"), None, "Redis; unset: memory only, single process"),
    _Var("REDIS_TIMEOUT", _int(10, 60_000), "1000", "ms socket timeout for Redis calls (bus, presence, health)"),
    # MongoDB
    _Var("MONGODB_URL", _url("mongodb", "mongodb+srv", allow_embedded=True), EMBEDDED,
         "MongoDB; 'embedded' starts a development server (refused in production)"),
    _Var("MONGODB_DB", _database_name, "mangu", "database name"),
    _Var("DATABASE_POOL_MAX", _int(1, 1000), "20", "most pooled connections"),
    _Var("DATABASE_POOL_MIN", _int(0, 1000), "2", "pooled connections kept open"),
    _Var("DATABASE_IDLE_TIMEOUT", _int(0, 86_400_000), "600000", "ms before an idle connection is closed"),
    _Var("DATABASE_TIMEOUT", _int(100, 600_000), "30000", "ms connect and server-selection timeout"),
    _Var("DATABASE_STATEMENT_TIMEOUT", _int(100, 600_000), "30000", "ms limit on one operation"),
    _Var("SLOW_QUERY_THRESHOLD", _int(0, 3_600_000), "1000", "ms after which a command is logged slow"),
    _Var("ENABLE_QUERY_LOGGING", _bool, "false", "log every database command at debug level"),
    _Var("DATABASE_HEARTBEAT_INTERVAL", _int(500, 600_000), "1000",
         "ms between driver checks of each MongoDB server (how soon an outage or recovery is seen)"),
    # auth
    _Var("JWT_SECRET", _text, None, "HMAC secret for HS* tokens (32+ bytes in production)"),
    _Var("JWT_PUBLIC_KEY_FILE", _readable_file, None, "PEM public key for RS*/ES* tokens"),
    _Var("JWT_PRIVATE_KEY_FILE", _readable_file, None, "PEM private key to issue RS*/ES* tokens"),
    _Var("JWT_ALGORITHMS", _algorithms, JWT_ALLOWED[0],
         f"accepted algorithms, comma separated: {', '.join(JWT_ALLOWED)}"),
    _Var("JWT_ISSUER", _text, None, "required iss claim (unset: not checked)"),
    _Var("JWT_AUDIENCE", _text, None, "required aud claim (unset: not checked)"),
    _Var("JWT_TTL", _int(60, 30 * 86_400), "3600", "seconds a token issued by login lives"),
    # rate limiting
    _Var("RATE_LIMIT_ENABLED", _bool, "true", "apply the rate limits"),
    _Var("RATE_LIMIT_WINDOW", _int(1000, 86_400_000), "900000", "ms window of the general, strict and auth tiers"),
    _Var("RATE_LIMIT_MAX", _int(1, 10_000_000), "100", "general tier: requests per window"),
    _Var("RATE_LIMIT_STRICT_MAX", _int(1, 10_000_000), "20", "strict tier: requests per window"),
    _Var("RATE_LIMIT_AUTH_MAX", _int(1, 10_000_000), "5", "auth tier: attempts per window per client IP"),
    _Var("RATE_LIMIT_AUTH_USER_MAX", _int(1, 10_000_000), "10", "auth tier: attempts per window per username"),
    _Var("RATE_LIMIT_AUTH_FAIL_CLOSED", _bool, "false", "auth tier answers 503 while Redis is down"),
    _Var("RATE_LIMIT_BURST", _int(1, 1_000_000), "10", "requests per second on top of any window tier"),
    _Var("RATE_LIMIT_PROCESSES", _int(1, 1024), "1", "processes sharing the limits (fallback divides by it)"),
    _Var("RATE_LIMIT_REDIS_TIMEOUT", _int(1, 50), "50",
         "ms a request waits for Redis's rate-limit answer, then memory answers"),
    _Var("RATE_LIMIT_PROBE_INTERVAL", _int(100, 600_000), "1000", "ms between Redis probes while in fallback"),
    _Var("RATE_LIMIT_MEMORY_MAX_KEYS", _int(100, 100_000_000), "100000", "buckets kept by the memory backend"),
    # health
    _Var("HEALTH_CACHE_MS", _int(0, 600_000), "1000", "ms a deep-health answer is reused"),
    _Var("HEALTH_CHECK_TIMEOUT", _int(10, 60_000), "1000", "ms bound on each health check"),
    _Var("HEALTH_MEMORY_WARN_MB", _int(1, 1_000_000), "1024", "process RSS (MB) that warns"),
    _Var("HEALTH_MEMORY_FAIL_MB", _int(1, 1_000_000), "2048", "process RSS (MB) that fails"),
    _Var("HEALTH_MEMORY_AVAILABLE_WARN_MB", _int(0, 1_000_000), "256",
         "system available memory (MB) below which it warns (0: off)"),
    _Var("HEALTH_MEMORY_AVAILABLE_FAIL_MB", _int(0, 1_000_000), "64",
         "system available memory (MB) below which it fails (0: off)"),
    _Var("HEALTH_DISK_WARN_PERCENT", _float(0, 100), "10", "free disk (%) below which it warns"),
    _Var("HEALTH_DISK_FAIL_PERCENT", _float(0, 100), "5", "free disk (%) below which it fails"),
    _Var("HEALTH_LOOP_LAG_WARN_MS", _int(1, 600_000), "100", "event-loop lag p99 (ms) that warns"),
    _Var("HEALTH_LOOP_LAG_FAIL_MS", _int(1, 600_000), "1000", "event-loop lag p99 (ms) that fails"),
    # WebSocket
    _Var("ENABLE_WEBSOCKET", _bool, "true", "serve WebSockets at /ws"),
    _Var("WS_PING_INTERVAL", _int(1, 3600), "25", "seconds between server pings"),
    _Var("WS_PING_TIMEOUT", _int(1, 3600), "20", "seconds without a pong before a peer is dropped"),
    _Var("WS_AUTH_TIMEOUT", _int(1, 600), "10", "seconds to send an auth frame when the handshake had no token"),
    _Var("WS_EXPIRY_WARNING", _int(1, 3600), "60", "seconds before token expiry that auth:expiring is sent"),
    _Var("WS_MAX_MESSAGE_SIZE", _int(1024, 16 * 1024 * 1024), "65536", "largest client frame in bytes"),
    _Var("WS_MAX_CONNECTIONS", _int(1, 10_000_000), "50000", "connections this process accepts (then 1013)"),
    _Var("WS_MAX_CONNECTIONS_PER_USER", _int(1, 10_000), "20", "connections one user may hold"),
    _Var("WS_MAX_ROOMS", _int(1, 100_000), "100", "rooms one connection may join"),
    _Var("WS_ROOM_PRESENCE_MAX", _int(1, 1_000_000), "100",
         "rooms larger than this get no join/leave/presence events; join acks list this many members"),
    _Var("WS_MESSAGE_RATE", _float(0.1, 100_000), "20", "client frames per second per connection"),
    _Var("WS_MESSAGE_BURST", _int(1, 100_000), "40", "client frames allowed in a burst"),
    _Var("WS_SEND_QUEUE_FRAMES", _int(1, 1_000_000), "1000", "frames queued for a slow client before 1013"),
    _Var("WS_SEND_QUEUE_BYTES", _int(1024, 1024 * 1024 * 1024), "4194304",
         "bytes queued for a slow client before 1013"),
    _Var("WS_ABUSE_LIMIT", _int(1, 100_000), "20", "invalid frames before a connection is closed with 1008"),
    _Var("WS_TYPING_TIMEOUT", _float(0.1, 600), "6", "seconds of silence after which typing:stop is sent"),
    _Var("WS_COMPRESSION", _bool, "false", "negotiate permessage-deflate"),
    _Var("PRESENCE_TTL", _int(2, 86_400), "30", "seconds a process's presence entries live without a heartbeat"),
)

VARIABLE_NAMES: tuple[str, ...] = tuple(v.name for v in _VARIABLES) + ("MANGU_ENV_FILE",)


@dataclass(frozen=True)
class Settings:
    """Every setting, typed. Build it with ``load_settings``."""

    mangu_env: str
    host: str
    port: int
    node_id: str | None
    data_dir: str
    shutdown_timeout: int
    shutdown_drain_ms: int
    shutdown_ready_delay: int
    log_level: str
    log_format: str
    log_file: str | None
    slow_request_threshold: int
    log_probes: bool
    client_url: tuple[str, ...]
    trusted_proxies: tuple[Any, ...]
    max_body_size: int
    enable_demo_page: bool
    enable_registration: bool
    redis_url: str | None
    redis_timeout: int
    mongodb_url: str
    mongodb_db: str
    database_pool_max: int
    database_pool_min: int
    database_idle_timeout: int
    database_timeout: int
    database_statement_timeout: int
    slow_query_threshold: int
    enable_query_logging: bool
    database_heartbeat_interval: int
    jwt_secret: str | None = field(repr=False)
    jwt_public_key_file: str | None
    jwt_private_key_file: str | None
    jwt_algorithms: tuple[str, ...]
    jwt_issuer: str | None
    jwt_audience: str | None
    jwt_ttl: int
    rate_limit_enabled: bool
    rate_limit_window: int
    rate_limit_max: int
    rate_limit_strict_max: int
    rate_limit_auth_max: int
    rate_limit_auth_user_max: int
    rate_limit_auth_fail_closed: bool
    rate_limit_burst: int
    rate_limit_processes: int
    rate_limit_redis_timeout: int
    rate_limit_probe_interval: int
    rate_limit_memory_max_keys: int
    health_cache_ms: int
    health_check_timeout: int
    health_memory_warn_mb: int
    health_memory_fail_mb: int
    health_memory_available_warn_mb: int
    health_memory_available_fail_mb: int
    health_disk_warn_percent: float
    health_disk_fail_percent: float
    health_loop_lag_warn_ms: int
    health_loop_lag_fail_ms: int
    enable_websocket: bool
    ws_ping_interval: int
    ws_ping_timeout: int
    ws_auth_timeout: int
    ws_expiry_warning: int
    ws_max_message_size: int
    ws_max_connections: int
    ws_max_connections_per_user: int
    ws_max_rooms: int
    ws_room_presence_max: int
    ws_message_rate: float
    ws_message_burst: int
    ws_send_queue_frames: int
    ws_send_queue_bytes: int
    ws_abuse_limit: int
    ws_typing_timeout: float
    ws_compression: bool
    presence_ttl: int
    env_file: str | None = None

    @property
    def production(self) -> bool:
        return self.mangu_env == "production"

    @property
    def embedded_mongodb(self) -> bool:
        return self.mongodb_url == EMBEDDED

    @property
    def hmac_algorithms(self) -> tuple[str, ...]:
        return tuple(a for a in self.jwt_algorithms if a.startswith("HS"))

    @property
    def asymmetric_algorithms(self) -> tuple[str, ...]:
        return tuple(a for a in self.jwt_algorithms if not a.startswith("HS"))

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests, derived settings)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)


def read_env_file(path: str) -> dict[str, str]:
    """Parse KEY=VALUE lines; '#' comments, blank lines, optional quotes and 'export '."""
    values: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export ") :].lstrip()
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ConfigError([f"{path}:{lineno}: not a KEY=VALUE line"])
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key] = value
    return values


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | None = None) -> Settings:
    """Read and validate every setting; raise ConfigError listing every problem.

    Values from the process environment win over the env file (``env_file``, else
    ``MANGU_ENV_FILE``): the opposite of systemd, where ``EnvironmentFile=`` overrides
    ``Environment=`` whatever their order (which is why the units set PORT on the command line).
    """
    environ = dict(os.environ if environ is None else environ)
    env_file = env_file or environ.get("MANGU_ENV_FILE") or None
    source: dict[str, str] = {}
    if env_file:
        try:
            source.update(read_env_file(env_file))
        except OSError as exc:
            raise ConfigError(
                [f"MANGU_ENV_FILE={env_file!r}: unreadable file ({exc.strerror}); expected a readable env file"]
            ) from None
    source.update(environ)

    problems: list[str] = []
    values: dict[str, Any] = {}
    failed: set[str] = set()
    env = source.get("MANGU_ENV", "development").strip().lower() or "development"
    if env not in ENVIRONMENTS:
        env = "development"
    for var in _VARIABLES:
        raw = source.get(var.name)
        default = var.default(env) if callable(var.default) else var.default
        if raw is None or raw.strip() == "":
            values[var.field] = None if default is None else var.parse(default)
            continue
        try:
            values[var.field] = var.parse(raw)
        except _Invalid as exc:
            shown = "<hidden>" if var.name == "JWT_SECRET" else repr(raw)
            problems.append(f"{var.name}={shown}: {exc}")
            failed.add(var.name)
            values[var.field] = None if default is None else var.parse(default)
    settings = Settings(**values, env_file=env_file)
    # Cross-checks run even when some values failed, so every problem shows in one run;
    # a check whose inputs failed to parse is skipped (its input's problem is already listed).
    problems.extend(p for names, p in _cross_checks(settings) if not names & failed)
    if problems:
        raise ConfigError(problems)
    return settings


def _cross_checks(s: Settings) -> list[tuple[set[str], str]]:
    """(variables involved, problem) for every inconsistency between settings."""
    problems: list[tuple[set[str], str]] = []

    def check(names: str, ok: bool, problem: str) -> None:
        if not ok:
            problems.append((set(names.split()), problem))

    check("DATABASE_POOL_MIN DATABASE_POOL_MAX", s.database_pool_min <= s.database_pool_max,
          f"DATABASE_POOL_MIN={s.database_pool_min}: larger than DATABASE_POOL_MAX={s.database_pool_max};"
          " expected a minimum no larger than the maximum")
    check("JWT_ALGORITHMS JWT_PUBLIC_KEY_FILE", not s.asymmetric_algorithms or bool(s.jwt_public_key_file),
          "JWT_PUBLIC_KEY_FILE=<unset>: required by the RS/ES algorithms in JWT_ALGORITHMS;"
          " expected a readable PEM public key file")
    check("JWT_ALGORITHMS", not (s.hmac_algorithms and s.asymmetric_algorithms),
          f"JWT_ALGORITHMS={','.join(s.jwt_algorithms)!r}: mixes HS and RS/ES algorithms;"
          " expected one family (mixing opens key-confusion attacks)")
    check("HEALTH_DISK_FAIL_PERCENT HEALTH_DISK_WARN_PERCENT",
          s.health_disk_fail_percent <= s.health_disk_warn_percent,
          f"HEALTH_DISK_FAIL_PERCENT={s.health_disk_fail_percent}: above HEALTH_DISK_WARN_PERCENT;"
          " expected a fail threshold no higher than the warn threshold")
    check("HEALTH_MEMORY_WARN_MB HEALTH_MEMORY_FAIL_MB", s.health_memory_warn_mb <= s.health_memory_fail_mb,
          f"HEALTH_MEMORY_WARN_MB={s.health_memory_warn_mb}: above HEALTH_MEMORY_FAIL_MB;"
          " expected a warn threshold no higher than the fail threshold")
    check("HEALTH_MEMORY_AVAILABLE_FAIL_MB HEALTH_MEMORY_AVAILABLE_WARN_MB",
          s.health_memory_available_fail_mb <= s.health_memory_available_warn_mb,
          f"HEALTH_MEMORY_AVAILABLE_FAIL_MB={s.health_memory_available_fail_mb}: above"
          " HEALTH_MEMORY_AVAILABLE_WARN_MB; expected a fail threshold no higher than the warn threshold")
    check("HEALTH_LOOP_LAG_WARN_MS HEALTH_LOOP_LAG_FAIL_MS", s.health_loop_lag_warn_ms <= s.health_loop_lag_fail_ms,
          f"HEALTH_LOOP_LAG_WARN_MS={s.health_loop_lag_warn_ms}: above HEALTH_LOOP_LAG_FAIL_MS;"
          " expected a warn threshold no higher than the fail threshold")
    if s.production:
        check("JWT_SECRET JWT_ALGORITHMS",
              not s.hmac_algorithms or len((s.jwt_secret or "").encode()) >= MIN_SECRET_BYTES,
              f"JWT_SECRET=<{'unset' if not s.jwt_secret else 'hidden'}>: missing or shorter than"
              f" {MIN_SECRET_BYTES} bytes; expected a random secret of at least {MIN_SECRET_BYTES} bytes"
              " in production")
        check("MONGODB_URL", not s.embedded_mongodb,
              "MONGODB_URL='embedded': the embedded development database is refused in production;"
              " expected a mongodb:// or mongodb+srv:// URL")
        check("CLIENT_URL", "*" not in s.client_url,
              "CLIENT_URL='*': any origin is refused in production; expected explicit origins")
    return problems


def describe_variables() -> list[tuple[str, str, str]]:
    """(name, default shown, meaning) of every variable, for docs and the env example test."""
    rows = []
    for var in _VARIABLES:
        if callable(var.default):
            default = ", ".join(f"{env}: {var.default(env)}" for env in ENVIRONMENTS)
        else:
            default = "" if var.default is None else var.default
        rows.append((var.name, default, var.doc))
    rows.append(("MANGU_ENV_FILE", "", "env file to read (also --env-file PATH)"))
    return rows

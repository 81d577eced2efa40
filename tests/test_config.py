"""Configuration: every bad value stops server.py before it listens, with exit 78 and a line
naming the variable; the env example documents exactly the variables the server reads."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from mangu.config import EX_CONFIG, VARIABLE_NAMES, ConfigError, load_settings
from tests.support.procs import ROOT, ServerProcess, free_port, port_open, run_server_once

BASE = {"MANGU_ENV": "test", "PORT": "0", "LOG_FORMAT": "json"}


def problems_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mangu: configuration error:")]


@pytest.mark.parametrize(
    ("env", "variable", "accepted"),
    [
        ({"PORT": "http"}, "PORT", "integer from 0 to 65535"),
        ({"PORT": "70000"}, "PORT", "out of range"),
        ({"DATABASE_POOL_MAX": "-1"}, "DATABASE_POOL_MAX", "out of range"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT", "one of json, pretty"),
        ({"MANGU_ENV": "staging"}, "MANGU_ENV", "one of development, production, test"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL", "one of DEBUG"),
        ({"ENABLE_WEBSOCKET": "maybe"}, "ENABLE_WEBSOCKET", "true or false"),
        ({"DATABASE_POOL_MIN": "30", "DATABASE_POOL_MAX": "20"}, "DATABASE_POOL_MIN", "no larger than the maximum"),
        ({"REDIS_URL": "http://cache:6379"}, "REDIS_URL", "redis:// or rediss:// or unix://"),
        ({"REDIS_URL": "redis://cache:notaport"}, "REDIS_URL", "malformed URL"),
        ({"MONGODB_URL": "postgres://db"}, "MONGODB_URL", "mongodb://"),
        ({"JWT_PUBLIC_KEY_FILE": "/nonexistent/key.pem"}, "JWT_PUBLIC_KEY_FILE", "readable file"),
        ({"LOG_FILE": "/nonexistent/dir/mangu.log"}, "LOG_FILE", "writable file path"),
        ({"CLIENT_URL": "not a url"}, "CLIENT_URL", "scheme://host"),
        ({"TRUSTED_PROXIES": "10.0.0.0/33"}, "TRUSTED_PROXIES", "CIDR"),
        ({"JWT_ALGORITHMS": "none"}, "JWT_ALGORITHMS", "HS256"),
        ({"JWT_ALGORITHMS": "HS256,RS256", "JWT_PUBLIC_KEY_FILE": "/etc/hostname"}, "JWT_ALGORITHMS", "one family"),
        ({"RATE_LIMIT_REDIS_TIMEOUT": "200"}, "RATE_LIMIT_REDIS_TIMEOUT", "from 1 to 50"),
        ({"HOST": "not a host!"}, "HOST", "IP address or host name"),
        ({"HOST": "300.1.2.3"}, "HOST", "IP address or host name"),
        ({"MONGODB_DB": "books.prod"}, "MONGODB_DB", "none of / \\ . space"),
        ({"MONGODB_DB": "x" * 64}, "MONGODB_DB", "at most 63 bytes"),
    ],
)
def test_bad_value_exits_78_naming_the_variable(env: dict[str, str], variable: str, accepted: str) -> None:
    result = run_server_once({**BASE, **env})
    assert result.returncode == EX_CONFIG
    lines = problems_of(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"mangu: configuration error: {variable}=")
    assert accepted in lines[0]
    assert result.stdout == ""  # nothing was started, nothing logged


def test_host_and_database_name_forms_that_are_accepted() -> None:
    for host, kept in (("0.0.0.0", "0.0.0.0"), ("::", "::"), ("[::1]", "::1"), ("localhost", "localhost"),
                       ("mangu-1.internal", "mangu-1.internal")):
        assert load_settings({"HOST": host}).host == kept
    assert load_settings({"MONGODB_DB": "mangu_books-2"}).mongodb_db == "mangu_books-2"
    assert load_settings({"MONGODB_DB": "x" * 63}).mongodb_db == "x" * 63


def test_every_problem_is_reported_in_one_run() -> None:
    result = run_server_once(
        {**BASE, "PORT": "x", "LOG_LEVEL": "LOUD", "DATABASE_POOL_MIN": "50", "REDIS_URL": "ftp://x"}
    )
    assert result.returncode == EX_CONFIG
    named = {line.split(":", 2)[2].strip().split("=", 1)[0] for line in problems_of(result.stderr)}
    assert named == {"PORT", "LOG_LEVEL", "DATABASE_POOL_MIN", "REDIS_URL"}


def test_production_refuses_short_secret_embedded_db_and_any_origin() -> None:
    result = run_server_once(
        {**BASE, "MANGU_ENV": "production", "JWT_SECRET": "too-short", "CLIENT_URL": "*"}
    )
    assert result.returncode == EX_CONFIG
    text = result.stderr
    assert "JWT_SECRET=<hidden>: missing or shorter than 32 bytes" in text
    assert "too-short" not in text  # a secret is never echoed, even a bad one
    assert "MONGODB_URL='embedded': the embedded development database is refused in production" in text
    assert "CLIENT_URL='*'" in text


def test_production_refuses_missing_secret_but_not_with_asymmetric_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({"MANGU_ENV": "production", "MONGODB_URL": "mongodb://db/"})
    assert any(p.startswith("JWT_SECRET=<unset>") for p in err.value.problems)
    key = tmp_path / "pub.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n")
    settings = load_settings(
        {"MANGU_ENV": "production", "MONGODB_URL": "mongodb://db/", "JWT_ALGORITHMS": "RS256",
         "JWT_PUBLIC_KEY_FILE": str(key)}
    )
    assert settings.jwt_algorithms == ("RS256",)
    assert settings.log_format == "json"  # json is the production default


def test_defaults_are_the_platforms() -> None:
    s = load_settings({})
    assert (s.mangu_env, s.port, s.log_format) == ("development", 3001, "pretty")
    assert (s.rate_limit_window, s.rate_limit_max) == (900_000, 100)
    assert (s.database_pool_max, s.database_pool_min) == (20, 2)
    assert (s.database_idle_timeout, s.database_timeout, s.database_statement_timeout) == (600_000, 30_000, 30_000)
    assert (s.slow_query_threshold, s.enable_query_logging, s.enable_websocket) == (1000, False, True)
    assert s.mongodb_url == "embedded" and s.redis_url is None


def test_env_file_through_flag_and_variable_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / "mangu.env"
    env_file.write_text('# comment\nexport PORT=4100\nLOG_LEVEL="warning"\nMONGODB_DB=\'books\'\n')
    s = load_settings({}, env_file=str(env_file))
    assert (s.port, s.log_level, s.mongodb_db) == (4100, "WARNING", "books")
    s = load_settings({"MANGU_ENV_FILE": str(env_file), "PORT": "4200"})
    assert (s.port, s.log_level) == (4200, "WARNING")

    bad = tmp_path / "bad.env"
    bad.write_text("PORT=notanumber\n")
    result = run_server_once({"MANGU_ENV": "test"}, ["--env-file", str(bad)])
    assert result.returncode == EX_CONFIG
    assert "PORT='notanumber'" in result.stderr

    result = run_server_once({"MANGU_ENV": "test", "MANGU_ENV_FILE": str(tmp_path / "missing.env")})
    assert result.returncode == EX_CONFIG
    assert "MANGU_ENV_FILE=" in result.stderr and "unreadable" in result.stderr


def test_env_example_documents_exactly_the_settings() -> None:
    text = (ROOT / "conf" / "mangu.env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.M))
    assert documented == set(VARIABLE_NAMES)
    # and each documented default parses: the example, uncommented, is a valid configuration
    values = dict(re.findall(r"^#([A-Z][A-Z0-9_]+)=(.*)$", text, re.M))
    for name in ("PORT", "RATE_LIMIT_WINDOW", "RATE_LIMIT_MAX", "DATABASE_POOL_MAX", "DATABASE_POOL_MIN"):
        assert values[name] == {"PORT": "3001", "RATE_LIMIT_WINDOW": "900000", "RATE_LIMIT_MAX": "100",
                                "DATABASE_POOL_MAX": "20", "DATABASE_POOL_MIN": "2"}[name]


def test_server_starts_logs_one_start_line_and_stops_cleanly_on_sigint() -> None:
    port = free_port()
    server = ServerProcess({**BASE, "PORT": str(port), "MONGODB_URL": "mongodb://127.0.0.1:1/"}).start()
    try:
        start = server.wait_for(lambda r: r.get("logger") == "mangu.server" and "address" in r)
        assert start["version"] and start["env"] == "test" and start["address"] == f"127.0.0.1:{port}"
        assert port_open(port)
        server.signal(signal.SIGINT)
        assert server.wait(30) == 0
        assert "Traceback" not in server.stderr
    finally:
        server.stop()


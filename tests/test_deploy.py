"""Deployment files: the systemd units pass ``systemd-analyze verify`` and rate at most 2.0
exposure in ``systemd-analyze security``; the server runs under MemoryDenyWriteExecute."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest

from mangu.config import load_settings
from mangu.lifecycle import longest_shutdown
from tests.support.notify import notified_server
from tests.support.procs import PYTHON, ROOT

UNITS = {"mangu.service": "mangu.service", "mangu@.service": "mangu@8001.service"}
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
MAX_EXPOSURE = 2.0


def install(tmp_path: Path, unit: str) -> Path:
    """The unit as installed under a prefix that exists here (verify checks that ExecStart's
    program is executable): /opt/mangu becomes a directory with the venv's python."""
    prefix = tmp_path / "opt-mangu"
    (prefix / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    python = prefix / ".venv" / "bin" / "python"
    if not python.exists():
        python.symlink_to(PYTHON)
        (prefix / "server.py").symlink_to(ROOT / "server.py")
    text = (ROOT / "systemd" / unit).read_text().replace("/opt/mangu", str(prefix))
    path = tmp_path / unit
    path.write_text(text)
    return path


def directives(unit: str) -> list[tuple[str, str]]:
    lines = (ROOT / "systemd" / unit).read_text().splitlines()
    return [tuple(line.split("=", 1)) for line in lines if "=" in line and not line.startswith("#")]  # type: ignore[misc]


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, unit: str) -> None:
    install(tmp_path, unit)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(tmp_path / UNITS[unit])],
        capture_output=True, text=True, timeout=60,
    )
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "mangu" in line]
    assert result.returncode == 0 and ours == [], result.stdout + result.stderr


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_rates_ok_in_systemd_analyze_security(tmp_path: Path, unit: str) -> None:
    install(tmp_path, unit)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(tmp_path / UNITS[unit])],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= MAX_EXPOSURE and match.group(2) == "OK", result.stdout


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_notifies_watches_and_outlasts_the_shutdown(unit: str) -> None:
    settings = dict(directives(unit))
    assert (settings["Type"], settings["NotifyAccess"], settings["WatchdogSec"]) == ("notify", "main", "30")
    assert settings["LimitNOFILE"] == "65536" and settings["Restart"] == "on-failure"
    assert settings["EnvironmentFile"] == "/etc/mangu/mangu.env"
    assert settings["MemoryDenyWriteExecute"] == "yes" and settings["CapabilityBoundingSet"] == ""
    defaults = load_settings({"MANGU_ENV": "production", "JWT_SECRET": "x" * 32, "MONGODB_URL": "mongodb://db/",
                              "CLIENT_URL": "https://mangu.example"})
    assert longest_shutdown(defaults) == 0 + max(10, 5 + 2) + 10  # the figure the unit's comment gives
    # a margin for the process's own exit and a machine under load, before systemd's SIGKILL
    assert int(settings["TimeoutStopSec"]) >= longest_shutdown(defaults) + 5


def test_the_template_instance_name_is_the_port() -> None:
    settings = dict(directives("mangu@.service"))
    assert settings["ExecStart"].startswith("/usr/bin/env PORT=%i ")


def test_the_server_runs_under_memory_deny_write_execute() -> None:
    """MemoryDenyWriteExecute=yes is set because this passes: CPython 3.11 and the pinned
    dependencies (TLS, JWT keys, hiredis, BSON, ctypes callbacks) need no writable code."""
    launcher = [PYTHON, "tests/support/mdwe_exec.py"]
    check = subprocess.run([*launcher, PYTHON, "-c", _DEPENDENCIES_UNDER_MDWE], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0 and check.stdout.strip() == "ok", check.stderr

    env = {"MANGU_ENV": "test", "PORT": "0", "LOG_FORMAT": "json"}
    with notified_server(env, launcher=launcher) as (server, notify):
        notify.wait_for("READY", "1")
        server.signal(signal.SIGTERM)
        assert server.wait(15) == 0
    assert "Traceback" not in server.stderr


_DEPENDENCIES_UNDER_MDWE = """
import ctypes, mmap, ssl
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    raise SystemExit("writable+executable memory was allowed: MDWE is not in force")
except PermissionError:
    pass
import bson, hiredis, jwt, orjson, psutil, pymongo, redis, tornado.web, prometheus_client
from cryptography.hazmat.primitives.asymmetric import ec, rsa
for key, alg in ((rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
                 (ec.generate_private_key(ec.SECP256R1()), "ES256")):
    assert jwt.decode(jwt.encode({"sub": "a"}, key, algorithm=alg), key.public_key(), algorithms=[alg]) == {"sub": "a"}
assert jwt.decode(jwt.encode({"sub": "b"}, "k" * 32, algorithm="HS256"), "k" * 32, algorithms=["HS256"])["sub"] == "b"
assert bson.decode(bson.encode({"n": 1})) == {"n": 1} and bson.has_c()
reader = hiredis.Reader(); reader.feed(b"+PONG\\r\\n"); assert reader.gets() == b"PONG"
assert orjson.loads(orjson.dumps({"a": [1]})) == {"a": [1]}
assert psutil.Process().memory_info().rss > 0
ssl.create_default_context()
callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
assert callback(1) == 2
print("ok")
"""

"""The operator commands, run as an operator would (child processes): ``python -m mangu.users``
manages the accounts the server logs in, ``python -m mangu.token`` mints tokens it accepts;
both read the server's settings (environment and --env-file)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.support.api import UNLIMITED, call
from tests.support.app import TEST_SECRET
from tests.support.procs import PYTHON, ROOT, ServerProcess, server_env

PASSWORD = "correct horse battery"


def cli(module: str, *args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", module, *args], cwd=ROOT, env=server_env(env), input=stdin,
                          capture_output=True, text=True, timeout=60)


async def run(module: str, *args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess:
    """``cli`` without blocking the event loop the app under test runs in."""
    return await asyncio.to_thread(cli, module, *args, env=env, stdin=stdin)


@pytest.fixture
def env(mongo_url: str, mongo_db: str) -> dict[str, str]:
    """The settings a server of this test uses (start_app picks the same database)."""
    return {"MANGU_ENV": "test", "MONGODB_URL": mongo_url, "MONGODB_DB": mongo_db, "JWT_SECRET": TEST_SECRET}


async def login(app, username: str, password: str) -> int:
    return (await call(app, "POST", "/api/auth/login", {"username": username, "password": password}))[0]


async def test_users_create_passwd_list_delete(start_app, env: dict[str, str]) -> None:
    created = await run("mangu.users", "create", "Ann", "--role", "editor", env=env, stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("ann\teditor\t")
    app = await start_app(**UNLIMITED)
    assert await login(app, "ann", PASSWORD) == 200
    _, body, _ = await call(app, "POST", "/api/auth/login", {"username": "ann", "password": PASSWORD})
    assert body["user"]["roles"] == ["editor"]

    changed = await run("mangu.users", "passwd", "ann", env=env, stdin="a brand new password\n")
    assert changed.returncode == 0 and "password of ann changed" in changed.stdout
    assert await login(app, "ann", PASSWORD) == 401
    assert await login(app, "ann", "a brand new password") == 200

    await run("mangu.users", "create", "bob", env=env, stdin="password123\n")
    listed = await run("mangu.users", "list", env=env)
    assert listed.returncode == 0
    # In id order: ids made by two processes within one second need not follow creation.
    assert sorted(line.split("\t")[:2] for line in listed.stdout.splitlines()) == [["ann", "editor"], ["bob", "reader"]]

    deleted = await run("mangu.users", "delete", "ann", env=env)
    assert deleted.returncode == 0 and "ann deleted" in deleted.stdout
    assert await login(app, "ann", "a brand new password") == 401


async def test_users_errors_have_their_own_exit_status(env: dict[str, str]) -> None:
    assert (await run("mangu.users", "create", "ann", env=env, stdin=PASSWORD + "\n")).returncode == 0
    taken = await run("mangu.users", "create", "ann", env=env, stdin=PASSWORD + "\n")
    assert taken.returncode == 73 and "taken" in taken.stderr
    unknown = await run("mangu.users", "passwd", "nobody", env=env, stdin=PASSWORD + "\n")
    assert unknown.returncode == 67 and "no such user: nobody" in unknown.stderr
    invalid = await run("mangu.users", "create", "no spaces", env=env, stdin="short\n")
    assert invalid.returncode == 65 and "username" in invalid.stderr and "password" in invalid.stderr
    # A password is never taken from the command line, where the process list shows it.
    on_argv = await run("mangu.users", "create", "zed", "--password", PASSWORD, env=env)
    assert on_argv.returncode == 2 and "unrecognized arguments" in on_argv.stderr


async def test_both_commands_read_the_env_file_and_refuse_bad_settings(env: dict[str, str], tmp_path: Path) -> None:
    env_file = tmp_path / "mangu.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in {**env, "JWT_SECRET": "s" * 40}.items()))
    only_path = {"PATH": os.environ["PATH"]}
    created = await run("mangu.users", "--env-file", str(env_file), "create", "ann", env=only_path,
                        stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    minted = await run("mangu.token", "--sub", "ann", "--env-file", str(env_file), env=only_path)
    assert minted.returncode == 0
    assert jwt.decode(minted.stdout.strip(), "s" * 40, algorithms=["HS256"])["sub"] == "ann"

    env_file.write_text(env_file.read_text() + "DATABASE_POOL_MAX=lots\n")
    for module, args in (("mangu.users", ("list",)), ("mangu.token", ("--sub", "ann"))):
        refused = await run(module, "--env-file", str(env_file), *args, env=only_path)
        assert refused.returncode == 78
        assert f"{module}: configuration error: DATABASE_POOL_MAX='lots'" in refused.stderr


async def test_minted_token_is_accepted_by_the_server(start_app, env: dict[str, str]) -> None:
    minted = await run("mangu.token", "--sub", "alice", "--role", "admin", "--role", "editor", "--ttl", "120", env=env)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert minted.stdout == token + "\n"
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["roles"] == ["admin", "editor"]
    assert abs(claims["exp"] - (time.time() + 120)) < 10
    app = await start_app(**UNLIMITED)
    status, body, _ = await call(app, "GET", "/api/presence", headers={"Authorization": f"Bearer {token}"})
    assert status == 200 and body["count"] == 0  # an admin-only endpoint

    for args, status in ((("--sub", "a b"), 65), (("--sub", "a", "--ttl", "0"), 65),
                         (("--sub", "a", "--role", "emperor"), 2)):
        assert (await run("mangu.token", *args, env=env)).returncode == status, args


async def test_users_command_shares_a_running_servers_embedded_database(tmp_path: Path) -> None:
    env = {"MANGU_ENV": "test", "PORT": "0", "DATA_DIR": str(tmp_path / "data"), "JWT_SECRET": TEST_SECRET,
           "LOG_LEVEL": "INFO"}
    server = ServerProcess(env).start()
    try:
        created = await run("mangu.users", "create", "ann", env=env, stdin=PASSWORD + "\n")
        assert created.returncode == 0, created.stderr
        response = await AsyncHTTPClient().fetch(
            server.url("/api/auth/login"), method="POST", headers={"Content-Type": "application/json"},
            body=json.dumps({"username": "ann", "password": PASSWORD}), raise_error=False,
        )
        assert response.code == 200, response.body
    finally:
        server.stop()

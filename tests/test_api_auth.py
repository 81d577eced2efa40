"""Login, self sign-up, refresh and /api/auth/me over real HTTP, against real storage."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.api import UNLIMITED, bearer, call, error_of
from tests.support.app import TEST_SECRET
from tests.support.ws import WSClient, make_token

PASSWORD = "correct horse battery"


async def login(app, username: str, password: str = PASSWORD) -> tuple[int, dict, object]:
    return await call(app, "POST", "/api/auth/login", {"username": username, "password": password})


async def test_login_gives_a_token_that_the_api_and_the_websocket_accept(start_app) -> None:
    app = await start_app(**UNLIMITED, JWT_TTL="600")
    ann = await app.services.users.create("ann", PASSWORD, ["author", "reader"])
    status, body, _ = await login(app, "Ann")
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert abs(body["expires_at"] - (time.time() + 600)) < 5
    assert body["user"] == ann and "password_hash" not in body["user"]
    claims = jwt.decode(body["token"], TEST_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["roles"], claims["uid"]) == ("ann", ["author", "reader"], ann["id"])

    headers = {"Authorization": f"Bearer {body['token']}"}
    status, me, _ = await call(app, "GET", "/api/auth/me", headers=headers)
    assert status == 200
    assert me == {"user": "ann", "roles": ["author", "reader"], "expires_at": body["expires_at"], "account": ann}
    socket = await WSClient.connect(app.ws_url(), body["token"])
    ready = socket.received("session:ready")[0]
    assert (ready["user"], ready["roles"]) == ("ann", ["author", "reader"])
    await socket.close()


async def test_unknown_user_and_wrong_password_get_the_same_answer(start_app) -> None:
    app = await start_app(**UNLIMITED)
    await app.services.users.create("ann", PASSWORD)
    wrong = error_of(*(await login(app, "ann", "not the password"))[:2], 401, "invalid_credentials")
    unknown = error_of(*(await login(app, "nobody", "not the password"))[:2], 401, "invalid_credentials")
    assert wrong["message"] == unknown["message"] == "wrong username or password"
    assert set(wrong) == set(unknown)


async def test_unknown_user_and_wrong_password_take_the_same_time(start_app) -> None:
    app = await start_app(**UNLIMITED)
    await app.services.users.create("ann", PASSWORD)

    async def timed(username: str) -> float:
        started = time.perf_counter()
        status, _, _ = await login(app, username, "not the password")
        assert status == 401
        return time.perf_counter() - started

    await timed("ann")  # warm up the connection and the worker thread
    wrong, unknown = [], []
    for turn in range(15):  # interleaved, taking turns to go first, so load on the machine hits both alike
        for username in ("ann", "nobody") if turn % 2 else ("nobody", "ann"):
            (wrong if username == "ann" else unknown).append(await timed(username))
    fast, slow = sorted((statistics.median(wrong), statistics.median(unknown)))
    assert fast > 0.005, "a login should cost one scrypt check"
    assert (slow - fast) / slow <= 0.20, (wrong, unknown)


async def test_login_refuses_bad_bodies_precisely(start_app) -> None:
    app = await start_app(**UNLIMITED)
    status, body, _ = await call(app, "POST", "/api/auth/login", "username=ann&password=x",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    error_of(status, body, 415, "unsupported_media_type")
    status, body, _ = await call(app, "POST", "/api/auth/login", '{"username": "ann",',
                                 headers={"Content-Type": "application/json"})
    error_of(status, body, 400, "malformed_json")
    status, body, _ = await call(app, "POST", "/api/auth/login", {"username": ["ann"], "password": 12345678})
    assert error_of(status, body, 400, "invalid_input")["fields"] == {
        "username": "expected a string", "password": "expected a string"}


async def test_login_attempts_are_limited_per_username_and_per_address(start_app) -> None:
    app = await start_app(RATE_LIMIT_AUTH_MAX="4", RATE_LIMIT_AUTH_USER_MAX="2")
    await app.services.users.create("ann", PASSWORD)
    assert (await login(app, "ann", "guess one"))[0] == 401
    assert (await login(app, "ann", "guess two"))[0] == 401
    status, body, response = await login(app, "ann")  # the right password, but too late
    error = error_of(status, body, 429, "rate_limited")
    assert error["policy"] == "auth_user" and int(response.headers["Retry-After"]) >= 1
    # Other usernames from the same address: the per-address bucket (4; the refused attempt
    # took nothing) runs out too.
    assert (await login(app, "bob", "guess"))[0] == 401
    assert (await login(app, "carol", "guess"))[0] == 401
    status, body, _ = await login(app, "dave", "guess")
    assert error_of(status, body, 429, "rate_limited")["policy"] == "auth"


async def test_register_creates_a_reader_and_logs_it_in(start_app) -> None:
    app = await start_app(**UNLIMITED)
    status, body, _ = await call(app, "POST", "/api/auth/register", {"username": "Newbie", "password": PASSWORD})
    assert status == 201
    assert body["user"]["username"] == "newbie" and body["user"]["roles"] == ["reader"]
    assert jwt.decode(body["token"], TEST_SECRET, algorithms=["HS256"])["sub"] == "newbie"
    assert (await login(app, "newbie"))[0] == 200

    status, body, _ = await call(app, "POST", "/api/auth/register", {"username": "newbie", "password": PASSWORD})
    assert error_of(status, body, 409, "conflict")["field"] == "username"
    status, body, _ = await call(app, "POST", "/api/auth/register",
                                 {"username": "boss", "password": PASSWORD, "roles": ["admin"]})
    assert error_of(status, body, 400, "invalid_input")["fields"] == {"roles": "unknown field"}
    status, body, _ = await call(app, "POST", "/api/auth/register", {"username": "x!", "password": "short"})
    assert set(error_of(status, body, 400, "invalid_input")["fields"]) == {"username", "password"}


async def test_register_does_not_exist_when_disabled(start_app) -> None:
    app = await start_app(**UNLIMITED, ENABLE_REGISTRATION="false")
    status, body, _ = await call(app, "POST", "/api/auth/register", {"username": "newbie", "password": PASSWORD})
    error_of(status, body, 404, "not_found")
    assert (await app.services.users.list()).items == []


async def test_refresh_renews_with_the_accounts_current_roles(start_app) -> None:
    app = await start_app(**UNLIMITED)
    ann = await app.services.users.create("ann", PASSWORD)
    _, first, _ = await login(app, "ann")
    await app.services.users.set_roles(ann["id"], ["editor"])
    status, renewed, _ = await call(app, "POST", "/api/auth/refresh",
                                    headers={"Authorization": f"Bearer {first['token']}"})
    assert status == 200 and renewed["expires_at"] >= first["expires_at"]
    _, me, _ = await call(app, "GET", "/api/auth/me", headers={"Authorization": f"Bearer {renewed['token']}"})
    assert me["roles"] == ["editor"]

    await app.services.users.delete(ann["id"])
    status, body, response = await call(app, "POST", "/api/auth/refresh",
                                        headers={"Authorization": f"Bearer {renewed['token']}"})
    assert "no longer exists" in error_of(status, body, 401, "unauthorized")["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_refresh_of_a_token_minted_elsewhere_keeps_its_roles(start_app) -> None:
    app = await start_app(**UNLIMITED)
    status, body, _ = await call(app, "POST", "/api/auth/refresh", headers=bearer("partner-7", "author"))
    assert status == 200
    claims = jwt.decode(body["token"], TEST_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["roles"], "uid" in claims) == ("partner-7", ["author"], False)
    _, me, _ = await call(app, "GET", "/api/auth/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me["account"] is None


async def test_refresh_needs_a_valid_token(start_app) -> None:
    app = await start_app(**UNLIMITED)
    status, body, response = await call(app, "POST", "/api/auth/refresh")
    error_of(status, body, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="mangu"'
    expired = {"Authorization": f"Bearer {make_token('ann', ttl=-10)}"}
    error_of(*(await call(app, "POST", "/api/auth/refresh", headers=expired))[:2], 401, "token_expired")
    forged = {"Authorization": f"Bearer {make_token('ann', secret='another-secret-of-thirty-two-bytes!!')}"}
    error_of(*(await call(app, "POST", "/api/auth/refresh", headers=forged))[:2], 401, "unauthorized")


async def test_a_server_that_only_verifies_tokens_answers_501_to_login(start_app, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "public.pem"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    app = await start_app(**UNLIMITED, JWT_ALGORITHMS="ES256", JWT_PUBLIC_KEY_FILE=str(public), JWT_SECRET=None)
    await app.services.users.create("ann", PASSWORD)
    status, body, _ = await login(app, "ann")
    assert "JWT_PRIVATE_KEY_FILE" in error_of(status, body, 501, "cannot_issue")["message"]

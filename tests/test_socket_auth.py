"""WebSocket authentication: every refused token closes with 4001; origins are checked before
the upgrade; expiry is enforced during the connection and auth:refresh extends it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tornado.httpclient import HTTPClientError

from tests.support.app import json_body
from tests.support.ws import WSClient, make_token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, claims: dict, key: bytes) -> str:
    """A token signed with HMAC-SHA256 over ``key`` whatever the header says."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@pytest.fixture
async def rt(start_app, mongo_url: str, mongo_db: str):
    return await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, WS_AUTH_TIMEOUT="1")


async def refused(url: str, **kwargs) -> WSClient:
    client = await WSClient.connect(url, wait_ready=False, **kwargs)
    assert await client.closed(5) == 4001
    assert not client.received("session:ready")
    return client


async def test_token_in_query_header_or_first_frame(rt) -> None:
    a = await WSClient.connect(rt.ws_url(), make_token("alice"))
    assert a.received("session:ready")[0]["user"] == "alice"
    b = await WSClient.connect(rt.ws_url(), header_token=make_token("bob"))
    assert b.received("session:ready")[0]["user"] == "bob"
    c = await WSClient.connect(rt.ws_url(), wait_ready=False)
    assert (await c.request("join:room", {"room": "book:1"}))["data"]["code"] == "unauthorized"
    ack = await c.ok("auth", {"token": make_token("carol")})
    assert ack["user"] == "carol"
    assert (await c.ok("join:room", {"room": "book:1"}))["room"] == "book:1"
    for client in (a, b, c):
        await client.close()


async def test_refused_tokens_close_4001(rt, log_capture) -> None:
    now = int(time.time())
    await refused(rt.ws_url())  # no token, no auth frame within WS_AUTH_TIMEOUT
    await refused(rt.ws_url(), token=make_token("alice", secret="not-the-server-secret-0123456789abcdef"))
    await refused(rt.ws_url(), token=forge({"alg": "HS512", "typ": "JWT"}, {"sub": "alice", "exp": now + 60},
                                           b"test-secret-0123456789abcdef0123456789abcdef"))  # alg not allowed
    await refused(rt.ws_url(), token=make_token("alice", ttl=-10))  # expired
    await refused(rt.ws_url(), token="not.a.jwt")
    await refused(rt.ws_url(), token=make_token("alice", ttl=3600).rsplit(".", 1)[0] + ".AAAA")
    await refused(rt.ws_url(), token=make_token(""))  # empty subject
    client = await WSClient.connect(rt.ws_url(), wait_ready=False)
    client.send("auth", {"token": make_token("alice", ttl=-5)})
    assert await client.closed(5) == 4001
    # the refusals are logged without the token
    lines = [r for r in log_capture.records if r["message"].startswith("websocket authentication failed")]
    assert len(lines) >= 7 and all("eyJ" not in json.dumps(r) for r in log_capture.records)


async def test_alg_none_token_is_refused(rt) -> None:
    token = _b64(b'{"alg":"none","typ":"JWT"}') + "." + _b64(json.dumps(
        {"sub": "alice", "exp": int(time.time()) + 60}).encode()) + "."
    await refused(rt.ws_url(), token=token)


async def test_wrong_audience_or_issuer(start_app, mongo_url, mongo_db) -> None:
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, JWT_AUDIENCE="mangu-rt", JWT_ISSUER="https://id.mangu")
    await refused(app.ws_url(), token=make_token("alice", aud="other", iss="https://id.mangu"))
    await refused(app.ws_url(), token=make_token("alice", aud="mangu-rt", iss="https://evil"))
    await refused(app.ws_url(), token=make_token("alice"))  # neither claim
    ok = await WSClient.connect(app.ws_url(), make_token("alice", aud="mangu-rt", iss="https://id.mangu"))
    await ok.close()


async def test_hs_token_signed_with_the_rs_public_key_is_refused(start_app, mongo_url, mongo_db,
                                                                 tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    (tmp_path / "pub.pem").write_bytes(public_pem)
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, JWT_ALGORITHMS="RS256",
                          JWT_PUBLIC_KEY_FILE=str(tmp_path / "pub.pem"), JWT_SECRET=None)
    claims = {"sub": "mallory", "exp": int(time.time()) + 600}
    await refused(app.ws_url(), token=forge({"alg": "HS256", "typ": "JWT"}, claims, public_pem))
    import jwt

    good = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, private_pem, algorithm="RS256")
    client = await WSClient.connect(app.ws_url(), good)
    assert client.received("session:ready")[0]["user"] == "alice"
    await client.close()


async def test_disallowed_origin_is_403_before_upgrade(start_app, mongo_url, mongo_db) -> None:
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, CLIENT_URL="https://mangu.example")
    with pytest.raises(HTTPClientError) as err:
        await WSClient.connect(app.ws_url(), make_token("alice"), origin="https://evil.example")
    assert "403" in str(err.value)
    response = await app.fetch("/ws", headers={
        "Origin": "https://evil.example", "Upgrade": "websocket", "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    })
    assert response.code == 403 and json_body(response)["error"]["code"] == "forbidden"
    ok = await WSClient.connect(app.ws_url(), make_token("alice"), origin="https://mangu.example")
    await ok.close()
    plain = await app.fetch("/ws")
    assert plain.code == 400 and json_body(plain)["error"]["code"] == "upgrade_required"


async def test_origin_of_the_server_itself_or_any_with_a_star(start_app, mongo_url, mongo_db) -> None:
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, CLIENT_URL="https://mangu.example")
    for origin in (f"http://127.0.0.1:{app.port}", f"https://127.0.0.1:{app.port}"):  # Host matches, any scheme
        ok = await WSClient.connect(app.ws_url(), make_token("alice"), origin=origin)
        await ok.close()
    for origin in ("https://mangu.example:443", "http://mangu.example", "http://127.0.0.1:1"):
        with pytest.raises(HTTPClientError) as err:
            await WSClient.connect(app.ws_url(), make_token("alice"), origin=origin)
        assert "403" in str(err.value), origin
    anywhere = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, CLIENT_URL="*")
    ok = await WSClient.connect(anywhere.ws_url(), make_token("alice"), origin="https://evil.example")
    await ok.close()


async def test_expiry_mid_connection_and_refresh(start_app, mongo_url, mongo_db) -> None:
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db, WS_EXPIRY_WARNING="2")
    expiring = await WSClient.connect(app.ws_url(), make_token("alice", ttl=3))
    warned = await expiring.expect("auth:expiring", timeout=5)
    assert 0 <= warned["data"]["expires_in"] <= 2
    assert await expiring.closed(5) == 4001
    assert expiring.close_reason == "token expired"

    refreshed = await WSClient.connect(app.ws_url(), make_token("bob", ttl=3))
    await refreshed.expect("auth:expiring", timeout=5)
    reply = await refreshed.request("auth:refresh", {"token": make_token("mallory", ttl=600)})
    assert reply["data"]["code"] == "forbidden"  # someone else's token does not extend bob's session
    ack = await refreshed.ok("auth:refresh", {"token": make_token("bob", ttl=600)})
    assert ack["expires_at"] > time.time() + 500
    await asyncio.sleep(3)  # past the first token's expiry
    assert (await refreshed.ok("ping"))["server_time"] > 0
    await refreshed.close()


async def test_auth_and_refresh_frames_are_answered_with_precise_errors(start_app, mongo_url, mongo_db) -> None:
    app = await start_app(MONGODB_URL=mongo_url, MONGODB_DB=mongo_db)  # the default WS_AUTH_TIMEOUT (10 s)
    client = await WSClient.connect(app.ws_url(), wait_ready=False)
    reply = await client.request("auth", {})  # no token: refused, but the connection may still authenticate
    assert reply["data"]["code"] == "invalid_payload" and reply["data"]["field"] == "token"
    assert (await client.ok("auth", {"token": make_token("alice")}))["user"] == "alice"
    again = await client.request("auth", {"token": make_token("alice")})
    assert again["event"] == "error" and again["data"]["code"] == "invalid_frame"
    for data, code in (
        ({}, "invalid_payload"),
        ({"token": "not.a.jwt"}, "unauthorized"),
        ({"token": make_token("alice", secret="not-the-server-secret-0123456789abcdef")}, "unauthorized"),
        ({"token": make_token("alice", ttl=-10)}, "token_expired"),
    ):
        reply = await client.request("auth:refresh", data)
        assert reply["event"] == "error" and reply["data"]["code"] == code, (data, reply)
    assert (await client.ok("ping"))["server_time"]  # refused refreshes leave the session as it was
    await client.close()

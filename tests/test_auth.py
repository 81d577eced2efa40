"""Tokens: the development secret survives restarts; roles and subjects are read strictly."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mangu.auth import AuthError, TokenAuthority
from mangu.config import load_settings
from tests.support.ws import make_token


def test_development_secret_is_generated_once_private_and_survives_a_restart(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path)})  # development, no JWT_SECRET
    first = TokenAuthority(settings)
    token, _ = first.issue("alice", ("editor",))
    secret_file = tmp_path / "jwt-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    again = TokenAuthority(settings)  # the next start of the server
    principal = again.verify(token)
    assert principal.user_id == "alice" and principal.roles == ("editor",)
    assert len(secret_file.read_text().strip()) == 64


def test_subjects_and_roles_are_read_strictly(tmp_path: Path) -> None:
    secret = "s" * 40
    authority = TokenAuthority(load_settings({"DATA_DIR": str(tmp_path), "JWT_SECRET": secret}))
    assert authority.verify(make_token("reader.one", secret=secret, role="admin")).roles == ("admin",)
    assert authority.verify(make_token("bob", secret=secret, roles=["root", "author"])).roles == ("author",)
    assert authority.verify(make_token("bob", secret=secret, roles="nonsense")).roles == ("reader",)
    for bad_sub in ("", "has space", "a:b", "x" * 65):
        with pytest.raises(AuthError) as err:
            authority.verify(make_token(bad_sub, secret=secret))
        assert err.value.reason == "invalid_claims"
    with pytest.raises(AuthError) as err:
        authority.verify(make_token("bob", secret=secret, ttl=-1))
    assert err.value.reason == "expired"

"""JWT verification and issuing (PyJWT).

One algorithm family per server (config refuses HS mixed with RS/ES), so a token signed
with HMAC over the public key (the classic key-confusion attack) is refused by the
algorithm allow-list before any key is used. ``sub`` and ``exp`` are required; ``iss`` and
``aud`` are checked when configured. Tokens never reach a log line.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from mangu.config import Settings
from mangu.store.messages import MAX_USER_ID_LENGTH, USER_ID

log = logging.getLogger("mangu.auth")

ROLES = ("reader", "author", "editor", "admin")
_MAX_TOKEN_LENGTH = 8192


class AuthError(Exception):
    """A token was refused; ``reason`` is a stable code (missing, malformed, expired, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token speaks for (kept small: one lives with every WebSocket)."""

    user_id: str
    roles: tuple[str, ...]
    expires_at: float
    account_id: str | None = None  # the ``uid`` claim of tokens issued by this server's login

    def has_role(self, *roles: str) -> bool:
        return any(role in self.roles for role in roles)


def development_secret(data_dir: str) -> str:
    """A random HMAC secret kept in ``<data_dir>/jwt-secret`` (mode 0600), so tokens survive
    restarts of a development server without anyone choosing a secret."""
    path = Path(data_dir) / "jwt-secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    log.warning("JWT_SECRET is unset: using a generated development secret", extra={"file": str(path)})
    return secret


class TokenAuthority:
    """Verifies tokens with the configured key and, when it has a signing key, issues them."""

    def __init__(self, settings: Settings, secret: str | None = None) -> None:
        self.algorithms = list(settings.jwt_algorithms)
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.ttl = settings.jwt_ttl
        self._signing_key: Any = None
        if settings.hmac_algorithms:
            key = secret or settings.jwt_secret or development_secret(settings.data_dir)
            self._verify_key: Any = key
            self._signing_key = key
        else:
            assert settings.jwt_public_key_file  # config guarantees it for RS/ES
            self._verify_key = Path(settings.jwt_public_key_file).read_bytes()
            if settings.jwt_private_key_file:
                self._signing_key = Path(settings.jwt_private_key_file).read_bytes()
        self._options = {"require": ["exp", "sub"], "verify_signature": True}

    @property
    def can_issue(self) -> bool:
        return self._signing_key is not None

    def verify(self, token: str | None) -> Principal:
        """The principal of a valid token; AuthError with a reason otherwise."""
        if not token:
            raise AuthError("missing", "no token")
        if len(token) > _MAX_TOKEN_LENGTH:
            raise AuthError("malformed", "token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise AuthError("malformed", "malformed token") from None
        if header.get("alg") not in self.algorithms:
            raise AuthError("invalid_algorithm", "token algorithm not accepted")
        try:
            claims = jwt.decode(
                token, self._verify_key, algorithms=self.algorithms, options=self._options,
                issuer=self.issuer, audience=self.audience,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("expired", "token expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid_signature", "token signature invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("invalid_claims", f"token lacks the {exc.claim} claim") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError) as exc:
            raise AuthError("invalid_claims", str(exc).lower()) from None
        except (jwt.InvalidKeyError, jwt.InvalidAlgorithmError):
            raise AuthError("invalid_algorithm", "token algorithm not accepted") from None
        except jwt.InvalidTokenError:
            raise AuthError("malformed", "malformed token") from None
        sub = claims.get("sub")
        # the subject is the user id everywhere (rooms, direct conversations, presence)
        if not isinstance(sub, str) or len(sub) > MAX_USER_ID_LENGTH or not USER_ID.fullmatch(sub):
            raise AuthError("invalid_claims", "token subject is not a valid user id")
        uid = claims.get("uid")
        return Principal(user_id=sys.intern(sub), roles=_roles(claims), expires_at=float(claims["exp"]),
                         account_id=uid if isinstance(uid, str) else None)

    def issue(self, user_id: str, roles: tuple[str, ...] | list[str] = ("reader",), ttl: int | None = None,
              **extra: Any) -> tuple[str, float]:
        """A signed token for ``user_id`` and its expiry (epoch seconds)."""
        if not self.can_issue:
            raise AuthError("cannot_issue", "no signing key configured (JWT_PRIVATE_KEY_FILE)")
        now = int(time.time())
        expires_at = now + (ttl or self.ttl)
        claims: dict[str, Any] = {"sub": user_id, "roles": list(roles), "iat": now, "exp": expires_at, **extra}
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        token = jwt.encode(claims, self._signing_key, algorithm=self.algorithms[0])
        return token, float(expires_at)


# Every ordered selection of roles (64 of them): a principal shares one of these tuples rather
# than holding its own (one principal lives with every WebSocket).
_ROLE_TUPLES = {c: c for n in range(1, len(ROLES) + 1) for c in itertools.permutations(ROLES, n)}


def _roles(claims: dict[str, Any]) -> tuple[str, ...]:
    raw = claims.get("roles", claims.get("role", "reader"))
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raw = []
    roles = tuple(dict.fromkeys(r for r in raw if isinstance(r, str) and r in ROLES))
    return _ROLE_TUPLES.get(roles, ("reader",))

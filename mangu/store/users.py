"""User accounts: a unique username, a scrypt password hash, roles and timestamps.

``authenticate`` costs the same for an unknown username as for a wrong password (both run
one scrypt verification), so timing does not tell which usernames exist. Hashing runs in a
worker thread: it takes tens of milliseconds by design and must not stall the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from typing import Any

from pymongo.errors import DuplicateKeyError

from mangu import clock
from mangu.db import Database
from mangu.store.errors import Conflict, NotFound
from mangu.store.fields import Fields
from mangu.store.paging import MAX_LIMIT, Page, keyset_page, read_cursor
from mangu.store.records import delete_by_id, get_by_id, update_by_id

ROLES = ("reader", "author", "editor", "admin")
_NOT_FOUND = "no such user"
USERNAME = re.compile(r"[a-z0-9][a-z0-9_.\-]*")
MIN_USERNAME, MAX_USERNAME = 3, 32
MIN_PASSWORD, MAX_PASSWORD = 8, 1024

# scrypt cost: N=2**14, r=8 (16 MiB, tens of ms): OWASP's minimum for scrypt.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _SCRYPT_LEN = 2**14, 8, 1, 32


def _encode(salt: bytes, digest: bytes) -> str:
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64): the parameters travel with the hash."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=_SCRYPT_LEN)
    return _encode(salt, digest)


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected))
    except ValueError:
        return False
    return scheme == "scrypt" and hmac.compare_digest(actual, expected)


def _username(fields: Fields, value: Any) -> str | None:
    if isinstance(value, str):
        value = value.strip().lower()
    return fields.text("username", value, min_length=MIN_USERNAME, max_length=MAX_USERNAME, pattern=USERNAME,
                       expected="expected lowercase letters, digits and _ . - (starting with a letter or digit)")


def _password(fields: Fields, value: Any) -> str | None:
    return fields.text("password", value, min_length=MIN_PASSWORD, max_length=MAX_PASSWORD, strip=False)


def _roles(fields: Fields, value: Any) -> list[str] | None:
    roles = fields.text_list("roles", value, max_items=len(ROLES), max_length=16, choices=ROLES, lower=True)
    if roles == []:
        fields.add("roles", "expected at least one role")
        return None
    return roles


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(doc["_id"]),
        "username": doc["username"],
        "roles": list(doc["roles"]),
        "created_at": clock.iso(doc["created_at"]),
        "updated_at": clock.iso(doc["updated_at"]),
    }


class UserStore:
    """Accounts in the ``users`` collection. Returned users never carry the password hash."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Random salt and digest with the real parameters: checking a password against it
        # costs exactly what a real check costs, and never succeeds.
        self._dummy_hash = _encode(secrets.token_bytes(16), secrets.token_bytes(_SCRYPT_LEN))
        db.on_setup(self.create_indexes)

    async def create_indexes(self) -> None:
        await self._db.collection("users").create_index("username", unique=True, name="username")

    async def create(self, username: str, password: str, roles: list[str] | None = None) -> dict[str, Any]:
        """A new account (roles default to reader). Conflict when the username is taken."""
        fields = Fields()
        username = _username(fields, username)
        password = _password(fields, password)
        chosen = _roles(fields, ["reader"] if roles is None else roles)
        fields.check()
        assert password is not None
        created = clock.now()
        doc = {
            "username": username,
            "password_hash": await asyncio.to_thread(hash_password, password),
            "roles": chosen,
            "created_at": created,
            "updated_at": created,
        }
        async with self._db.operation() as db:
            try:
                await db.users.insert_one(doc)
            except DuplicateKeyError:
                raise Conflict("username", f"username {username!r} is taken") from None
        return _public(doc)

    async def get(self, user_id: str) -> dict[str, Any]:
        """The user with this id; NotFound otherwise."""
        return _public(await get_by_id(self._db, "users", user_id, _NOT_FOUND))

    async def get_by_username(self, username: str) -> dict[str, Any]:
        fields = Fields()
        username = _username(fields, username)
        fields.check()
        async with self._db.operation() as db:
            doc = await db.users.find_one({"username": username})
        if doc is None:
            raise NotFound(_NOT_FOUND)
        return _public(doc)

    async def authenticate(self, username: str, password: str) -> dict[str, Any] | None:
        """The user when the password is right; None for a wrong password or an unknown
        username alike, in the same time. A non-string value is a ValidationError."""
        fields = Fields()
        if not isinstance(username, str):
            fields.add("username", "expected a string")
        if not isinstance(password, str):
            fields.add("password", "expected a string")
        fields.check()
        name = username.strip().lower()
        doc = None
        if MIN_USERNAME <= len(name) <= MAX_USERNAME and USERNAME.fullmatch(name):
            async with self._db.operation() as db:
                doc = await db.users.find_one({"username": name})
        if len(password) > MAX_PASSWORD:
            password = password[:MAX_PASSWORD]  # the cost stays bounded; such a password never matches
            doc = None
        encoded = doc["password_hash"] if doc is not None else self._dummy_hash
        ok = await asyncio.to_thread(verify_password, password, encoded)
        return _public(doc) if ok and doc is not None else None

    async def set_password(self, user_id: str, password: str) -> None:
        fields = Fields()
        password = _password(fields, password)
        fields.check()
        assert password is not None
        await self._update(user_id, {"password_hash": await asyncio.to_thread(hash_password, password)})

    async def set_roles(self, user_id: str, roles: list[str]) -> dict[str, Any]:
        fields = Fields()
        chosen = _roles(fields, roles)
        if roles is None:
            fields.add("roles", "required")
        fields.check()
        return await self._update(user_id, {"roles": chosen})

    async def _update(self, user_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        return _public(await update_by_id(self._db, "users", user_id, changes, _NOT_FOUND))

    async def delete(self, user_id: str) -> None:
        await delete_by_id(self._db, "users", user_id, _NOT_FOUND)

    async def list(self, cursor: str | None = None, limit: int = 50) -> Page:
        """Users in id order (creation order, to the second), a page at a time (``Page.next_cursor`` for the next)."""
        fields = Fields()
        after = read_cursor(fields, cursor)
        limit = fields.integer("limit", limit, lo=1, hi=MAX_LIMIT, required=True)
        fields.check()
        assert limit is not None
        async with self._db.operation() as db:
            return await keyset_page(db.users, {}, after, limit, _public)

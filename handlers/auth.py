"""Login and tokens: ``/api/auth/login``, ``register`` (self sign-up), ``refresh`` and ``me``.

A token's ``sub`` is the username, the name the realtime side knows a user by (rooms,
direct messages, presence); tokens issued here also carry the account id as ``uid``, so a
refresh can check that the account still exists and pick up its current roles.
"""

from __future__ import annotations

from typing import Any

from handlers.base import APIError, APIHandler
from mangu.auth import AuthError, Principal
from mangu.store.errors import NotFound
from mangu.store.fields import Fields

TOKEN_TYPE = "Bearer"
_BAD_CREDENTIALS = "wrong username or password"


class _TokenHandler(APIHandler):
    """Issues tokens: 501 when this server only verifies them (RS/ES without a private key)."""

    def issue(self, user_id: str, roles: list[str] | tuple[str, ...], **claims: Any) -> dict[str, Any]:
        try:
            token, expires_at = self.services.tokens.issue(user_id, roles, **claims)
        except AuthError as exc:
            raise APIError(501, "cannot_issue", exc.message) from None
        return {"token": token, "token_type": TOKEN_TYPE, "expires_at": int(expires_at)}

    def issue_for(self, account: dict[str, Any]) -> dict[str, Any]:
        return {**self.issue(account["username"], account["roles"], uid=account["id"]), "user": account}


class LoginHandler(_TokenHandler):
    """``POST /api/auth/login`` ``{username, password}`` → a token. Under the auth tier only:
    attempts per client address and per username. An unknown user and a wrong password
    take the same time and get the same answer."""

    rate_limit = None

    async def post(self) -> None:
        body = self.get_json_body()
        username, password = body.get("username"), body.get("password")
        await self.limit_auth_attempt(username if isinstance(username, str) else "")
        account = await self.services.users.authenticate(username, password)
        if account is None:
            raise APIError(401, "invalid_credentials", _BAD_CREDENTIALS)
        self.current_user_id = account["username"]
        self.write_json(self.issue_for(account))


class RegisterHandler(_TokenHandler):
    """``POST /api/auth/register`` ``{username, password}``: a new reader account, logged in
    (201). Only with ENABLE_REGISTRATION; otherwise the endpoint does not exist (404)."""

    rate_limit = "strict"

    async def prepare(self) -> None:
        if not self.config.enable_registration:
            raise APIError(404, message=f"no such endpoint: {self.request.method} {self.request.path}")
        await super().prepare()

    async def post(self) -> None:
        fields = Fields()
        body = fields.only(self.get_json_body(), ("username", "password"))
        fields.check()  # roles are not the caller's to choose: a new account is a reader
        account = await self.services.users.create(body.get("username"), body.get("password"))
        self.current_user_id = account["username"]
        self.write_json(self.issue_for(account), status=201)


class RefreshHandler(_TokenHandler):
    """``POST /api/auth/refresh`` with a valid token → a new one for the same user. A token
    from a login is renewed with the account's current roles, and not at all once the
    account is gone; a token minted elsewhere keeps its roles."""

    rate_limit = "strict"

    async def post(self) -> None:
        principal = self.require_user()
        uid = principal.account_id
        if uid is None:
            self.write_json(self.issue(principal.user_id, principal.roles))
            return
        try:
            account = await self.services.users.get(uid)
        except NotFound:
            account = None
        if account is None or account["username"] != principal.user_id:
            raise APIError(401, "unauthorized", "the account of this token no longer exists",
                           headers={"WWW-Authenticate": 'Bearer realm="mangu"'})
        self.write_json(self.issue_for(account))


class MeHandler(APIHandler):
    """``GET /api/auth/me``: who the token speaks for, and their account when they have one."""

    async def get(self) -> None:
        principal: Principal = self.require_user()
        uid = principal.account_id
        account = None
        if uid is not None:
            try:
                account = await self.services.users.get(uid)
            except NotFound:
                pass
        self.write_json({
            "user": principal.user_id, "roles": list(principal.roles), "expires_at": int(principal.expires_at),
            "account": account,
        })


default_handlers = [
    (r"/api/auth/login", LoginHandler),
    (r"/api/auth/register", RegisterHandler),
    (r"/api/auth/refresh", RefreshHandler),
    (r"/api/auth/me", MeHandler),
]

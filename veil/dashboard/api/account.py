"""
C{/api/v1/me}, C{/api/v1/tokens} and C{/api/v1/sessions}: the caller's
account, API tokens and sessions.

Creating a token and anything about sessions needs a signed-in session (a
token cannot mint tokens or end sessions); a token may list and revoke its
user's tokens.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from veil.auth.accounts import MAX_TOKEN_LIFETIME, SignInRefused
from veil.auth.store import ApiToken, SessionRecord, UserNotFound
from veil.dashboard import paging
from veil.dashboard.schema import Array, Boolean, Object, Response, String, Uuid
from veil.dashboard.services import Services
from veil.dashboard.web import (
    Call,
    HttpError,
    Json,
    not_found,
    route,
    user_read,
    user_write,
)
from veil.store.admin import InvalidValue, parse_duration

DEFAULT_TOKEN_LIFETIME = "90d"

TOKEN = Object({
    "id": Uuid(),
    "name": String(),
    "prefix": String(description="the token's first characters, to recognise it"),
    "site_id": Uuid(nullable=True, description="null: every site of the user"),
    "site": String(nullable=True, description="the site's domain"),
    "read_only": Boolean(),
    "created_at": String(format="date-time"),
    "expires_at": String(format="date-time", nullable=True),
    "last_used_at": String(format="date-time", nullable=True,
                           description="recorded at most once a minute"),
    "revoked_at": String(format="date-time", nullable=True),
})
NEW_TOKEN = Object({**TOKEN.fields, "token": String(description="shown once, never again")})
TOKEN_REQUEST = Object({
    "name": String(min_length=1, max_length=100, description="what the token is for"),
    "site_id": Uuid(nullable=True, description="limit the token to this site"),
    "read_only": Boolean(description="GET requests only"),
    "expires": String(max_length=20, description="a duration such as 30d or 12w (at most a"
                      f" year), or never; default {DEFAULT_TOKEN_LIFETIME}"),
}, required=("name",))
SESSION = Object({
    "id": Uuid(),
    "current": Boolean(description="the session making this request"),
    "auth_method": String(choices=("password", "github", "magic_link", "setup")),
    "created_at": String(format="date-time"),
    "last_seen_at": String(format="date-time"),
    "expires_at": String(format="date-time"),
    "user_agent": String(nullable=True),
    "created_ip": String(nullable=True),
    "last_ip": String(nullable=True),
})
ME = Object({
    "id": Uuid(),
    "email": String(),
    "display_name": String(nullable=True),
    "admin": Boolean(description="global administrator"),
    "has_password": Boolean(),
    "github_login": String(nullable=True),
    "created_at": String(format="date-time"),
    "last_login_at": String(format="date-time", nullable=True),
    "via": String(choices=("session", "token")),
})


def token_json(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id, "name": token.name, "prefix": token.display_prefix,
        "site_id": token.site_id, "site": token.site_domain, "read_only": token.read_only,
        "created_at": token.created_at, "expires_at": token.expires_at,
        "last_used_at": token.last_used_at, "revoked_at": token.revoked_at,
    }


def session_json(session: SessionRecord, current: UUID | None) -> dict[str, Any]:
    return {
        "id": session.id, "current": session.id == current, "auth_method": session.auth_method,
        "created_at": session.created_at, "last_seen_at": session.last_seen_at,
        "expires_at": session.expires_at, "user_agent": session.user_agent,
        "created_ip": session.created_ip, "last_ip": session.last_ip,
    }


def parse_expiry(text: str | None) -> timedelta | None:
    """A token's lifetime: C{30d}, C{12w}, ... (at most a year), or C{never} (L{None})."""
    value = (text or DEFAULT_TOKEN_LIFETIME).strip().lower()
    if value == "never":
        return None
    if value == "forever":
        raise ValueError("use 'never' for a token that does not expire")
    try:
        lifetime = parse_duration(value)
    except InvalidValue as e:
        raise ValueError(str(e).replace("'forever'", "'never'")) from None
    if lifetime is not None and lifetime > MAX_TOKEN_LIFETIME:
        raise ValueError("a token lives at most a year (366d)")
    return lifetime


async def create_token(call: Call, name: str, site_id: UUID | None, read_only: bool,
                       expires: str | None) -> tuple[str, ApiToken]:
    """
    Create a token for the caller.

    @raise HttpError: 422 with the field at fault.
    """
    def invalid(field: str, message: str) -> HttpError:
        return HttpError("validation_failed", "Some fields are not valid.",
                         {"fields": [{"field": field, "code": "invalid", "message": message}]},
                         status=422)

    try:
        lifetime = parse_expiry(expires)
    except ValueError as e:
        raise invalid("expires", str(e)) from None
    try:
        return await call.services.accounts.create_token(call.user, name, site_id, read_only,
                                                         lifetime, call.user.id, call.client)
    except UserNotFound:
        raise invalid("site_id", "You are not a member of that site.") from None
    except SignInRefused as e:
        if e.status == 422:
            raise invalid("expires", e.message) from None
        raise


class AccountApi:
    def __init__(self, services: Services) -> None:
        self.services = services

    @route("GET", "/api/v1/me", access=user_read(), summary="The caller's account",
           responses=[Response(200, "the account", ME)])
    def me(self, call: Call) -> dict[str, Any]:
        user = call.user
        return {"id": user.id, "email": user.email, "display_name": user.display_name,
                "admin": user.is_admin, "has_password": user.has_password,
                "github_login": user.github_login, "created_at": user.created_at,
                "last_login_at": user.last_login_at,
                "via": "session" if call.session is not None else "token"}

    # -- tokens ---------------------------------------------------------------------

    @route("GET", "/api/v1/tokens", access=user_read(), query=paging.QUERY,
           summary="The caller's API tokens, newest first (revoked ones included)",
           responses=[Response(200, "a page of tokens", paging.page_of(TOKEN))])
    async def tokens(self, call: Call) -> dict[str, Any]:
        page = paging.Paging.from_query(call.query)
        after = page.after(datetime, UUID)
        rows = await call.services.store.api_tokens(call.user.id, after, page.fetch)
        return page.result(rows, key=lambda t: (t.created_at, t.id), item=token_json)

    @route("POST", "/api/v1/tokens", access=user_write(tokens=False), body=TOKEN_REQUEST,
           summary="Create an API token (its value is in this answer only)",
           responses=[Response(201, "the new token, with its value", NEW_TOKEN)])
    async def create(self, call: Call) -> Json:
        body = call.body or {}
        token, record = await create_token(call, body["name"], body.get("site_id"),
                                           body.get("read_only", False), body.get("expires"))
        return Json({**token_json(record), "token": token}, 201)

    @route("DELETE", "/api/v1/tokens/<uuid:token_id>", access=user_write(),
           summary="Revoke an API token (at once)",
           responses=[Response(200, "the revoked token", TOKEN)])
    async def revoke(self, call: Call) -> dict[str, Any]:
        revoked = await call.services.store.revoke_api_token(
            call.params["token_id"], call.user.id, call.now(), call.user.id, call.client.ip)
        if revoked is None:
            raise not_found()
        return token_json(revoked)

    # -- sessions -------------------------------------------------------------------

    @route("GET", "/api/v1/sessions", access=user_read(tokens=False),
           summary="The caller's live sessions, most recently used first",
           responses=[Response(200, "the sessions", Object({"items": Array(items=SESSION)}))])
    async def sessions(self, call: Call) -> dict[str, Any]:
        accounts = call.services.accounts
        rows = await accounts.store.sessions_of(call.user.id, call.now(), accounts.idle)
        current = None if call.session is None else call.session.id
        return {"items": [session_json(s, current) for s in rows]}

    @route("DELETE", "/api/v1/sessions/<uuid:session_id>", access=user_write(tokens=False),
           summary="End one of the caller's sessions (at once)",
           responses=[Response(204, "ended")])
    async def end_session(self, call: Call) -> Json:
        ended = await call.services.store.end_session(
            call.user.id, call.params["session_id"], "ended_by_user", call.user.id,
            call.client.ip)
        if not ended:
            raise not_found()
        return Json(None, 204)

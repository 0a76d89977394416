"""
Administration: the audit log (C{/api/v1/audit}, global administrators; a
site's own at C{/api/v1/sites/{id}/audit}, for its admins) and the users
(C{/api/v1/users}: list, add, disable, enable).

Adding a user needs no password: the new user signs in with an e-mail link
(or GitHub), or with the initial password an administrator gives.
Disabling a user ends its sessions, revokes its tokens and so ends its
live streams at once.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from veil.auth.emails import InvalidEmail, normalise_email
from veil.auth.passwords import WeakPassword
from veil.auth.store import LastAdministrator, User, UserExists
from veil.dashboard import paging
from veil.dashboard.schema import (
    Array,
    Boolean,
    Integer,
    Object,
    Response,
    String,
    Uuid,
)
from veil.dashboard.services import Services
from veil.dashboard.signin import PASSWORD
from veil.dashboard.web import (
    Call,
    HttpError,
    Json,
    admin_read,
    admin_write,
    invalid,
    missing,
    route,
    site_read,
)
from veil.store.admin import AuditEntry

AUDIT_ENTRY = Object({
    "id": Integer(), "ts": String(format="date-time"),
    "actor_id": Uuid(nullable=True), "actor": String(nullable=True, description="e-mail"),
    "action": String(), "target_type": String(nullable=True),
    "target_id": String(nullable=True), "detail": Object({}, open=True),
    "ip": String(nullable=True), "site_id": Uuid(nullable=True),
})
AUDIT_QUERY = Object({
    **paging.QUERY.fields,
    "action": String(max_length=100, description="a prefix: site., auth.sign_in, ..."),
    "actor": Uuid(description="a user's id"),
})
USER = Object({
    "id": Uuid(), "email": String(), "admin": Boolean(), "disabled": Boolean(),
    "has_password": Boolean(), "github_login": String(nullable=True),
    "created_at": String(format="date-time"),
    "last_login_at": String(format="date-time", nullable=True),
})
NEW_USER = Object({
    "email": String(max_length=254),
    "admin": Boolean(description="a global administrator"),
    "password": PASSWORD,
}, required=("email",))


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {"id": entry.id, "ts": entry.ts, "actor_id": entry.actor_id,
            "actor": entry.actor_email, "action": entry.action,
            "target_type": entry.target_type, "target_id": entry.target_id,
            "detail": entry.detail, "ip": entry.ip, "site_id": entry.site_id}


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "admin": user.is_admin,
            "disabled": user.disabled, "has_password": user.has_password,
            "github_login": user.github_login, "created_at": user.created_at,
            "last_login_at": user.last_login_at}


async def audit_page(call: Call, site_id: UUID | None) -> tuple[list[AuditEntry],
                                                                dict[str, Any]]:
    page = paging.Paging.from_query(call.query)
    after = page.after(int)
    rows = await call.services.audit_log.entries(
        site_id=site_id, before=None if after is None else after[0], limit=page.fetch,
        action=call.query.get("action") or None, actor=call.query.get("actor"))
    return rows, page.result(rows, key=lambda e: (e.id,), item=audit_json)


async def add_user(call: Call, email: str, admin: bool, password: str | None) -> User:
    """Create an account (audited); 422 naming the field, 409 for an existing address."""
    accounts = call.services.accounts
    try:
        address = normalise_email(email)
    except InvalidEmail as e:
        raise invalid("email", str(e)) from None
    hashed = None
    if password:
        try:
            accounts.rules.check(password, address)
        except WeakPassword as e:
            raise invalid("password", str(e)) from None
        hashed = await accounts.hasher.hash(password)
    try:
        return await accounts.store.create_user(address, hashed, admin, call.user.id,
                                                call.client.ip)
    except UserExists:
        raise HttpError("user_exists", "An account with that e-mail address exists already.",
                        {"fields": [{"field": "email", "code": "exists",
                                     "message": "An account with that address exists"
                                                " already."}]}, status=409) from None


async def set_disabled(call: Call, user_id: UUID, disabled: bool) -> User:
    """Disable (ending sessions, tokens and streams) or enable an account."""
    store = call.services.store
    found = await store.user_by_id(user_id)
    if found is None:
        raise missing("user")
    email = found[0].email
    if disabled:
        if user_id == call.user.id:
            raise HttpError("self", "You cannot disable your own account.", status=409)
        try:
            user, _ = await store.disable_user(email, call.user.id, call.now(), call.client.ip)
        except LastAdministrator as e:
            raise HttpError("last_administrator", str(e).capitalize() + ".",
                            status=409) from None
        live = call.services.live
        if live is not None:
            live.end_user(user.id)
        return user
    user, _ = await store.enable_user(email, call.user.id, call.client.ip)
    return user


class AdminApi:
    def __init__(self, services: Services) -> None:
        self.services = services

    @route("GET", "/api/v1/audit", access=admin_read(), query=AUDIT_QUERY,
           summary="The audit log, newest first",
           responses=[Response(200, "a page of entries", paging.page_of(AUDIT_ENTRY))])
    async def audit(self, call: Call) -> dict[str, Any]:
        _, result = await audit_page(call, None)
        return result

    @route("GET", "/api/v1/sites/<uuid:site_id>/audit", access=site_read("admin"),
           query=AUDIT_QUERY, summary="A site's own audit entries, newest first",
           responses=[Response(200, "a page of entries", paging.page_of(AUDIT_ENTRY))])
    async def site_audit(self, call: Call) -> dict[str, Any]:
        assert call.site is not None
        _, result = await audit_page(call, call.site.id)
        return result

    @route("GET", "/api/v1/users", access=admin_read(), summary="Every account, by address",
           responses=[Response(200, "the users", Object({"items": Array(items=USER)}))])
    async def users(self, call: Call) -> dict[str, Any]:
        return {"items": [user_json(u) for u in await self.services.store.list_users()]}

    @route("POST", "/api/v1/users", access=admin_write(), body=NEW_USER,
           summary="Add an account (it signs in with an e-mail link, GitHub, or the initial"
                   " password given here)",
           responses=[Response(201, "the account", USER), Response(409, "the address exists")])
    async def add(self, call: Call) -> Json:
        body = call.body or {}
        user = await add_user(call, body["email"], bool(body.get("admin")),
                              body.get("password") or None)
        return Json(user_json(user), 201)

    @route("POST", "/api/v1/users/<uuid:user_id>/disable", access=admin_write(),
           summary="Disable an account: its sessions, API tokens and live streams end at once",
           responses=[Response(200, "the account", USER)])
    async def disable(self, call: Call) -> dict[str, Any]:
        return user_json(await set_disabled(call, call.params["user_id"], True))

    @route("POST", "/api/v1/users/<uuid:user_id>/enable", access=admin_write(),
           summary="Enable a disabled account", responses=[Response(200, "the account", USER)])
    async def enable(self, call: Call) -> dict[str, Any]:
        return user_json(await set_disabled(call, call.params["user_id"], False))

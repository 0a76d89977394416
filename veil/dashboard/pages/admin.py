"""
Administration pages, for global administrators: the users (add, disable,
enable) and the audit log.
"""

from __future__ import annotations

from typing import Any

from veil.dashboard.api.admin import AUDIT_QUERY, add_user, audit_page, set_disabled
from veil.dashboard.pages.common import field_errors, form_errors, form_state
from veil.dashboard.schema import Object, String
from veil.dashboard.services import Services
from veil.dashboard.signin import PASSWORD
from veil.dashboard.web import (
    Call,
    Html,
    HttpError,
    Redirect,
    admin_read,
    admin_write,
    route,
)

USER_FORM = Object({"email": String(max_length=254), "admin": String(max_length=5),
                    "password": PASSWORD})
NOTICE_QUERY = Object({"done": String(max_length=20)})
DONE = {
    "added": "The account is created. It signs in with an e-mail link (or GitHub), or with"
             " the password you gave.",
    "disabled": "The account is disabled: its sessions, API tokens and live streams ended.",
    "enabled": "The account is enabled again.",
}


class AdminPages:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def _users(self, call: Call, status: int = 200, **context: Any) -> Html:
        users = await self.services.store.list_users()
        form_state(call, context, {"email": "", "admin": False}, DONE)
        return call.render("admin_users.html", status=status, users=users, **context)

    @route("GET", "/admin/users", access=admin_read(tokens=False), query=NOTICE_QUERY,
           summary="Every account: add, disable, enable")
    async def users(self, call: Call) -> Html:
        return await self._users(call)

    @route("POST", "/admin/users", access=admin_write(tokens=False), body=USER_FORM,
           summary="Add an account")
    async def add(self, call: Call) -> Html | Redirect:
        body = call.body or {}
        form = {"email": str(body.get("email") or ""),
                "admin": str(body.get("admin") or "") in ("on", "true", "1")}
        errors = form_errors(call)
        status = 422
        if not errors:
            try:
                await add_user(call, form["email"], form["admin"],
                               str(body.get("password") or "") or None)
            except HttpError as e:
                if e.status not in (409, 422):
                    raise
                errors, status = field_errors(e), e.status
        if errors:
            call.query = {}
            return await self._users(call, status, errors=errors, form=form, notice=None)
        return Redirect("/admin/users?done=added")

    @route("POST", "/admin/users/<uuid:user_id>/disable", access=admin_write(tokens=False),
           summary="Disable an account")
    async def disable(self, call: Call) -> Html | Redirect:
        try:
            await set_disabled(call, call.params["user_id"], True)
        except HttpError as e:
            if e.status != 409:
                raise
            call.query = {}
            return await self._users(call, 409, notice=None, errors={"(list)": e.message})
        return Redirect("/admin/users?done=disabled")

    @route("POST", "/admin/users/<uuid:user_id>/enable", access=admin_write(tokens=False),
           summary="Enable an account")
    async def enable(self, call: Call) -> Redirect:
        await set_disabled(call, call.params["user_id"], False)
        return Redirect("/admin/users?done=enabled")

    @route("GET", "/admin/audit", access=admin_read(tokens=False), query=AUDIT_QUERY,
           summary="The audit log: who did what, when, from where")
    async def audit(self, call: Call) -> Html:
        rows, result = await audit_page(call, None)
        filters = {k: str(v) for k, v in call.query.items() if k in ("action", "actor") and v}
        return call.render("admin_audit.html", entries=rows[:len(result["items"])],
                           next_cursor=result["next_cursor"], filters=filters)

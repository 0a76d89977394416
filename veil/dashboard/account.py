"""
The account page (C{/account}): sessions, API tokens and the password.

Every change is a form POST with the session's CSRF token, and ends in a
redirect back (C{?done=...} picks a fixed message) except creating a
token, whose value is shown once on the page that answers the POST.
"""

from __future__ import annotations

from typing import Any

from veil.auth.accounts import SignInRefused
from veil.auth.passwords import WeakPassword
from veil.dashboard.api.account import create_token
from veil.dashboard.schema import Boolean, Object, String, Uuid
from veil.dashboard.services import Services
from veil.dashboard.signin import PASSWORD
from veil.dashboard.web import (
    Call,
    Html,
    HttpError,
    Redirect,
    not_found,
    route,
    user_read,
    user_write,
)

DONE = {
    "session_ended": "The session is signed out.",
    "others_ended": "Every other session is signed out.",
    "token_revoked": "The token is revoked: it stops working at once.",
    "password_changed": "Your password is changed.",
}
EXPIRY_CHOICES = (("30d", "30 days"), ("90d", "90 days"), ("365d", "1 year"),
                  ("never", "Never (not recommended)"))

PASSWORD_CHANGE = Object({"current": PASSWORD, "new": PASSWORD, "confirm": PASSWORD,
                          "end_others": Boolean()}, required=("new", "confirm"))
TOKEN_FORM = Object({"name": String(min_length=1, max_length=100), "site_id": Uuid(),
                     "read_only": Boolean(),
                     "expires": String(choices=tuple(c for c, _ in EXPIRY_CHOICES))},
                    required=("name", "expires"))
QUERY = Object({"done": String(max_length=40)})


class AccountPages:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def _page(self, call: Call, status: int = 200, **context: Any) -> Html:
        accounts = self.services.accounts
        user = call.user
        sessions = await accounts.store.sessions_of(user.id, call.now(), accounts.idle)
        tokens = [t for t in await accounts.store.api_tokens(user.id)
                  if t.revoked_at is None]
        sites = await accounts.store.sites_of(user.id, user.is_admin, None, None, 500)
        context.setdefault("notice", None)
        context.setdefault("new_token", None)
        context.setdefault("password_error", None)
        context.setdefault("token_error", None)
        context.setdefault("token_form", {"name": "", "site_id": "", "read_only": False,
                                          "expires": "90d"})
        auth = self.services.config.auth
        return call.render("account.html", status=status, sessions=sessions, tokens=tokens,
                           idle_minutes=int(auth.session_idle_timeout // 60),
                           lifetime_hours=f"{auth.session_lifetime / 3600:g}",
                           sites=sites, current_session=call.session.id if call.session else None,
                           expiry_choices=EXPIRY_CHOICES, now=call.now(), **context)

    @route("GET", "/account", access=user_read(tokens=False), query=QUERY,
           summary="Your account: sessions, API tokens, password")
    async def account(self, call: Call) -> Html:
        return await self._page(call, notice=DONE.get(call.query.get("done", "")))

    @route("POST", "/account/sessions/<uuid:session_id>/end", access=user_write(tokens=False),
           summary="Sign out one of your sessions")
    async def end_session(self, call: Call) -> Redirect:
        session_id = call.params["session_id"]
        ended = await self.services.store.end_session(call.user.id, session_id,
                                                      "ended_by_user", call.user.id,
                                                      call.client.ip)
        if not ended:
            raise not_found()
        if call.session is not None and session_id == call.session.id:
            call.forget_session()
            return Redirect("/login?notice=signed_out")
        return Redirect("/account?done=session_ended")

    @route("POST", "/account/sessions/end-others", access=user_write(tokens=False),
           summary="Sign out every other session of yours")
    async def end_others(self, call: Call) -> Redirect:
        keep = None if call.session is None else call.session.id
        await self.services.store.end_other_sessions(call.user.id, keep, call.client.ip)
        return Redirect("/account?done=others_ended")

    @route("POST", "/account/password", access=user_write(tokens=False), body=PASSWORD_CHANGE,
           summary="Change your password")
    async def password(self, call: Call) -> Html | Redirect:
        body = call.body or {}
        if call.invalid is not None:
            return await self._page(call, 422, password_error="Fill in the new password twice.")
        if body["new"] != body["confirm"]:
            return await self._page(call, 422, password_error="The two new passwords differ.")
        assert call.session is not None
        try:
            await self.services.accounts.change_password(
                call.session, body.get("current"), body["new"], body.get("end_others", False),
                call.client)
        except (SignInRefused, WeakPassword) as e:
            status = e.status if isinstance(e, SignInRefused) else 422
            return await self._page(call, status, password_error=str(e))
        return Redirect("/account?done=password_changed")

    @route("POST", "/account/tokens", access=user_write(tokens=False), body=TOKEN_FORM,
           summary="Create an API token (shown once)")
    async def create_token(self, call: Call) -> Html:
        body = call.body or {}
        form = {"name": body.get("name", ""), "site_id": str(body.get("site_id") or ""),
                "read_only": bool(body.get("read_only")), "expires": body.get("expires", "90d")}
        if call.invalid is not None:
            return await self._page(call, 422, token_form=form,
                                    token_error="Give the token a name and an expiry.")
        try:
            token, record = await create_token(call, body["name"], body.get("site_id"),
                                               body.get("read_only", False), body["expires"])
        except HttpError as e:
            fields = (e.detail or {}).get("fields") or [{"message": e.message}]
            return await self._page(call, e.status, token_form=form,
                                    token_error=fields[0]["message"])
        return await self._page(call, 201, new_token={"value": token, "record": record})

    @route("POST", "/account/tokens/<uuid:token_id>/revoke", access=user_write(tokens=False),
           summary="Revoke one of your API tokens")
    async def revoke_token(self, call: Call) -> Redirect:
        revoked = await self.services.store.revoke_api_token(
            call.params["token_id"], call.user.id, call.now(), call.user.id, call.client.ip)
        if revoked is None:
            raise not_found()
        return Redirect("/account?done=token_revoked")

"""
A site's members and invitations, and the page an invitation link opens.

The invitation page (C{/invitations/accept?token=…}) consumes nothing when
it is opened (mail scanners follow links): accepting is a POST.  Signed in
with the invited address, one click joins the site; without an account for
that address, the page creates one (the link proves the mailbox, as an
e-mail sign-in link does) and signs it in.
"""

from __future__ import annotations

from typing import Any

from veil.auth import ratelimit
from veil.auth.credentials import digest, looks_like_secret
from veil.auth.passwords import WeakPassword
from veil.auth.store import InvitationUnavailable, UserExists
from veil.dashboard.api.members import (
    GRANTABLE,
    invitation_json,
    invite,
    remove_member,
    revoke_invitation,
    set_role,
)
from veil.dashboard.pages.common import (
    attempt,
    form_errors,
    form_fields,
    form_state,
    render_site,
)
from veil.dashboard.schema import Object, String
from veil.dashboard.services import Services
from veil.dashboard.signin import PASSWORD, TOKEN, TOKEN_QUERY
from veil.dashboard.web import (
    ANONYMOUS,
    Call,
    Html,
    HttpError,
    Principal,
    Redirect,
    route,
    site_read,
    site_write,
    user_write,
)

INVITE_FORM = Object({"email": String(max_length=254), "role": String(max_length=10)})
ROLE_FORM = Object({"role": String(max_length=10)}, required=("role",))
ACCEPT_FORM = Object({"token": TOKEN}, required=("token",))
JOIN_FORM = Object({"token": TOKEN, "password": PASSWORD, "password_confirm": PASSWORD},
                   required=("token", "password", "password_confirm"))
NOTICE_QUERY = Object({"done": String(max_length=20)})
DONE = {
    "invited": "The invitation is sent. It works for 7 days.",
    "not_sent": "The invitation is made, but the mail could not be sent: withdraw it and try"
                " again later.",
    "role": "The role is changed: it applies at once.",
    "removed": "The member is removed: its access ends at once.",
    "revoked": "The invitation is withdrawn: its link no longer works.",
}
#: The invitation form as the page first shows it.
INVITE_BLANK = {"email": "", "role": "viewer"}
ROLE_HELP = {"owner": "everything, and the members", "admin": "settings, decisions and WAF",
             "viewer": "traffic, decisions and WAF, read only"}


class MemberPages:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def _page(self, call: Call, status: int = 200, **context: Any) -> Html:
        site = call.site
        assert site is not None
        members = await self.services.store.members(site.id)
        invitations = []
        if site.role == "owner":
            invitations = [invitation_json(i, call)
                           for i in await self.services.store.invitations(site.id, call.now())]
        form_state(call, context, INVITE_BLANK, DONE)
        return await render_site(call, "site_members.html", "members", status=status,
                                 members=members, invitations=invitations, roles=GRANTABLE,
                                 role_help=ROLE_HELP, **context)

    @route("GET", "/sites/<uuid:site_id>/members", access=site_read("admin"),
           query=NOTICE_QUERY, summary="A site's members and invitations")
    async def members(self, call: Call) -> Html:
        return await self._page(call)

    @route("POST", "/sites/<uuid:site_id>/invitations", access=site_write("owner"),
           body=INVITE_FORM, summary="Invite someone to the site by e-mail")
    async def invite(self, call: Call) -> Html | Redirect:
        assert call.site is not None
        body = form_fields(call)
        errors = form_errors(call)
        if body.get("role") not in GRANTABLE:
            errors["role"] = "Choose admin or viewer."
        if not errors:
            made, errors = await attempt(invite(call, body.get("email", ""), body["role"]),
                                         (422, 429))
            if made is not None:
                done = "invited" if made[1] else "not_sent"
                return Redirect(f"/sites/{call.site.id}/members?done={done}")
        call.query = {}
        return await self._page(call, 422, errors=errors, form={**INVITE_BLANK, **body},
                                notice=None)

    @route("POST", "/sites/<uuid:site_id>/members/<uuid:user_id>/role",
           access=site_write("owner"), body=ROLE_FORM, summary="Change a member's role")
    async def role(self, call: Call) -> Redirect:
        assert call.site is not None
        role = str((call.body or {}).get("role", ""))
        if role not in GRANTABLE:
            raise HttpError("validation_failed", "Choose admin or viewer.", status=422)
        await set_role(call, call.params["user_id"], role)
        return Redirect(f"/sites/{call.site.id}/members?done=role")

    @route("POST", "/sites/<uuid:site_id>/members/<uuid:user_id>/remove",
           access=site_write("owner"), summary="Remove a member from the site")
    async def remove(self, call: Call) -> Redirect:
        assert call.site is not None
        await remove_member(call, call.params["user_id"])
        return Redirect(f"/sites/{call.site.id}/members?done=removed")

    @route("POST", "/sites/<uuid:site_id>/invitations/<uuid:invitation_id>/revoke",
           access=site_write("owner"), summary="Withdraw an invitation")
    async def revoke(self, call: Call) -> Redirect:
        assert call.site is not None
        await revoke_invitation(call, call.params["invitation_id"])
        return Redirect(f"/sites/{call.site.id}/members?done=revoked")

    # -- the invitation link ------------------------------------------------------------

    async def _invitation_page(self, call: Call, token: str, status: int = 200,
                               error: str | None = None, errors: dict[str, str] | None = None
                               ) -> Html:
        accounts = self.services.accounts
        invitation = None
        if looks_like_secret(token):
            invitation = await accounts.store.invitation(digest(token))
        state = "unknown" if invitation is None else invitation.state(call.now())
        session = await accounts.session(call.session_cookie, call.client, touch=False)
        if session is not None:
            call.principal = Principal(session.user, session=session)
        mode = "closed"
        account_exists = False
        if state == "open":
            assert invitation is not None
            if session is not None:
                same = session.user.email.casefold() == invitation.email.casefold()
                mode = "accept" if same else "other_account"
            else:
                account_exists = await accounts.store.user_by_email(invitation.email) is not None
                mode = "sign_in" if account_exists else "create"
        return call.render("invitation.html", status=status if state == "open" else 400,
                           invitation=invitation, state=state, mode=mode, token=token,
                           error=error, errors=errors or {},
                           next=f"/invitations/accept?token={token}")

    @route("GET", "/invitations/accept", access=ANONYMOUS, pre_session=True, query=TOKEN_QUERY,
           referrer="no-referrer",
           summary="The page an invitation link opens (asks for a click; consumes nothing)")
    async def invitation(self, call: Call) -> Html:
        return await self._invitation_page(call, call.query.get("token", ""))

    async def _limit(self, call: Call) -> None:
        accounts = self.services.accounts
        wait = await accounts.limiter.hit(ratelimit.LINK_USE_IP,
                                          ratelimit.ip_bucket(call.client.ip or "-"), call.now())
        if wait is not None:
            raise HttpError("rate_limited", "Too many attempts. Wait a little, then try again.",
                            status=429, headers={"Retry-After": str(max(1, int(wait) + 1))})

    @route("POST", "/invitations/accept", access=user_write(tokens=False), body=ACCEPT_FORM,
           referrer="no-referrer", summary="Accept an invitation, signed in with its address")
    async def accept(self, call: Call) -> Html | Redirect:
        token = str((call.body or {}).get("token", ""))
        await self._limit(call)
        try:
            invitation = await self.services.store.accept_invitation(
                digest(token) if looks_like_secret(token) else b"\0" * 32, call.user.id,
                call.now(), call.client.ip)
        except InvitationUnavailable as e:
            return await self._invitation_page(call, token, 400, error=str(e))
        return Redirect(f"/sites/{invitation.site_id}")

    @route("POST", "/invitations/join", access=ANONYMOUS, pre_session=True, body=JOIN_FORM,
           referrer="no-referrer",
           summary="Accept an invitation by creating the invited address's account")
    async def join(self, call: Call) -> Html | Redirect:
        body = call.body or {}
        token = str(body.get("token", ""))
        if call.invalid is not None:
            return await self._invitation_page(call, token, 422,
                                               errors={"password": "Fill in both fields."})
        if body["password"] != body["password_confirm"]:
            return await self._invitation_page(call, token, 422, errors={
                "password_confirm": "The two passwords differ."})
        await self._limit(call)
        accounts = self.services.accounts
        if not looks_like_secret(token):
            return await self._invitation_page(call, token, 400)
        invitation = await accounts.store.invitation(digest(token))
        if invitation is None:
            return await self._invitation_page(call, token, 400)
        try:
            accounts.rules.check(body["password"], invitation.email)
        except WeakPassword as e:
            return await self._invitation_page(call, token, 422, errors={"password": str(e)})
        hashed = await accounts.hasher.hash(body["password"])
        try:
            invitation, user = await accounts.store.accept_as_new_user(
                digest(token), hashed, call.now(), call.client.ip)
        except InvitationUnavailable as e:
            return await self._invitation_page(call, token, 400, error=str(e))
        except UserExists:
            return await self._invitation_page(
                call, token, 409, error="An account with this address exists already: sign"
                                        " in to accept the invitation.")
        grant = await accounts.grant(user, "password", call.client,
                                     replaces=call.session_cookie)
        call.sign_in(grant)
        return Redirect(f"/sites/{invitation.site_id}")

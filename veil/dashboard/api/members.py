"""
A site's members and invitations: C{/api/v1/sites/{id}/members} and
C{/api/v1/sites/{id}/invitations}.

Owners invite people by e-mail: the invitation is stored with its token
hashed and a link goes out by mail (L{veil.mail}); the invitee opens it
and accepts signed in with that address, or creates an account for it
there (the link proves the mailbox; L{veil.dashboard.invitations}).  Role
changes, removals and invitations are audited.  The owner's own role is
fixed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from uuid import UUID

from twisted.logger import Logger

from veil.auth.credentials import digest, new_secret
from veil.auth.emails import InvalidEmail, normalise_email
from veil.auth.ratelimit import Limit, Tier
from veil.auth.store import (
    AlreadyMember,
    Invitation,
    Member,
    MemberNotFound,
    OwnerMembership,
)
from veil.dashboard.api.sites import limit
from veil.dashboard.schema import Array, Boolean, Object, Response, String, Uuid
from veil.dashboard.services import Services
from veil.dashboard.web import (
    Call,
    HttpError,
    Json,
    invalid,
    missing,
    not_found,
    route,
    site_read,
    site_write,
)
from veil.errors import VeilError
from veil.mail import compose

_log = Logger()

#: How long an invitation link works.
INVITATION_LIFETIME = timedelta(days=7)
#: Invitations an owner may send: 10 at once, then one a minute.
INVITATIONS = Limit("invitations", (Tier(10, 60.0),))
#: Roles an invitation or a role change may give (one owner per site).
GRANTABLE = ("admin", "viewer")

MEMBER = Object({
    "user_id": Uuid(),
    "email": String(),
    "display_name": String(nullable=True),
    "role": String(choices=("owner", *GRANTABLE)),
    "owner": Boolean(description="the site's owner (its role cannot change)"),
    "disabled": Boolean(description="the account is disabled"),
    "since": String(format="date-time"),
})
INVITATION = Object({
    "id": Uuid(),
    "email": String(),
    "role": String(choices=GRANTABLE),
    "invited_by": String(nullable=True),
    "created_at": String(format="date-time"),
    "expires_at": String(format="date-time"),
    "state": String(choices=("open", "expired", "accepted", "revoked")),
})
NEW_INVITATION = Object({
    "email": String(max_length=254, description="who to invite"),
    "role": String(choices=GRANTABLE, description="admin: may change settings; viewer: may"
                   " look"),
}, required=("email", "role"))
ROLE = Object({"role": String(choices=GRANTABLE)}, required=("role",))


def member_json(member: Member) -> dict[str, Any]:
    return {"user_id": member.user_id, "email": member.email,
            "display_name": member.display_name, "role": member.role,
            "owner": member.is_owner, "disabled": member.disabled, "since": member.created_at}


def invitation_json(invitation: Invitation, call: Call) -> dict[str, Any]:
    return {"id": invitation.id, "email": invitation.email, "role": invitation.role,
            "invited_by": invitation.invited_by, "created_at": invitation.created_at,
            "expires_at": invitation.expires_at, "state": invitation.state(call.now())}


async def invite(call: Call, email: str, role: str) -> tuple[Invitation, bool]:
    """
    Invite C{email} to the call's site with C{role} and mail the link;
    fires with the invitation and whether the mail went out.

    @raise HttpError: 422 for a bad address or a member's, 429 beyond the limit.
    """
    site = call.site
    assert site is not None
    accounts = call.services.accounts
    try:
        address = normalise_email(email)
    except InvalidEmail as e:
        raise invalid("email", str(e)) from None
    await limit(call, INVITATIONS, "invitations")
    token = new_secret()
    now = call.now()
    try:
        invitation = await accounts.store.create_invitation(
            site.id, address, role, digest(token), call.user.id, now, now + INVITATION_LIFETIME,
            call.client.ip)
    except AlreadyMember as e:
        raise invalid("email", str(e).capitalize() + ".", code="member") from None
    except MemberNotFound:
        raise not_found() from None
    link = f"{accounts.public_url}/invitations/accept?token={token}"
    what = {"admin": "manage", "viewer": "see the traffic of"}[role]
    text = (
        "Hello,\n\n"
        f"{call.user.email} invited you to {what} {site.domain} on Veil, as {role}.\n"
        "To accept, open this link within 7 days:\n\n"
        f"{link}\n\n"
        "You accept it signed in with this e-mail address; if you have no Veil account yet,\n"
        "you can create one there. If you did not expect this, ignore this message.\n"
    )
    try:
        await accounts.mailer.send(compose(accounts.sender, address,
                                           f"Invitation to {site.domain} on Veil", text,
                                           call.services.clock.seconds()))
    except VeilError as e:
        _log.warn("Sending invitation {invitation_id} failed: {error}",
                  invitation_id=str(invitation.id), error=str(e))
        return invitation, False
    _log.info("Invitation {invitation_id} to site {site_id} sent",
              invitation_id=str(invitation.id), site_id=str(site.id))
    return invitation, True


@contextmanager
def _membership_errors() -> Iterator[None]:
    """A change to a membership: no such member is a 404, the owner's own a 409."""
    try:
        yield
    except MemberNotFound:
        raise missing("member") from None
    except OwnerMembership as e:
        raise HttpError("owner_role", str(e).capitalize() + ".", status=409) from None


async def set_role(call: Call, user_id: UUID, role: str) -> Member:
    site = call.site
    assert site is not None
    with _membership_errors():
        return await call.services.store.set_role(site.id, user_id, role, call.user.id,
                                                  call.client.ip)


async def remove_member(call: Call, user_id: UUID) -> Member:
    site = call.site
    assert site is not None
    with _membership_errors():
        return await call.services.store.remove_member(site.id, user_id, call.user.id,
                                                       call.client.ip)


async def revoke_invitation(call: Call, invitation_id: UUID) -> Invitation:
    site = call.site
    assert site is not None
    try:
        return await call.services.store.revoke_invitation(site.id, invitation_id, call.user.id,
                                                           call.now(), call.client.ip)
    except MemberNotFound:
        raise missing("invitation") from None


class MembersApi:
    def __init__(self, services: Services) -> None:
        self.services = services

    @route("GET", "/api/v1/sites/<uuid:site_id>/members", access=site_read("admin"),
           summary="A site's members: the owner, then admins and viewers",
           responses=[Response(200, "the members", Object({"items": Array(items=MEMBER)}))])
    async def members(self, call: Call) -> dict[str, Any]:
        assert call.site is not None
        rows = await self.services.store.members(call.site.id)
        return {"items": [member_json(m) for m in rows]}

    @route("PATCH", "/api/v1/sites/<uuid:site_id>/members/<uuid:user_id>",
           access=site_write("owner"), body=ROLE, summary="Change a member's role (audited)",
           responses=[Response(200, "the member", MEMBER),
                      Response(409, "the owner's role cannot change")])
    async def change_role(self, call: Call) -> dict[str, Any]:
        body = call.body or {}
        return member_json(await set_role(call, call.params["user_id"], body["role"]))

    @route("DELETE", "/api/v1/sites/<uuid:site_id>/members/<uuid:user_id>",
           access=site_write("owner"),
           summary="Remove a member (its API tokens limited to the site are revoked)",
           responses=[Response(204, "removed"), Response(409, "the owner cannot be removed")])
    async def remove(self, call: Call) -> Json:
        await remove_member(call, call.params["user_id"])
        return Json(None, 204)

    @route("GET", "/api/v1/sites/<uuid:site_id>/invitations", access=site_read("owner"),
           summary="A site's invitations not yet accepted (expired ones included)",
           responses=[Response(200, "the invitations",
                               Object({"items": Array(items=INVITATION)}))])
    async def invitations(self, call: Call) -> dict[str, Any]:
        assert call.site is not None
        rows = await self.services.store.invitations(call.site.id, call.now())
        return {"items": [invitation_json(i, call) for i in rows]}

    @route("POST", "/api/v1/sites/<uuid:site_id>/invitations", access=site_write("owner"),
           body=NEW_INVITATION,
           summary="Invite someone by e-mail (a new invitation replaces an open one for the"
                   " same address)",
           responses=[Response(201, "the invitation; mail_sent says whether the mail went out",
                               Object({**INVITATION.fields, "mail_sent": Boolean()}))])
    async def invite(self, call: Call) -> Json:
        body = call.body or {}
        invitation, sent = await invite(call, body["email"], body["role"])
        return Json({**invitation_json(invitation, call), "mail_sent": sent}, 201)

    @route("DELETE", "/api/v1/sites/<uuid:site_id>/invitations/<uuid:invitation_id>",
           access=site_write("owner"), summary="Withdraw an invitation",
           responses=[Response(204, "withdrawn")])
    async def revoke(self, call: Call) -> Json:
        await revoke_invitation(call, call.params["invitation_id"])
        return Json(None, 204)

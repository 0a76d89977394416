"""
C{/api/v1/sites} (the caller's sites) and the caller's membership of one.

The sites API proper (create, read, settings, verify, delete) extends this
module; the list here is what the home page shows too.
"""

from __future__ import annotations

from typing import Any

from veil.auth.store import SiteSummary
from veil.dashboard import paging
from veil.dashboard.schema import Boolean, Object, Response, String, Uuid
from veil.dashboard.services import Services
from veil.dashboard.web import ROLES, Call, route, site_read, user_read

SITE_SUMMARY = Object({
    "id": Uuid(),
    "domain": String(),
    "status": String(choices=("pending", "active", "ssl_provisioning", "live", "error",
                              "disabled")),
    "mode": String(choices=("block", "monitor")),
    "role": String(choices=ROLES, nullable=True,
                   description="the caller's role; null for an administrator who is not a"
                               " member"),
    "created_at": String(format="date-time"),
})
MEMBERSHIP = Object({
    "site_id": Uuid(),
    "domain": String(),
    "role": String(choices=ROLES, description="effective role (owner for administrators)"),
    "can_write": Boolean(description="may change the site's settings"),
    "can_manage_members": Boolean(),
})


def site_json(site: SiteSummary) -> dict[str, Any]:
    return {"id": site.id, "domain": site.domain, "status": site.status, "mode": site.mode,
            "role": site.role, "created_at": site.created_at}


async def sites_page(call: Call, page: paging.Paging) -> tuple[list[SiteSummary], dict[str, Any]]:
    """The caller's sites (every site for an administrator), by domain, one page."""
    principal = call.principal
    assert principal is not None
    only = None if principal.token is None else principal.token.site_id
    after = page.after(str)
    rows = await call.services.store.sites_of(principal.user.id, principal.user.is_admin, only,
                                              None if after is None else after[0], page.fetch)
    return rows, page.result(rows, key=lambda s: (s.domain,), item=site_json)


class SitesApi:
    def __init__(self, services: Services) -> None:
        self.services = services

    @route("GET", "/api/v1/sites", access=user_read(), query=paging.QUERY,
           summary="The caller's sites, by domain (a token limited to one site sees that one)",
           responses=[Response(200, "a page of sites", paging.page_of(SITE_SUMMARY))])
    async def sites(self, call: Call) -> dict[str, Any]:
        _, result = await sites_page(call, paging.Paging.from_query(call.query))
        return result

    @route("GET", "/api/v1/sites/<uuid:site_id>/membership", access=site_read("viewer"),
           summary="The caller's role on a site and what it allows",
           responses=[Response(200, "the membership", MEMBERSHIP)])
    def membership(self, call: Call) -> dict[str, Any]:
        site = call.site
        assert site is not None and site.role is not None
        rank = ROLES.index(site.role)
        return {"site_id": site.id, "domain": site.domain, "role": site.role,
                "can_write": rank >= ROLES.index("admin"),
                "can_manage_members": rank >= ROLES.index("owner")}

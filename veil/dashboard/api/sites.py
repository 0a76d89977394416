"""
C{/api/v1/sites}: the caller's sites, adding one by DNS, its state and
settings, "Check now", and removing it.

Adding a site (C{POST /api/v1/sites}) validates the domain as C{veil sites
add} does, proposes the origin from the domain's DNS today when none is
given (L{veil.workers.dns.DnsVerifier.propose_origin}), refuses origins the
operator's policy forbids (L{veil.proxy.origins.OriginPolicy}) and answers
201 with the site and the DNS records to create.  The site is C{pending}
until its DNS points at Veil and carries its token; the DNS worker checks
by itself, and C{POST /api/v1/sites/{id}/verify} checks at once.
"""

from __future__ import annotations

import math
from typing import Any
from uuid import UUID

from veil.auth.ratelimit import Limit, Tier
from veil.auth.store import SiteSummary
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
from veil.dashboard.web import (
    ROLES,
    Call,
    HttpError,
    Json,
    invalid,
    not_found,
    route,
    site_read,
    site_write,
    user_read,
    user_write,
)
from veil.store.admin import (
    InvalidValue,
    SiteDetail,
    SiteExists,
    SiteNotFound,
    normalise_domain,
    normalise_upstream,
)
from veil.store.dns import CheckTooSoon
from veil.store.site_limits import MAX_BODY_SIZE_RANGE
from veil.waf.policy import (
    BODY_OVERFLOW,
    MAX_INSPECT_BODY_LIMIT,
    MODES,
    STRICTEST_PARANOIA,
)

#: Sites a user may add: 20 at once, then one a minute.
SITE_CREATION = Limit("site-create", (Tier(20, 60.0),))

STATUSES = ("pending", "active", "ssl_provisioning", "live", "error", "disabled")

SITE_SUMMARY = Object({
    "id": Uuid(),
    "domain": String(),
    "status": String(choices=STATUSES),
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
RECORD = Object({"type": String(choices=("CNAME", "A", "AAAA", "TXT")), "name": String(),
                 "value": String()})
DNS = Object({
    "records": Array(items=RECORD, description="the records to create: the CNAME to Veil's"
                     " host name (or A/AAAA for an apex) and the TXT ownership token"),
    "apex_records": Array(items=RECORD, description="address records that replace the CNAME"
                          " when the domain is a zone apex"),
    "proxy_cname": String(nullable=True, description="the host name sites point at"),
    "proxy_addresses": Array(items=String()),
    "apex": Boolean(nullable=True),
    "token": String(description="the value of TXT _veil.<domain>"),
    "missing": Array(items=String(), description="the operator's settings that are not set"
                     " (the site cannot be verified until they are)"),
})
REPORT = Object({}, open=True, nullable=True,
                description="the last check's report (docs/onboarding.md: domain, checked_at,"
                            " ok, apex, summary, resolvers, records, notes)")
VERIFICATION = Object({
    "started_at": String(format="date-time", nullable=True),
    "attempts": Integer(description="checks in this round"),
    "last_checked_at": String(format="date-time", nullable=True),
    "next_check_at": String(format="date-time", nullable=True,
                            description="when the DNS worker checks again (null: it will not)"),
    "gave_up_at": String(format="date-time", nullable=True),
    "last_report": REPORT,
})
SETTINGS_FIELDS = {
    "origin": String(max_length=300, description="scheme://host[:port] of the site's server"),
    "mode": String(choices=MODES, description="block attacks, or only log them"),
    "paranoia": Integer(minimum=1, maximum=STRICTEST_PARANOIA,
                        description="1 (fewest false positives) to 4 (strictest)"),
    "threshold": Integer(minimum=1, maximum=1000,
                         description="anomaly score at which a request is malicious"),
    "inspect_body_limit": Integer(minimum=0, maximum=MAX_INSPECT_BODY_LIMIT, nullable=True,
                                  description="bytes of a body inspected (null: Veil's"
                                              " default)"),
    "body_overflow": String(choices=BODY_OVERFLOW,
                            description="a body over the limit: inspect its start, or block"),
    "allow_plain_http": Boolean(description="serve plain HTTP instead of redirecting to"
                                            " HTTPS"),
    "origin_tls_verify": Boolean(description="check the origin's certificate (https origins)"),
    "maintenance": Boolean(description="answer every request with the maintenance page"),
    "max_body_size": Integer(minimum=MAX_BODY_SIZE_RANGE[0], maximum=MAX_BODY_SIZE_RANGE[1],
                             description="request bodies larger than this are refused (413)"),
    "allow_trace": Boolean(description="forward TRACE requests (else 405)"),
}
SETTINGS = Object(SETTINGS_FIELDS)
SITE = Object({
    "id": Uuid(),
    "domain": String(),
    "status": String(choices=STATUSES),
    "status_detail": String(nullable=True, description="why the status is what it is"),
    "role": String(choices=ROLES, description="the caller's effective role"),
    **SETTINGS_FIELDS,
    "inspect_body_limit": Integer(nullable=True),
    "created_at": String(format="date-time"),
    "updated_at": String(format="date-time"),
    "dns_verified_at": String(format="date-time", nullable=True),
    "dns": DNS,
    "verification": VERIFICATION,
    "timeline": Array(items=Object({"status": String(choices=STATUSES),
                                    "detail": String(nullable=True),
                                    "at": String(format="date-time")}),
                      description="the statuses the site has been in, oldest first"),
    "certificate": Object({"issuer": String(), "serial": String(),
                           "not_before": String(format="date-time"),
                           "not_after": String(format="date-time"),
                           "first_issued_at": String(format="date-time")},
                          nullable=True, description="the newest valid certificate"),
    "origin_proposal": Object({}, open=True, nullable=True,
                              description="on creation without an origin: what DNS showed"
                                          " and why this origin"),
})
NEW_SITE = Object({
    "domain": String(max_length=1100, description="the host name to protect, e.g."
                     " shop.example.com"),
    "origin": String(max_length=300, nullable=True,
                     description="scheme://host[:port] of the site's server; omitted: proposed"
                                 " from the domain's DNS today"),
}, required=("domain",))
CHECK = Object({
    "status": String(choices=STATUSES, description="the site's status after the check"),
    "changed": Boolean(),
    "attempts": Integer(),
    "next_check_at": String(format="date-time", nullable=True),
    "report": REPORT,
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


def settings_of(site: SiteDetail) -> dict[str, Any]:
    """A site's settings, named as the API names them."""
    return {
        "origin": site.upstream, "mode": site.mode, "paranoia": site.paranoia,
        "threshold": site.threshold, "inspect_body_limit": site.inspect_body_limit,
        "body_overflow": site.body_overflow, "allow_plain_http": site.allow_plain_http,
        "origin_tls_verify": site.origin_tls_verify, "maintenance": site.maintenance,
        "max_body_size": site.max_body_size, "allow_trace": site.allow_trace,
    }


async def site_document(call: Call, site_id: UUID, apex: bool | None = None) -> dict[str, Any]:
    """
    The site as C{GET /api/v1/sites/{id}} gives it: settings, DNS
    instructions and verification state, status history, certificate.
    """
    services = call.services
    site = await services.sites.detail(site_id)
    if site is None:
        raise not_found()
    dns = services.need("dns")
    state = await dns.state(site_id)
    report = None if state is None else state.last_report
    if apex is None and report is not None:
        apex = report.get("apex")
    instructions = dns.instructions(site.domain, site.dns_token, apex)
    cert = site.certificate
    return {
        "id": site.id, "domain": site.domain, "status": site.status,
        "status_detail": site.status_detail,
        "role": call.site.role if call.site is not None else "owner",
        **settings_of(site),
        "created_at": site.created_at, "updated_at": site.updated_at,
        "dns_verified_at": site.dns_verified_at,
        "dns": {**instructions, "token": site.dns_token},
        "verification": {
            "started_at": None if state is None else state.started_at,
            "attempts": 0 if state is None else state.attempts,
            "last_checked_at": None if state is None else state.last_checked_at,
            "next_check_at": None if state is None else state.next_check_at,
            "gave_up_at": None if state is None else state.gave_up_at,
            "last_report": report,
        },
        "timeline": [{"status": c.status, "detail": c.detail, "at": c.at} for c in site.history],
        "certificate": None if cert is None else {
            "issuer": cert.issuer, "serial": cert.serial, "not_before": cert.not_before,
            "not_after": cert.not_after, "first_issued_at": cert.first_issued_at},
        "origin_proposal": None,
    }


async def limit(call: Call, rule: Limit, what: str) -> None:
    """Charge the caller's bucket of C{rule}; 429 with C{Retry-After} beyond it."""
    limiter = call.services.accounts.limiter
    wait = await limiter.hit(rule, str(call.user.id), call.now())
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        raise HttpError("rate_limited", f"Too many {what} at once; try again in {seconds} s.",
                        {"retry_after": seconds}, status=429,
                        headers={"Retry-After": str(seconds)})


async def create_site(call: Call, domain: str, origin: str | None) -> dict[str, Any]:
    """
    Add C{domain} for the caller (its owner), with C{origin} or the one
    proposed from DNS; the site's document with C{origin_proposal}.

    @raise HttpError: 422 (field errors), 409 (the domain is taken), 429.
    """
    services = call.services
    principal = call.principal
    assert principal is not None
    if principal.token is not None and principal.token.site_id is not None:
        raise HttpError("token_not_allowed", "This API token is limited to one site: it cannot"
                        " add sites.", status=403)
    dns = services.need("dns")
    await limit(call, SITE_CREATION, "new sites")
    proposal = None
    if origin is None:
        proposal = await dns.propose_origin(domain)
        if proposal.origin is None:
            raise invalid("origin", proposal.reason, code="required")
        origin = proposal.origin
    try:
        origin = normalise_upstream(origin, services.origins)
    except InvalidValue as e:
        raise invalid("origin", str(e)) from None
    try:
        record = await services.sites.add(domain, origin, call.user.id)
    except SiteExists:
        raise HttpError("site_exists", f"{domain} is already a site on this Veil.",
                        {"fields": [{"field": "domain", "code": "exists",
                                     "message": "This domain is already a site on this"
                                                " Veil."}]}, status=409) from None
    document = await site_document(call, record.id, None if proposal is None else proposal.apex)
    document["role"] = "owner"
    document["origin_proposal"] = None if proposal is None else proposal.to_json()
    return document


#: The settings fields by the store that owns them.
_SITE_FIELDS = {"origin": "upstream", "allow_plain_http": "allow_plain_http",
                "origin_tls_verify": "origin_tls_verify"}
_WAF_FIELDS = ("mode", "paranoia", "threshold", "inspect_body_limit", "body_overflow")
_LIMIT_FIELDS = ("max_body_size", "allow_trace")


async def change_settings(call: Call, values: dict[str, Any]) -> None:
    """
    Apply validated settings (L{SETTINGS}'s fields) to the call's site in
    one transaction; 422 naming the field for an origin the policy refuses.
    """
    site = call.site
    assert site is not None
    services = call.services
    if "origin" in values:
        try:
            values = {**values, "origin": normalise_upstream(values["origin"], services.origins)}
        except InvalidValue as e:
            raise invalid("origin", str(e)) from None
    try:
        await services.sites.change(
            site.domain, call.user.id,
            site={_SITE_FIELDS[k]: v for k, v in values.items() if k in _SITE_FIELDS},
            waf={k: v for k, v in values.items() if k in _WAF_FIELDS},
            limits={k: v for k, v in values.items() if k in _LIMIT_FIELDS},
            maintenance=values.get("maintenance"))
    except SiteNotFound:
        raise not_found() from None
    except InvalidValue as e:
        raise invalid("(body)", str(e)) from None


async def check_now(call: Call) -> Any:
    """Run "Check now" on the call's site; 429 with C{Retry-After} when too soon."""
    site = call.site
    assert site is not None
    try:
        return await call.services.need("dns").check_now(site.id, call.user.id)
    except CheckTooSoon as e:
        seconds = max(1, math.ceil(e.retry_after))
        raise HttpError("too_soon", f"{site.domain} was checked moments ago; check again in"
                        f" {seconds} s.", {"retry_after": seconds}, status=429,
                        headers={"Retry-After": str(seconds)}) from None
    except SiteNotFound:
        raise not_found() from None


class SitesApi:
    def __init__(self, services: Services) -> None:
        self.services = services

    @route("GET", "/api/v1/sites", access=user_read(), query=paging.QUERY,
           summary="The caller's sites, by domain (a token limited to one site sees that one)",
           responses=[Response(200, "a page of sites", paging.page_of(SITE_SUMMARY))])
    async def sites(self, call: Call) -> dict[str, Any]:
        _, result = await sites_page(call, paging.Paging.from_query(call.query))
        return result

    @route("POST", "/api/v1/sites", access=user_write(), body=NEW_SITE,
           summary="Add a site: it is pending until its DNS points at Veil",
           description="Without an origin, Veil proposes one from the domain's DNS today"
                       " (origin_proposal says what it found and why). The answer's dns.records"
                       " are the records to create: a CNAME to Veil's host name (or A/AAAA"
                       " records for a zone apex) and TXT _veil.<domain> with the site's token.",
           responses=[Response(201, "the new site", SITE),
                      Response(409, "the domain is already a site")])
    async def create(self, call: Call) -> Json:
        body = call.body or {}
        try:
            domain = normalise_domain(body["domain"])
        except InvalidValue as e:
            raise invalid("domain", str(e)) from None
        return Json(await create_site(call, domain, body.get("origin")), 201)

    @route("GET", "/api/v1/sites/<uuid:site_id>", access=site_read("viewer"),
           summary="A site: status and its history, settings, DNS records and verification,"
                   " certificate",
           responses=[Response(200, "the site", SITE)])
    async def read(self, call: Call) -> dict[str, Any]:
        assert call.site is not None
        return await site_document(call, call.site.id)

    @route("PATCH", "/api/v1/sites/<uuid:site_id>", access=site_write("admin"), body=SETTINGS,
           summary="Change a site's settings (only the fields given; one transaction, audited)",
           responses=[Response(200, "the site", SITE)])
    async def update(self, call: Call) -> dict[str, Any]:
        assert call.site is not None
        values = dict(call.body or {})
        if not values:
            raise invalid("(body)", f"Give at least one of: {', '.join(SETTINGS_FIELDS)}.",
                          code="required")
        await change_settings(call, values)
        return await site_document(call, call.site.id)

    @route("DELETE", "/api/v1/sites/<uuid:site_id>", access=site_write("owner"),
           summary="Remove a site and everything of it (its request log stays until it"
                   " expires)",
           responses=[Response(204, "removed")])
    async def delete(self, call: Call) -> Json:
        assert call.site is not None
        try:
            await self.services.sites.remove(call.site.domain, call.user.id)
        except SiteNotFound:
            raise not_found() from None
        return Json(None, 204)

    @route("POST", "/api/v1/sites/<uuid:site_id>/verify", access=site_write("admin"),
           summary="Check the site's DNS now (\"Check now\"): what each record resolved to and"
                   " what is still wrong",
           description="A pending site whose DNS passes becomes active. At most once every 10"
                       " seconds per site (429 with Retry-After).",
           responses=[Response(200, "the check and the site's status after it", CHECK),
                      Response(429, "checked moments ago; see Retry-After")])
    async def verify(self, call: Call) -> dict[str, Any]:
        return (await check_now(call)).to_json()

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


__all__ = ["SITE", "SitesApi", "change_settings", "check_now", "create_site", "limit",
           "site_document", "site_json", "sites_page"]

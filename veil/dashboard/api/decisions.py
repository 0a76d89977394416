"""
A site's IP decisions: C{/api/v1/sites/{id}/decisions}.

A decision applies to one address or network on this site (bans, blocks,
throttles, ...; L{veil.store.admin.DECISION_TYPES}), until it expires or is
removed.  Every change is audited and reaches every Veil process within a
second (C{veil_decisions}).  Decisions for every site are the operator's
(C{veil decisions}); site members see and change their site's own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from veil.dashboard import paging
from veil.dashboard.schema import Object, Response, String, Uuid
from veil.dashboard.services import Services
from veil.dashboard.web import (
    Call,
    Json,
    invalid,
    missing,
    not_found,
    route,
    site_read,
    site_write,
)
from veil.store.admin import (
    DECISION_TYPES,
    MAX_REASON,
    DecisionNotFound,
    DecisionRecord,
    InvalidValue,
    SiteNotFound,
    format_network,
    normalise_reason,
    parse_duration,
    parse_network,
)

DECISION = Object({
    "id": Uuid(),
    "target": String(description="an address, or a network such as 203.0.113.0/24"),
    "type": String(choices=DECISION_TYPES),
    "source": String(description="manual (the dashboard), api (an API token), agent, feed,"
                                 " behaviour"),
    "reason": String(),
    "created_at": String(format="date-time"),
    "expires_at": String(format="date-time", nullable=True, description="null: until removed"),
})
NEW_DECISION = Object({
    "target": String(max_length=60, description="an IP address or network"),
    "type": String(choices=DECISION_TYPES),
    "duration": String(max_length=40, description="30s, 15m, 1h, 7d, 2w, 1h30m, or forever"
                       " (default 24h)"),
    "reason": String(max_length=MAX_REASON * 2, strip=False),
}, required=("target", "type"))

DEFAULT_DURATION = "24h"


def decision_json(decision: DecisionRecord) -> dict[str, Any]:
    return {"id": decision.id, "target": format_network(decision.target),
            "type": decision.type, "source": decision.source, "reason": decision.reason,
            "created_at": decision.created_at, "expires_at": decision.expires_at}


async def add_decision(call: Call, target: str, type_: str, duration: str | None,
                       reason: str | None) -> DecisionRecord:
    """Add a decision on the call's site; 422 naming the field at fault."""
    site = call.site
    assert site is not None
    try:
        network = parse_network(target)
    except InvalidValue as e:
        raise invalid("target", str(e)) from None
    try:
        lifetime = parse_duration(duration or DEFAULT_DURATION)
    except InvalidValue as e:
        raise invalid("duration", str(e)) from None
    try:
        text = normalise_reason(reason or "")
    except InvalidValue as e:
        raise invalid("reason", str(e)) from None
    principal = call.principal
    source = "api" if principal is not None and principal.token is not None else "manual"
    try:
        return await call.services.decisions.add(network, type_, call.user.id,
                                                 duration=lifetime, site_id=site.id,
                                                 reason=text, source=source)
    except SiteNotFound:
        raise not_found() from None


async def remove_decision(call: Call, decision_id: UUID) -> DecisionRecord:
    site = call.site
    assert site is not None
    try:
        return await call.services.decisions.remove(decision_id, call.user.id, site.id)
    except DecisionNotFound:
        raise missing("decision") from None


async def decisions_page(call: Call, page: paging.Paging) -> tuple[list[DecisionRecord],
                                                                   dict[str, Any]]:
    site = call.site
    assert site is not None
    rows = await call.services.decisions.page(site.id, page.after(datetime, UUID), page.fetch)
    return rows, page.result(rows, key=lambda d: (d.created_at, d.id), item=decision_json)


class DecisionsApi:
    def __init__(self, services: Services) -> None:
        self.services = services

    @route("GET", "/api/v1/sites/<uuid:site_id>/decisions", access=site_read("viewer"),
           query=paging.QUERY, summary="The site's decisions in force, newest first",
           responses=[Response(200, "a page of decisions", paging.page_of(DECISION))])
    async def decisions(self, call: Call) -> dict[str, Any]:
        _, result = await decisions_page(call, paging.Paging.from_query(call.query))
        return result

    @route("POST", "/api/v1/sites/<uuid:site_id>/decisions", access=site_write("admin"),
           body=NEW_DECISION, summary="Add a decision for an address or network (audited)",
           responses=[Response(201, "the decision", DECISION)])
    async def add(self, call: Call) -> Json:
        body = call.body or {}
        decision = await add_decision(call, body["target"], body["type"], body.get("duration"),
                                      body.get("reason"))
        return Json(decision_json(decision), 201)

    @route("DELETE", "/api/v1/sites/<uuid:site_id>/decisions/<uuid:decision_id>",
           access=site_write("admin"), summary="Remove a decision (audited)",
           responses=[Response(204, "removed")])
    async def remove(self, call: Call) -> Json:
        await remove_decision(call, call.params["decision_id"])
        return Json(None, 204)

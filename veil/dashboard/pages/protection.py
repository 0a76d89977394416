"""
A site's protection: its IP decisions, and its WAF exclusions and endpoint
profiles (each change audited and applied by every process within a
second).
"""

from __future__ import annotations

from typing import Any

from veil.dashboard import paging
from veil.dashboard.api.decisions import add_decision, decisions_page, remove_decision
from veil.dashboard.api.waf import remove_exclusion
from veil.dashboard.pages.common import (
    attempt,
    form_errors,
    form_fields,
    form_state,
    render_site,
    text,
)
from veil.dashboard.schema import Object, String
from veil.dashboard.services import Services
from veil.dashboard.web import (
    Call,
    Html,
    Redirect,
    route,
    site_read,
    site_write,
)
from veil.store.admin import DECISION_TYPES, InvalidValue
from veil.store.waf import parse_method, parse_pattern
from veil.waf.policy import ATTACK_CLASSES, PROFILE_MODES

DECISION_FORM = Object({"target": String(max_length=60), "type": String(max_length=20),
                        "duration": String(max_length=40),
                        "reason": String(max_length=1000, strip=False)})
PROFILE_FORM = Object({"method": String(max_length=32), "pattern": String(max_length=512),
                       "mode": String(max_length=10)})
NOTICE_QUERY = Object({**paging.QUERY.fields, "done": String(max_length=20),
                       "error": String(max_length=400), "exclusion": String(max_length=20)})
#: The forms as the pages first show them.
DECISION_BLANK = {"target": "", "type": "block", "duration": "24h", "reason": ""}
PROFILE_BLANK = {"method": "*", "pattern": "", "mode": "skip"}

DURATIONS = (("1h", "1 hour"), ("24h", "1 day"), ("7d", "7 days"), ("30d", "30 days"),
             ("forever", "Until removed"))
DECISION_HELP = {
    "block": "refused (403)", "ban": "refused, and the connection dropped",
    "throttle": "rate limited", "log_only": "let through, logged",
    "scrutinize": "inspected at a stricter paranoia level",
}
DONE = {
    "added": "The decision is in force on every Veil process within a second.",
    "removed": "The decision is removed.",
    "excluded": "The exclusion is in force on every Veil process within a second.",
    "exists": "This exclusion was in force already.",
    "unexcluded": "The exclusion is removed.",
    "profiled": "The endpoint profile is saved.",
    "unprofiled": "The endpoint profile is removed.",
}


class ProtectionPages:
    def __init__(self, services: Services) -> None:
        self.services = services

    # -- decisions --------------------------------------------------------------------

    async def _decisions(self, call: Call, status: int = 200, **context: Any) -> Html:
        rows, result = await decisions_page(call, paging.Paging.from_query(call.query))
        form_state(call, context, DECISION_BLANK, DONE)
        return await render_site(call, "site_decisions.html", "decisions", status=status,
                                 decisions=rows[:len(result["items"])],
                                 next_cursor=result["next_cursor"], types=DECISION_TYPES,
                                 type_help=DECISION_HELP, durations=DURATIONS, **context)

    @route("GET", "/sites/<uuid:site_id>/decisions", access=site_read("viewer"),
           query=NOTICE_QUERY, summary="A site's IP decisions")
    async def decisions(self, call: Call) -> Html:
        return await self._decisions(call)

    @route("POST", "/sites/<uuid:site_id>/decisions", access=site_write("admin"),
           body=DECISION_FORM, summary="Add an IP decision")
    async def add(self, call: Call) -> Html | Redirect:
        assert call.site is not None
        body = form_fields(call)
        errors = form_errors(call)
        kind = body.get("type", "")
        if kind not in DECISION_TYPES:
            errors["type"] = f"Choose one of: {', '.join(DECISION_TYPES)}."
        if not errors:
            _, errors = await attempt(add_decision(call, body.get("target", ""), kind,
                                                   text(body.get("duration")),
                                                   body.get("reason")))
        if errors:
            call.query = {}
            return await self._decisions(call, 422, errors=errors,
                                         form={**DECISION_BLANK, **body}, notice=None)
        return Redirect(f"/sites/{call.site.id}/decisions?done=added")

    @route("POST", "/sites/<uuid:site_id>/decisions/<uuid:decision_id>/remove",
           access=site_write("admin"), summary="Remove an IP decision")
    async def remove(self, call: Call) -> Redirect:
        assert call.site is not None
        await remove_decision(call, call.params["decision_id"])
        return Redirect(f"/sites/{call.site.id}/decisions?done=removed")

    # -- WAF ------------------------------------------------------------------------------

    async def _waf(self, call: Call, status: int = 200, **context: Any) -> Html:
        site = call.site
        assert site is not None
        exclusions = await self.services.waf.exclusions(site.domain)
        profiles = await self.services.waf.profiles(site.domain)
        history = await self.services.waf.history(site.domain, 10)
        catalogue = await self.services.need("explainer").catalogue()
        form_state(call, context, PROFILE_BLANK, DONE)
        context.setdefault("error", call.query.get("error"))
        return await render_site(call, "site_waf.html", "waf", status=status,
                                 exclusions=exclusions, profiles=profiles, history=history,
                                 rules=catalogue, classes=ATTACK_CLASSES,
                                 profile_modes=PROFILE_MODES,
                                 default_body_limit=self.services.config.proxy.inspect_body_limit,
                                 **context)

    @route("GET", "/sites/<uuid:site_id>/waf", access=site_read("viewer"),
           query=NOTICE_QUERY, summary="A site's WAF exclusions and endpoint profiles")
    async def waf(self, call: Call) -> Html:
        return await self._waf(call)

    @route("POST", "/sites/<uuid:site_id>/exclusions/<exclusion_id>/remove",
           access=site_write("admin"), summary="Remove a WAF exclusion")
    async def unexclude(self, call: Call) -> Redirect:
        assert call.site is not None
        await remove_exclusion(call, call.params["exclusion_id"])
        return Redirect(f"/sites/{call.site.id}/waf?done=unexcluded")

    @route("POST", "/sites/<uuid:site_id>/profiles", access=site_write("admin"),
           body=PROFILE_FORM, summary="Set an endpoint profile")
    async def profile(self, call: Call) -> Html | Redirect:
        site = call.site
        assert site is not None
        body = form_fields(call)
        errors = form_errors(call)
        mode = body.get("mode", "")
        if mode not in PROFILE_MODES:
            errors["mode"] = f"Choose one of: {', '.join(PROFILE_MODES)}."
        method = pattern = None
        try:
            method = parse_method(body.get("method") or "*")
        except InvalidValue as e:
            errors["method"] = str(e)
        if "mode" not in errors:
            try:
                pattern = parse_pattern(body.get("pattern", ""), mode)
            except InvalidValue as e:
                errors["pattern"] = str(e)
        if errors or method is None or pattern is None:
            call.query = {}
            return await self._waf(call, 422, errors=errors, form={**PROFILE_BLANK, **body},
                                   notice=None)
        await self.services.waf.set_profile(site.domain, pattern, mode, call.user.id,
                                            method=method)
        return Redirect(f"/sites/{site.id}/waf?done=profiled")

    @route("POST", "/sites/<uuid:site_id>/profiles/remove", access=site_write("admin"),
           body=Object({"method": String(max_length=32), "pattern": String(max_length=512)}),
           summary="Remove an endpoint profile")
    async def unprofile(self, call: Call) -> Redirect:
        site = call.site
        assert site is not None
        from veil.store.waf import ProfileNotFound

        body = call.body or {}
        try:
            await self.services.waf.remove_profile(
                site.domain, parse_pattern(str(body.get("pattern", ""))), call.user.id,
                method=parse_method(str(body.get("method") or "*")))
        except (InvalidValue, ProfileNotFound):
            return Redirect(f"/sites/{site.id}/waf?error=No+such+endpoint+profile.")
        return Redirect(f"/sites/{site.id}/waf?done=unprofiled")

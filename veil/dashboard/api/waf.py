"""
A site's WAF exclusions and endpoint profiles:
C{/api/v1/sites/{id}/exclusions} and C{/api/v1/sites/{id}/profiles}
(the same changes as C{veil waf exclude} and C{veil waf profile}, through
L{veil.store.waf.WafAdmin}: versioned, audited, applied by every process
within a second).
"""

from __future__ import annotations

from typing import Any

from veil.dashboard.schema import Array, Boolean, Integer, Object, Response, String
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
from veil.store.admin import InvalidValue, SiteNotFound
from veil.store.waf import (
    COMMENT_MAX,
    ExclusionNotFound,
    ExclusionRecord,
    ProfileNotFound,
    ProfileRecord,
    parse_attack_class,
    parse_exclusion_id,
    parse_exclusion_target,
    parse_method,
    parse_path_prefix,
    parse_pattern,
    parse_rule_id,
)
from veil.waf.policy import ATTACK_CLASSES, PROFILE_MODES

EXCLUSION = Object({
    "id": String(),
    "rule_id": Integer(nullable=True),
    "attack_class": String(nullable=True),
    "path_prefix": String(nullable=True, description="null: every path"),
    "target": String(nullable=True, description="null: every part of the request"),
    "comment": String(),
    "created_at": String(format="date-time", nullable=True),
    "description": String(description="what it turns off, where"),
})
NEW_EXCLUSION = Object({
    "rule_id": Integer(minimum=1, maximum=2 ** 31 - 1, nullable=True),
    "attack_class": String(choices=ATTACK_CLASSES, nullable=True),
    "path_prefix": String(max_length=1024, strip=False, nullable=True,
                          description="only for paths starting with it (the decoded path)"),
    "target": String(max_length=200, nullable=True,
                     description="only for one part: args:NAME, cookies:NAME,"
                                 " headers:NAME, ... or a whole collection (cookies)"),
    "comment": String(max_length=COMMENT_MAX * 2, description="why"),
})
PROFILE = Object({
    "method": String(), "pattern": String(), "mode": String(choices=PROFILE_MODES),
    "requests": Integer(description="requests the behaviour stage has seen"),
    "last_seen": String(format="date-time", nullable=True),
})
SET_PROFILE = Object({
    "method": String(max_length=32, description="an HTTP method, or * (default)"),
    "pattern": String(max_length=512, description="/healthz, /static/*, *.css,"
                      " /api/users/{id}"),
    "mode": String(choices=PROFILE_MODES, description="skip: not inspected; deep: strictest"
                   " paranoia; normal: as the rest of the site"),
}, required=("pattern", "mode"))
PROFILE_KEY = Object({"method": SET_PROFILE.fields["method"],
                      "pattern": SET_PROFILE.fields["pattern"]}, required=("pattern",))
PROFILES_QUERY = Object({"all": Boolean(description="also the learned endpoints without a"
                                                    " mode of their own")})


def exclusion_json(exclusion: ExclusionRecord) -> dict[str, Any]:
    return {"id": exclusion.id, "rule_id": exclusion.rule_id,
            "attack_class": exclusion.attack_class, "path_prefix": exclusion.path_prefix,
            "target": exclusion.target, "comment": exclusion.comment,
            "created_at": exclusion.created_at, "description": exclusion.describe()}


def profile_json(profile: ProfileRecord) -> dict[str, Any]:
    return {"method": profile.method, "pattern": profile.pattern, "mode": profile.mode,
            "requests": profile.request_count, "last_seen": profile.last_seen}


def _checked(field: str, parse: Any, value: Any) -> Any:
    if value is None:
        return None
    try:
        return parse(value)
    except InvalidValue as e:
        raise invalid(field, str(e)) from None


async def add_exclusion(call: Call, values: dict[str, Any]) -> tuple[ExclusionRecord, bool]:
    """Add an exclusion to the call's site; fires with it and whether it is new."""
    site = call.site
    assert site is not None
    rule_id = _checked("rule_id", parse_rule_id, values.get("rule_id"))
    attack_class = _checked("attack_class", parse_attack_class, values.get("attack_class"))
    if (rule_id is None) == (attack_class is None):
        raise invalid("rule_id", "Give a rule id or an attack class (one of them).",
                      code="required")
    path = _checked("path_prefix", parse_path_prefix, values.get("path_prefix") or None)
    target = _checked("target", parse_exclusion_target, values.get("target") or None)
    try:
        return await call.services.waf.exclude(
            site.domain, call.user.id, rule_id=rule_id, attack_class=attack_class,
            path_prefix=path, target=target, comment=values.get("comment") or "")
    except SiteNotFound:
        raise not_found() from None
    except InvalidValue as e:
        raise invalid("comment", str(e)) from None


async def remove_exclusion(call: Call, exclusion_id: str) -> ExclusionRecord:
    site = call.site
    assert site is not None
    try:
        return await call.services.waf.unexclude(parse_exclusion_id(exclusion_id),
                                                 call.user.id, domain=site.domain)
    except (ExclusionNotFound, InvalidValue):
        raise missing("exclusion") from None


class WafApi:
    def __init__(self, services: Services) -> None:
        self.services = services

    @route("GET", "/api/v1/sites/<uuid:site_id>/exclusions", access=site_read("viewer"),
           summary="The site's WAF exclusions, oldest first",
           responses=[Response(200, "the exclusions", Object({"items": Array(
               items=EXCLUSION)}))])
    async def exclusions(self, call: Call) -> dict[str, Any]:
        assert call.site is not None
        rows = await self.services.waf.exclusions(call.site.domain)
        return {"items": [exclusion_json(e) for e in rows]}

    @route("POST", "/api/v1/sites/<uuid:site_id>/exclusions", access=site_write("admin"),
           body=NEW_EXCLUSION,
           summary="Turn a rule (or a class) off for the site, optionally under a path prefix"
                   " and for one target (a new version of the site's rules, audited)",
           responses=[Response(201, "the new exclusion", EXCLUSION),
                      Response(200, "the same exclusion was in force already", EXCLUSION)])
    async def exclude(self, call: Call) -> Json:
        record, created = await add_exclusion(call, call.body or {})
        return Json(exclusion_json(record), 201 if created else 200)

    @route("DELETE", "/api/v1/sites/<uuid:site_id>/exclusions/<exclusion_id>",
           access=site_write("admin"), summary="Remove an exclusion (audited)",
           responses=[Response(204, "removed")])
    async def unexclude(self, call: Call) -> Json:
        await remove_exclusion(call, call.params["exclusion_id"])
        return Json(None, 204)

    @route("GET", "/api/v1/sites/<uuid:site_id>/profiles", access=site_read("viewer"),
           query=PROFILES_QUERY,
           summary="The site's endpoint profiles (skip and deep), most specific first",
           responses=[Response(200, "the profiles", Object({"items": Array(items=PROFILE)}))])
    async def profiles(self, call: Call) -> dict[str, Any]:
        assert call.site is not None
        rows = await self.services.waf.profiles(call.site.domain,
                                                everything=bool(call.query.get("all")))
        return {"items": [profile_json(p) for p in rows]}

    @route("PUT", "/api/v1/sites/<uuid:site_id>/profiles", access=site_write("admin"),
           body=SET_PROFILE,
           summary="Skip inspection of an endpoint, or inspect it at the strictest level",
           responses=[Response(200, "the profile", PROFILE)])
    async def set_profile(self, call: Call) -> dict[str, Any]:
        assert call.site is not None
        body = call.body or {}
        method = _checked("method", parse_method, body.get("method") or "*")
        pattern = _checked("pattern", lambda p: parse_pattern(p, body["mode"]), body["pattern"])
        record, _ = await self.services.waf.set_profile(call.site.domain, pattern, body["mode"],
                                                        call.user.id, method=method)
        return profile_json(record)

    @route("DELETE", "/api/v1/sites/<uuid:site_id>/profiles", access=site_write("admin"),
           query=PROFILE_KEY, summary="Delete an endpoint profile (method and pattern in the"
                                      " query)",
           responses=[Response(204, "deleted")])
    async def remove_profile(self, call: Call) -> Json:
        assert call.site is not None
        method = _checked("method", parse_method, call.query.get("method") or "*")
        pattern = _checked("pattern", parse_pattern, call.query["pattern"])
        try:
            await self.services.waf.remove_profile(call.site.domain, pattern, call.user.id,
                                                   method=method)
        except ProfileNotFound:
            raise missing("profile") from None
        return Json(None, 204)

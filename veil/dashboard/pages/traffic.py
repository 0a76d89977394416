"""
A site's traffic: the requests explorer (filters in the URL, pages by
cursor, export links) and one request with "why was this blocked", from
which a site admin turns a false positive into a scoped exclusion.

The exclusion proposed for each rule is rule x path prefix x target; the
page shows how many of the last 7 days' logged requests it would have let
through, and the form can be changed and previewed (a GET of the same
page) before it is confirmed (a POST, audited).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from veil.dashboard.api.requests import (
    _FILTER_FIELDS,
    FILTERS,
    IMPACT_DAYS,
    explain,
    impact,
    one_request,
    requests_page,
)
from veil.dashboard.api.waf import add_exclusion
from veil.dashboard.explain import Exclusion
from veil.dashboard.pages.common import field_errors, render_site, text
from veil.dashboard.schema import Object, String
from veil.dashboard.services import Services
from veil.dashboard.web import (
    Call,
    Html,
    HttpError,
    Redirect,
    not_found,
    route,
    site_read,
    site_write,
)
from veil.store.admin import InvalidValue
from veil.store.waf import parse_exclusion_target, parse_path_prefix

PREVIEW = Object({"rule": String(max_length=12), "path": String(max_length=1024, strip=False),
                  "target": String(max_length=200), "done": String(max_length=20),
                  "exclusion": String(max_length=20), "error": String(max_length=400)})
EXCLUDE_FORM = Object({"rule_id": String(max_length=12),
                       "path_prefix": String(max_length=1024, strip=False),
                       "target": String(max_length=200), "comment": String(max_length=1000),
                       "back": String(max_length=300)})

#: The filters the explorer's form offers, in order, with their labels.
FILTER_LABELS = (("since", "From"), ("until", "To"), ("status", "Status"),
                 ("blocked", "Blocked"), ("client", "Client address or network"),
                 ("path", "Path starts with"), ("method", "Method"),
                 ("attack_type", "Attack type"))


class TrafficPages:
    def __init__(self, services: Services) -> None:
        self.services = services

    @route("GET", "/sites/<uuid:site_id>/requests", access=site_read("viewer"), query=FILTERS,
           summary="The requests explorer: filters in the URL, newest first")
    async def explorer(self, call: Call) -> Html:
        assert call.site is not None
        filters = {k: v for k, v in call.query.items() if k in _FILTER_FIELDS and v}
        error = None
        page: dict[str, Any] = {"items": [], "next_cursor": None, "searched_to": None}
        try:
            _, page = await requests_page(call, call.query)
        except HttpError as e:
            if e.status != 400:
                raise
            error = field_errors(e)
        query = urlencode(filters)
        return await render_site(
            call, "site_requests.html", "requests", status=400 if error else 200,
            rows=page["items"], next_cursor=page["next_cursor"],
            searched_to=page["searched_to"], filters=filters, errors=error or {},
            filter_labels=FILTER_LABELS, query=query,
            next_query=urlencode({**filters, "cursor": page["next_cursor"] or ""}))

    @route("GET", "/sites/<uuid:site_id>/requests/<key>", access=site_read("viewer"),
           query=PREVIEW,
           summary="One request and why it was blocked, with exclusions proposed from it")
    async def request(self, call: Call) -> Html:
        assert call.site is not None
        record = await one_request(call, call.params["key"])
        site = await self.services.sites.detail(call.site.id)
        if site is None:
            raise not_found()
        explained = await explain(call, record, site)
        preview = await self._preview(call, explained, site.threshold)
        return await render_site(
            call, "site_request.html", "requests", site=site, record=explained["request"],
            explained=explained, preview=preview, days=IMPACT_DAYS,
            done=call.query.get("done"), exclusion=call.query.get("exclusion"),
            error=call.query.get("error"))

    async def _preview(self, call: Call, explained: dict[str, Any],
                       threshold: int) -> dict[str, Any] | None:
        """The proposal as edited in the form (C{?rule=&path=&target=}), with its impact."""
        rule_text = call.query.get("rule")
        if not rule_text or not rule_text.isdigit():
            return None
        rule = next((r for r in explained["rules"] if r["rule_id"] == int(rule_text)), None)
        if rule is None or rule["severity"] is None:
            return None
        errors: dict[str, str] = {}
        path = text(call.query.get("path"))
        target = text(call.query.get("target"))
        try:
            path = None if path is None else parse_path_prefix(path)
        except InvalidValue as e:
            errors["path_prefix"] = str(e)
        try:
            target = None if target is None else parse_exclusion_target(target)
        except InvalidValue as e:
            errors["target"] = str(e)
        result: dict[str, Any] = {"rule_id": rule["rule_id"], "path_prefix": path,
                                  "target": target, "errors": errors}
        if not errors:
            exclusion = Exclusion("preview", rule_id=rule["rule_id"], path_prefix=path,
                                  target=target)
            request_path = explained["proposals"][0]["path_prefix"] if explained["proposals"] \
                else "/"
            result["covers_this_request"] = all(
                exclusion.covers(rule["rule_id"], rule["class"] or "", request_path, h["target"])
                for h in rule["hits"])
            result["impact"] = await impact(call, rule["rule_id"], rule["severity"], path,
                                            threshold)
        return result

    @route("POST", "/sites/<uuid:site_id>/exclusions", access=site_write("admin"),
           body=EXCLUDE_FORM, summary="Create an exclusion (from a request, or by hand)")
    async def exclude(self, call: Call) -> Html | Redirect:
        assert call.site is not None
        body = call.body or {}
        back = str(body.get("back") or "")
        if not back.startswith(f"/sites/{call.site.id}/"):
            back = f"/sites/{call.site.id}/waf"
        rule = text(body.get("rule_id"))
        values = {"rule_id": int(rule) if rule and rule.isdigit() else rule,
                  "path_prefix": text(body.get("path_prefix")),
                  "target": text(body.get("target")), "comment": text(body.get("comment"))}
        if isinstance(values["rule_id"], str):
            values["attack_class"], values["rule_id"] = values["rule_id"], None
        try:
            record, created = await add_exclusion(call, values)
        except HttpError as e:
            if e.status != 422:
                raise
            message = "; ".join(field_errors(e).values())
            separator = "&" if "?" in back else "?"
            return Redirect(f"{back}{separator}{urlencode({'error': message[:300]})}")
        separator = "&" if "?" in back else "?"
        return Redirect(f"{back}{separator}done={'excluded' if created else 'exists'}"
                        f"&exclusion={record.id}")

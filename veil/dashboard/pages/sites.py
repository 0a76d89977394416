"""
The pages of a site: adding one (a wizard that proposes the origin from
DNS and then shows the records to create), its overview (counters, charts,
the live request table), DNS and status ("Check now"), settings, and its
activity (the site's audit log).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from veil.dashboard import charts
from veil.dashboard.api.admin import audit_page
from veil.dashboard.api.sites import change_settings, check_now, create_site
from veil.dashboard.pages.common import (
    attempt,
    field_errors,
    form_errors,
    form_fields,
    render_site,
    text,
)
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
    user_read,
    user_write,
)
from veil.store.admin import (
    InvalidValue,
    SiteNotFound,
    normalise_domain,
    normalise_upstream,
)
from veil.store.site_limits import MAX_BODY_SIZE_RANGE
from veil.store.waf import parse_body_limit
from veil.waf.policy import BODY_OVERFLOW, MODES, STRICTEST_PARANOIA

NEW_SITE_FORM = Object({"domain": String(max_length=1100), "origin": String(max_length=300)})
SETTINGS_FORM = Object({
    "origin": String(max_length=300), "mode": String(max_length=20),
    "paranoia": String(max_length=3), "threshold": String(max_length=6),
    "inspect_body_limit": String(max_length=20), "body_overflow": String(max_length=30),
    "max_body_size": String(max_length=20), "allow_plain_http": String(max_length=5),
    "origin_tls_verify": String(max_length=5), "maintenance": String(max_length=5),
    "allow_trace": String(max_length=5),
})
DELETE_FORM = Object({"confirm": String(max_length=300)})
RANGE_QUERY = Object({"range": String(choices=("1h", "24h", "7d"))})
DONE_QUERY = Object({"done": String(max_length=40)})

#: Overview ranges: (span, bucket seconds).
RANGES = {"1h": (timedelta(hours=1), 60), "24h": (timedelta(hours=24), 3600),
          "7d": (timedelta(days=7), 21600)}
#: Rows the overview's live table starts with.
LIVE_ROWS = 50
#: The status machine, in order.
STEPS = (("pending", "Waiting for DNS"), ("active", "DNS verified"),
         ("ssl_provisioning", "Getting a certificate"), ("live", "Live"))
PARANOIA = ((1, "1: fewest false positives (recommended to start)"),
            (2, "2: more rules, a few more false positives"),
            (3, "3: strict: expect to add exclusions"),
            (4, "4: strictest"))
DONE = {"settings": "The settings are saved. Every Veil process applies them within a"
                    " second."}
_SIZE = re.compile(r"(\d{1,13})\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20,
          "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def parse_size(text_value: str) -> int:
    """A size in bytes: a number with an optional unit (100m, 512k, 2g; 1024-based)."""
    found = _SIZE.fullmatch(text_value.strip())
    if found is None:
        raise ValueError("Give a number of bytes, optionally with k, M or G (100M, 512k).")
    size = int(found.group(1)) * _UNITS[found.group(2).lower()]
    low, high = MAX_BODY_SIZE_RANGE
    if not low <= size <= high:
        raise ValueError("Give a size from 1 byte to 1 TiB.")
    return size


def show_size(size: int | None) -> str:
    """A size as the settings form shows it (the largest whole unit)."""
    if size is None:
        return "default"
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def timeline(site: Any) -> list[dict[str, Any]]:
    """The status machine's steps, each with when it was last entered and its state."""
    entered: dict[str, Any] = {}
    for change in site.history:
        entered[change.status] = change.at
    order = [key for key, _ in STEPS]
    reached = order.index(site.status) if site.status in order else -1
    if site.status == "error" and site.dns_verified_at is not None:
        reached = 1
    steps = []
    for index, (key, label) in enumerate(STEPS):
        state = ("done" if index < reached else "current" if index == reached else "todo")
        steps.append({"key": key, "label": label, "at": entered.get(key), "state": state})
    return steps


class SitePages:
    def __init__(self, services: Services) -> None:
        self.services = services

    # -- adding a site ------------------------------------------------------------

    @route("GET", "/sites/new", access=user_read(tokens=False),
           summary="Add a site: its domain (and origin)")
    def new(self, call: Call) -> Html:
        return call.render("site_new.html", step="domain", form={"domain": "", "origin": ""},
                           errors={}, proposal=None)

    @route("POST", "/sites/new", access=user_write(tokens=False), body=NEW_SITE_FORM,
           summary="Add a site (without an origin, first propose one from DNS)")
    async def create(self, call: Call) -> Html | Redirect:
        body = call.body or {}
        form = {"domain": str(body.get("domain") or ""), "origin": str(body.get("origin") or "")}
        errors = form_errors(call)
        if errors:
            return call.render("site_new.html", status=422, step="domain", form=form,
                               errors=errors, proposal=None)
        try:
            domain = normalise_domain(form["domain"])
        except InvalidValue as e:
            return call.render("site_new.html", status=422, step="domain", form=form,
                               errors={"domain": str(e)}, proposal=None)
        origin = text(form["origin"])
        if origin is None:
            proposal = await self.services.need("dns").propose_origin(domain)
            form = {"domain": domain, "origin": proposal.origin or ""}
            return call.render("site_new.html", step="origin", form=form, errors={},
                               proposal=proposal)
        try:
            site = await create_site(call, domain, origin)
        except HttpError as e:
            if e.status not in (409, 422, 429):
                raise
            return call.render("site_new.html", status=e.status, step="origin"
                               if form["origin"] else "domain", form=form,
                               errors=field_errors(e), proposal=None)
        return Redirect(f"/sites/{site['id']}/dns")

    # -- overview -------------------------------------------------------------------

    @route("GET", "/sites/<uuid:site_id>", access=site_read("viewer"), query=RANGE_QUERY,
           summary="A site: counters, charts and its requests as they happen")
    async def overview(self, call: Call) -> Html:
        from veil.dashboard.api.requests import site_stats

        assert call.site is not None
        chosen = call.query.get("range") or "24h"
        span, bucket = RANGES[chosen]
        now = call.now()
        stats = await site_stats(call, {"since": (now - span).isoformat(),
                                        "until": now.isoformat(), "bucket": bucket})
        rows = await self.services.logs.latest(call.site.id, LIVE_ROWS)
        return await render_site(
            call, "site_overview.html", "overview", stats=stats, rows=rows,
            chart=charts.series(stats.buckets, stats.bucket_seconds),
            top_paths=charts.top(stats.top_paths), top_clients=charts.top(stats.top_clients),
            top_attacks=charts.top(stats.top_attack_types), range=chosen,
            ranges=list(RANGES))

    # -- DNS and status ---------------------------------------------------------------

    async def _dns_page(self, call: Call, status: int = 200, **context: Any) -> Html:
        from veil.dashboard.api.sites import site_document

        assert call.site is not None
        site = await self.services.sites.detail(call.site.id)
        if site is None:
            raise not_found()
        document = await site_document(call, site.id)
        context.setdefault("check", None)
        context.setdefault("notice", None)
        return await render_site(call, "site_dns.html", "dns", status=status, site=site,
                                 doc=document, steps=timeline(site), **context)

    @route("GET", "/sites/<uuid:site_id>/dns", access=site_read("viewer"),
           summary="A site's DNS records to create, its status and its last DNS check")
    async def dns(self, call: Call) -> Html:
        return await self._dns_page(call)

    @route("POST", "/sites/<uuid:site_id>/verify", access=site_write("admin"),
           summary="Check the site's DNS now")
    async def verify(self, call: Call) -> Html:
        try:
            result = await check_now(call)
        except HttpError as e:
            if e.status != 429:
                raise
            page = await self._dns_page(call, 429, notice=e.message)
            return Html(page.body, 429, {"Retry-After": e.headers.get("Retry-After", "10")})
        return await self._dns_page(call, check=result)

    # -- settings ---------------------------------------------------------------------

    async def _settings_page(self, call: Call, status: int = 200, **context: Any) -> Html:
        assert call.site is not None
        site = await self.services.sites.detail(call.site.id)
        if site is None:
            raise not_found()
        context.setdefault("errors", {})
        context.setdefault("notice", None)
        context.setdefault("form", {
            "origin": site.upstream, "mode": site.mode, "paranoia": str(site.paranoia),
            "threshold": str(site.threshold),
            "inspect_body_limit": show_size(site.inspect_body_limit),
            "body_overflow": site.body_overflow, "max_body_size": show_size(site.max_body_size),
            "allow_plain_http": site.allow_plain_http,
            "origin_tls_verify": site.origin_tls_verify, "maintenance": site.maintenance,
            "allow_trace": site.allow_trace})
        return await render_site(call, "site_settings.html", "settings", status=status,
                                 site=site, modes=MODES, paranoia_levels=PARANOIA,
                                 overflows=BODY_OVERFLOW, **context)

    @route("GET", "/sites/<uuid:site_id>/settings", access=site_read("admin"),
           query=DONE_QUERY, summary="A site's settings")
    async def settings(self, call: Call) -> Html:
        return await self._settings_page(call, notice=DONE.get(call.query.get("done", "")))

    @route("POST", "/sites/<uuid:site_id>/settings", access=site_write("admin"),
           body=SETTINGS_FORM, summary="Save a site's settings")
    async def save_settings(self, call: Call) -> Html | Redirect:
        assert call.site is not None
        body = form_fields(call)
        errors = form_errors(call)
        values: dict[str, Any] = {}

        def parse(field: str, fn: Any) -> None:
            try:
                values[field] = fn(body.get(field, ""))
            except (ValueError, InvalidValue) as e:
                errors[field] = str(e)

        def whole(low: int, high: int) -> Any:
            def check(value: str) -> int:
                if not value.strip().isdigit() or not low <= int(value) <= high:
                    raise ValueError(f"Give a whole number from {low} to {high}.")
                return int(value)
            return check

        def choice(options: Any) -> Any:
            def check(value: str) -> str:
                if value not in options:
                    raise ValueError(f"Choose one of: {', '.join(options)}.")
                return value
            return check

        def origin(value: str) -> str:
            if not value.strip():
                raise ValueError("This field is required.")
            return normalise_upstream(value, self.services.origins)

        parse("origin", origin)
        parse("mode", choice(MODES))
        parse("paranoia", whole(1, STRICTEST_PARANOIA))
        parse("threshold", whole(1, 1000))
        parse("inspect_body_limit", parse_body_limit)
        parse("body_overflow", choice(BODY_OVERFLOW))
        parse("max_body_size", parse_size)
        for flag in ("allow_plain_http", "origin_tls_verify", "maintenance", "allow_trace"):
            values[flag] = body.get(flag, "") in ("on", "true", "1")
        form = {**{field: body.get(field, "") for field in SETTINGS_FORM.fields},
                **{k: values[k] for k in ("allow_plain_http", "origin_tls_verify",
                                          "maintenance", "allow_trace")}}
        if not errors:
            _, errors = await attempt(change_settings(call, values))
        if errors:
            return await self._settings_page(call, 422, form=form, errors=errors)
        return Redirect(f"/sites/{call.site.id}/settings?done=settings")

    @route("POST", "/sites/<uuid:site_id>/delete", access=site_write("owner"),
           body=DELETE_FORM, summary="Remove a site (type its domain to confirm)")
    async def delete(self, call: Call) -> Html | Redirect:
        site = call.site
        assert site is not None
        typed = str((call.body or {}).get("confirm") or "").strip().lower()
        if typed != site.domain:
            return await self._settings_page(call, 422, errors={
                "confirm": f"Type {site.domain} to confirm."})
        try:
            await self.services.sites.remove(site.domain, call.user.id)
        except SiteNotFound:
            raise not_found() from None
        return Redirect("/?done=site_removed")

    # -- activity ---------------------------------------------------------------------

    @route("GET", "/sites/<uuid:site_id>/activity", access=site_read("admin"),
           query=Object({"cursor": String(max_length=200)}),
           summary="A site's audit log: who changed what, when")
    async def activity(self, call: Call) -> Html:
        assert call.site is not None
        rows, result = await audit_page(call, call.site.id)
        return await render_site(call, "site_activity.html", "activity",
                                 entries=rows[:50], next_cursor=result["next_cursor"])

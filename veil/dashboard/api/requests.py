"""
A site's request log: C{/api/v1/sites/{id}/requests} (filters, newest
first, keyset cursors), its streamed CSV and JSON export, one request with
"why was this blocked", and C{/stats}.

Filters are query parameters (L{veil.store.logquery.RequestFilter}):
C{since}, C{until} (ISO 8601 with a zone), C{status} (C{404} or C{4xx}),
C{blocked}, C{client} (an address or a network), C{path} (a prefix),
C{method}, C{attack_type}, C{classification}.  A bad one is a 400 naming
it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from veil.dashboard.explain import Explanation, covers
from veil.dashboard.schema import Array, Boolean, Integer, Object, Response, String
from veil.dashboard.services import Services
from veil.dashboard.web import (
    Call,
    Delegate,
    HttpError,
    invalid,
    missing,
    not_found,
    route,
    site_read,
)
from veil.store.admin import SiteDetail
from veil.store.logquery import (
    EXPORT_FORMATS,
    MAX_LIMIT,
    QueryError,
    QueryTooSlow,
    RequestFilter,
    RequestRecord,
    decode_cursor,
)
from veil.waf.request import Request

_log = Logger()

#: How far back an exclusion's effect is counted by default.
IMPACT_DAYS = 7
#: Stats cover this by default.
STATS_RANGE = timedelta(hours=24)

_FILTER_FIELDS = {
    "since": String(max_length=40, format="date-time", description="from (inclusive)"),
    "until": String(max_length=40, format="date-time", description="to (exclusive)"),
    "status": String(max_length=3, description="a status code (404) or a class (4xx)"),
    "blocked": String(max_length=5, description="true or false"),
    "client": String(max_length=50, description="an address or a network (203.0.113.0/24)"),
    "path": String(max_length=2048, strip=False, description="a path prefix"),
    "method": String(max_length=64),
    "attack_type": String(max_length=64),
    "classification": String(max_length=64, description="benign, suspicious or malicious"),
}
FILTERS = Object({
    **_FILTER_FIELDS,
    "limit": Integer(minimum=1, maximum=MAX_LIMIT, description="rows per page (default 50)"),
    "cursor": String(max_length=200, description="next_cursor of the previous page"),
})
EXPORT_QUERY = Object({**_FILTER_FIELDS,
                       "format": String(choices=tuple(EXPORT_FORMATS), description="csv or"
                                        " json (default csv)")})
STATS_QUERY = Object({
    "since": _FILTER_FIELDS["since"], "until": _FILTER_FIELDS["until"],
    "bucket": Integer(minimum=60, maximum=86400, description="seconds per bucket (default:"
                      " chosen from the range)"),
    "top": Integer(minimum=1, maximum=100, description="entries of each top list (default"
                   " 10)"),
})
IMPACT_QUERY = Object({
    "rule_id": Integer(minimum=1, maximum=2 ** 31 - 1),
    "path_prefix": String(max_length=1024, strip=False),
    "days": Integer(minimum=1, maximum=31, description=f"default {IMPACT_DAYS}"),
}, required=("rule_id",))

RECORD = Object({}, open=True, description="a request-log row: key (its id for this API), ts,"
                " method, host, path, query, status, client_ip, user_agent, duration_ms,"
                " classification, attack_type, blocked, rule_ids, anomaly_score, excerpt, ...")
PAGE = Object({"items": Array(items=RECORD), "next_cursor": String(nullable=True),
               "searched_to": String(format="date-time", nullable=True,
                                     description="set when the page is short because a bounded"
                                                 " number of rows was searched: continue with"
                                                 " next_cursor")})
IMPACT = Object({"since": String(format="date-time"), "until": String(format="date-time"),
                 "matched": Integer(), "let_through": Integer(), "clients": Integer(),
                 "target_counted": Boolean(description="false: the log does not record which"
                                           " part of a request matched, so the count holds"
                                           " for any target")})
EXPLAINED = Object({}, open=True, description="request, verdict (score, threshold, mode),"
                   " rules (description, severity, reads, hits), analysis, proposals")


def record_json(record: RequestRecord) -> dict[str, Any]:
    return {"key": record.cursor, **record.to_json()}


def request_filter(call: Call, params: dict[str, Any]) -> RequestFilter:
    """The filter from validated query fields; 400 naming a bad one."""
    site = call.site
    assert site is not None
    try:
        return RequestFilter.from_params(site.id, {k: v for k, v in params.items()
                                                   if k in _FILTER_FIELDS and v is not None})
    except QueryError as e:
        raise invalid(e.field, e.reason, status=400) from None


def query_failed(error: Exception) -> HttpError:
    if isinstance(error, QueryError):
        return invalid(error.field, error.reason, status=400)
    return HttpError("query_too_slow", str(error), status=503, headers={"Retry-After": "5"})


async def requests_page(call: Call, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    flt = request_filter(call, params)
    try:
        page = await call.services.logs.requests(flt, params.get("limit") or 50,
                                                 cursor=params.get("cursor") or None)
    except (QueryError, QueryTooSlow) as e:
        raise query_failed(e) from None
    return page, {"items": [record_json(r) for r in page.rows],
                  "next_cursor": page.next_cursor, "searched_to": page.searched_to}


async def one_request(call: Call, key: str) -> RequestRecord:
    site = call.site
    assert site is not None
    try:
        ts, row_id = decode_cursor(key)
    except QueryError:
        raise missing("request") from None
    record = await call.services.logs.one(site.id, ts, row_id)
    if record is None:
        raise missing("request")
    return record


def normalised_path(path: str | None) -> str:
    """A logged path as exclusions compare it (percent-decoded, dot segments resolved)."""
    return Request(b"GET", (path or "/").encode("utf-8", "surrogateescape"), []).path


async def impact(call: Call, rule_id: int, severity: int, path_prefix: str | None,
                 threshold: int, days: int = IMPACT_DAYS) -> dict[str, Any]:
    site = call.site
    assert site is not None
    until = call.now()
    try:
        found = await call.services.logs.exclusion_impact(
            site.id, rule_id, severity, path_prefix, threshold, until - timedelta(days=days),
            until)
    except (QueryError, QueryTooSlow) as e:
        raise query_failed(e) from None
    return {"since": found.since, "until": found.until, "matched": found.matched,
            "let_through": found.let_through, "clients": found.clients,
            "target_counted": False}


async def explain(call: Call, record: RequestRecord, site: SiteDetail) -> dict[str, Any]:
    """
    The request, its verdict against the site's threshold, the rules that
    counted (what they look for, what they matched) and, for each rule, a
    proposed exclusion (rule x path x target) with what it would have let
    through over the last week.
    """
    explanation: Explanation | None = None
    if record.rule_ids:
        explanation = await call.services.need("explainer").explain(record)
    score = record.anomaly_score or 0
    path = normalised_path(record.path)
    proposals = []
    existing = []
    if explanation is not None and explanation.rules:
        existing = await call.services.waf.exclusions(site.domain)
    for rule in () if explanation is None else explanation.rules:
        if rule.severity is None:
            continue
        targets = rule.targets
        target = targets[0] if len(targets) == 1 else None
        same = next((e.id for e in existing if (e.rule_id, e.path_prefix, e.target)
                     == (rule.rule_id, path, target)), None)
        proposals.append({
            "rule_id": rule.rule_id, "path_prefix": path, "target": target,
            "targets_seen": list(targets), "existing": same,
            "covers_this_request": covers(rule.rule_id, rule, path, target, path),
            "score_after": score - rule.severity,
            "passes_after": score - rule.severity < site.threshold,
            "impact": await impact(call, rule.rule_id, rule.severity, path, site.threshold),
        })
    return {
        "request": record_json(record),
        "verdict": {"classification": record.classification, "blocked": record.blocked,
                    "attack_type": record.attack_type, "score": record.anomaly_score,
                    "threshold": site.threshold, "mode": site.mode,
                    "note": "The threshold and mode are the site's current ones."},
        "rules": [] if explanation is None else [r.to_json() for r in explanation.rules],
        "analysis": "none" if explanation is None else explanation.analysis,
        "excerpt": record.excerpt,
        "proposals": proposals,
    }


class ExportResource(Resource):
    """The rows of a filter written as they are read (L{RequestLogQueries.export})."""

    isLeaf = True

    def __init__(self, call: Call, flt: RequestFilter, fmt: str) -> None:
        super().__init__()
        self.call = call
        self.flt = flt
        self.fmt = fmt

    def _headers(self, request: IRequest) -> None:
        content_type, suffix = EXPORT_FORMATS[self.fmt]
        site = self.call.site
        assert site is not None
        stamp = self.call.now().strftime("%Y%m%dT%H%M%SZ")
        request.setResponseCode(200)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"content-disposition", (
            f'attachment; filename="{site.domain}-requests-{stamp}.{suffix}"').encode("ascii"))

    def render_HEAD(self, request: IRequest) -> bytes:
        self._headers(request)
        return b""

    def render_GET(self, request: IRequest) -> Any:
        self._headers(request)
        site = self.call.site
        assert site is not None
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))
        d = self.call.services.logs.export(self.flt, self.fmt, request)

        def done(rows: int) -> None:
            if not finished:
                request.finish()

        def failed(failure: Any) -> None:
            # The status is sent: cut the response short, so the client sees
            # an incomplete transfer rather than a complete-looking file.
            if failure.check(QueryTooSlow, QueryError):
                _log.warn("Export of site {site_id} failed: {error}", site_id=str(site.id),
                          error=str(failure.value))
            else:
                _log.failure("Export of site {site_id} failed", failure, site_id=str(site.id))
            if not finished:
                request.loseConnection()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET


class RequestsApi:
    def __init__(self, services: Services) -> None:
        self.services = services

    @route("GET", "/api/v1/sites/<uuid:site_id>/requests", access=site_read("viewer"),
           query=FILTERS, summary="The site's requests, newest first, filtered, a page at a"
                                  " time",
           responses=[Response(200, "a page of requests", PAGE)])
    async def requests(self, call: Call) -> dict[str, Any]:
        _, result = await requests_page(call, call.query)
        return result

    @route("GET", "/api/v1/sites/<uuid:site_id>/requests/export", access=site_read("viewer"),
           query=EXPORT_QUERY,
           summary="Every request that matches the filters, as CSV or a JSON array, streamed",
           description="CSV cells that a spreadsheet would read as a formula start with an"
                       " apostrophe. The rows are read and written page by page; a transfer"
                       " cut short means the export failed.",
           responses=[Response(200, "the rows (CSV)", content_type="text/csv"),
                      Response(200, "the rows (JSON)", content_type="application/json")])
    def export(self, call: Call) -> Delegate:
        flt = request_filter(call, call.query)
        return Delegate(ExportResource(call, flt, call.query.get("format") or "csv"))

    @route("GET", "/api/v1/sites/<uuid:site_id>/requests/<key>", access=site_read("viewer"),
           summary="One request, and why it was blocked: the rules that counted, what they"
                   " matched, the score against the threshold, the redacted excerpt, and a"
                   " proposed exclusion per rule with its effect over the last 7 days",
           responses=[Response(200, "the request explained", EXPLAINED)])
    async def request(self, call: Call) -> dict[str, Any]:
        assert call.site is not None
        record = await one_request(call, call.params["key"])
        site = await self.services.sites.detail(call.site.id)
        if site is None:
            raise not_found()
        return await explain(call, record, site)

    @route("GET", "/api/v1/sites/<uuid:site_id>/exclusions/impact", access=site_read("viewer"),
           query=IMPACT_QUERY,
           summary="How many logged requests an exclusion of a rule (under a path prefix)"
                   " would have let through",
           responses=[Response(200, "the counts", IMPACT)])
    async def impact(self, call: Call) -> dict[str, Any]:
        assert call.site is not None
        rule_id = call.query["rule_id"]
        catalogue = await self.services.need("explainer").catalogue()
        rule = catalogue.get(rule_id)
        if rule is None:
            raise invalid("rule_id", "There is no rule with this id.", status=400)
        site = await self.services.sites.detail(call.site.id)
        if site is None:
            raise not_found()
        prefix = call.query.get("path_prefix") or None
        if prefix is not None and not prefix.startswith("/"):
            raise invalid("path_prefix", "A path prefix starts with /.", status=400)
        return await impact(call, rule_id, rule.severity, prefix, site.threshold,
                            call.query.get("days") or IMPACT_DAYS)

    @route("GET", "/api/v1/sites/<uuid:site_id>/stats", access=site_read("viewer"),
           query=STATS_QUERY,
           summary="Requests, blocked, errors, p50/p95 latency per time bucket; top paths,"
                   " client addresses and attack types (default: the last 24 hours)",
           responses=[Response(200, "the stats", Object({}, open=True))])
    async def stats(self, call: Call) -> dict[str, Any]:
        return (await site_stats(call, call.query)).to_json()


async def site_stats(call: Call, params: dict[str, Any]) -> Any:
    site = call.site
    assert site is not None
    now = call.now()
    try:
        flt = RequestFilter.from_params(site.id, {k: params[k] for k in ("since", "until")
                                                  if params.get(k)})
    except QueryError as e:
        raise invalid(e.field, e.reason, status=400) from None
    until = flt.until or now
    since = flt.since or until - STATS_RANGE
    try:
        return await call.services.logs.stats(site.id, since, until, params.get("bucket"),
                                              params.get("top") or 10)
    except (QueryError, QueryTooSlow) as e:
        raise query_failed(e) from None


__all__ = ["RequestsApi", "explain", "impact", "normalised_path", "one_request",
           "record_json", "requests_page", "site_stats"]

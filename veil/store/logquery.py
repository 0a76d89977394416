"""
The dashboard's reads of the request log, all in this one module (DESIGN
§9): a columnar store could replace it later with the same records.

L{RequestLogQueries} runs every query on the database's thread pool and
fires with plain records:

  - L{RequestLogQueries.requests}: a site's requests, newest first, with
    filters (L{RequestFilter}), one page at a time.  Pages continue after a
    I{cursor}, the C{(ts, id)} of the last row seen (keyset pagination: no
    offsets, so rows arriving meanwhile shift nothing).  The range is
    searched newest first in I{slices} of a few thousand rows (cut from the
    hourly rollup's counts), and a page is cut short once the slices
    searched hold C{search_rows} rows: a rare filter over a month of a busy
    site would otherwise read every row of it in one call.  The short page
    then carries a cursor to continue from, and the time down to which the
    range has been searched.
  - L{RequestLogQueries.latest}: the most recent rows of a site (the live
    stream's hydration).
  - L{RequestLogQueries.export}: every row that matches, as CSV or JSON,
    written page by page to a consumer that can pause it (never the whole
    result in memory).
  - L{RequestLogQueries.stats}: per time bucket, requests, blocked, errors,
    latency percentiles, and over the range the top paths, client addresses
    and attack types.  Buckets of five minutes or more come from the
    rollups that schema 007's trigger keeps (exact counts, percentiles
    estimated from a latency histogram); shorter ones from the rows.

Slices and rollups are described in C{schema/007_request_log_queries.sql}
and C{docs/performance.md}.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import ipaddress
import json
import math
import uuid
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from veil.errors import VeilError
from veil.store.logrows import COLUMNS, LogRow, select_list

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Rows per page: the default and the most (an export's pages may be larger).
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
EXPORT_PAGE_MAX = 5000
#: Stats from the rows themselves (buckets under 5 minutes) cover at most this.
RAW_RANGE = timedelta(hours=6)
#: Buckets a stats answer may have at most.
MAX_BUCKETS = 1500
#: Bucket widths (seconds) chosen when none is asked for, smallest first.
AUTO_BUCKETS = (60, 300, 900, 3600, 10800, 21600, 86400)
#: The latency histogram's bounds in ms (schema 007, veil_request_log_latency_bounds).
LATENCY_BOUNDS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
    1000, 1500, 2000, 3000, 5000, 7500, 10000, 15000, 30000, 60000)

_TEXT_MAX = 2048
_NAME_MAX = 64


class QueryError(VeilError):
    """
    A query's parameters are not acceptable (the API answers 400).

    @ivar field: the parameter at fault.
    @ivar reason: what is wrong with it, for a human.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class QueryTooSlow(VeilError):
    """The database gave up on a query (its statement time-out)."""


class RequestRecord(namedtuple("RequestRecord", ("id",) + COLUMNS,
                               defaults=tuple(LogRow._field_defaults.values()))):
    """
    One row of the request log, as the dashboard reads it: its C{id}, then
    the columns of a L{LogRow} (L{COLUMNS}), with C{rule_ids} as a list.
    """

    __slots__ = ()

    @property
    def cursor(self) -> str:
        """The cursor that continues after this row."""
        return encode_cursor(self.ts, self.id)

    def log_row(self) -> LogRow:
        """The row as the proxy logged it (without its id)."""
        row = LogRow._make(self[1:])
        return row if self.rule_ids is None else row._replace(rule_ids=tuple(self.rule_ids))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (UUIDs and times as strings)."""
        data = self._asdict()
        data["ts"] = self.ts.isoformat()
        data["site_id"] = None if self.site_id is None else str(self.site_id)
        return data


#: The columns of a L{RequestRecord}, in order.
RECORD_COLUMNS: tuple[str, ...] = RequestRecord._fields

_SELECT = select_list(RECORD_COLUMNS)


# -- cursors -------------------------------------------------------------------

def encode_cursor(ts: datetime, row_id: int) -> str:
    """
    An opaque cursor for the position C{(ts, row_id)}: URL-safe base64 of
    C{[{"t": iso time}, id]}, the encoding of the dashboard's other lists.
    """
    text = json.dumps([{"t": ts.isoformat()}, row_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode("utf-8")).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The position in C{cursor}; L{QueryError} for anything else."""
    try:
        if len(cursor) > 200:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, row_id = json.loads(raw.decode("utf-8"))
        ts = datetime.fromisoformat(stamp["t"])
        if ts.tzinfo is None or type(row_id) is not int or not 0 <= row_id < 2 ** 63:
            raise ValueError("not a position")
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeDecodeError):
        raise QueryError("cursor", "this cursor was not made by this list;"
                                   " start from the first page") from None
    return ts, row_id


# -- filters -------------------------------------------------------------------

@attrs.frozen
class RequestFilter:
    """
    Which requests of a site to read.

    @ivar since: inclusive; C{until}: exclusive (both aware datetimes).
    @ivar status: one status code; C{status_class}: 1 to 5 (C{4} = 400-499).
    @ivar client: an address (a /32 or /128) or a network.
    @ivar path_prefix: rows whose path starts with it.
    """

    site_id: uuid.UUID
    since: datetime | None = None
    until: datetime | None = None
    status: int | None = None
    status_class: int | None = None
    blocked: bool | None = None
    client: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    path_prefix: str | None = None
    method: str | None = None
    attack_type: str | None = None
    classification: str | None = None

    def __attrs_post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise QueryError(name, "give a time zone (for example 2026-12-01T10:00:00Z)")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise QueryError("until", "must be later than since")
        if self.status is not None and not 100 <= self.status <= 599:
            raise QueryError("status", "a status code is between 100 and 599")
        if self.status_class is not None and not 1 <= self.status_class <= 5:
            raise QueryError("status", "a status class is 1xx to 5xx")
        if self.path_prefix is not None and (not self.path_prefix or
                                             len(self.path_prefix) > _TEXT_MAX):
            raise QueryError("path", f"a path prefix has 1 to {_TEXT_MAX} characters")
        for name in ("method", "attack_type", "classification"):
            value = getattr(self, name)
            if value is not None and not (0 < len(value) <= _NAME_MAX and value.isprintable()):
                raise QueryError(name, f"expected 1 to {_NAME_MAX} printable characters")

    @classmethod
    def from_params(cls, site_id: uuid.UUID, params: Mapping[str, str]) -> RequestFilter:
        """
        A filter from query parameters: C{since}, C{until} (ISO 8601 with a
        zone), C{status} (C{404} or C{4xx}), C{blocked} (C{true}/C{false}),
        C{client} (an address or a network), C{path} (a prefix), C{method},
        C{attack_type}, C{classification}.  Empty values are ignored;
        anything else raises L{QueryError} naming the parameter.
        """
        get = {k: v.strip() for k, v in params.items() if v is not None and v.strip()}
        status = status_class = None
        if "status" in get:
            text = get["status"].lower()
            if len(text) == 3 and text.endswith("xx") and text[0] in "12345":
                status_class = int(text[0])
            elif text.isdigit() and len(text) == 3:
                status = int(text)
            else:
                raise QueryError("status", "expected a status code (404) or a class (4xx)")
        blocked = None
        if "blocked" in get:
            flag = get["blocked"].lower()
            if flag not in ("true", "false", "1", "0", "yes", "no"):
                raise QueryError("blocked", "expected true or false")
            blocked = flag in ("true", "1", "yes")
        client = None
        if "client" in get:
            try:
                client = ipaddress.ip_network(get["client"], strict=False)
            except ValueError:
                raise QueryError("client", "expected an IP address or a network such as"
                                           " 203.0.113.0/24") from None
        path = get.get("path")
        if path is not None and not path.startswith("/"):
            raise QueryError("path", "a path prefix starts with /")
        return cls(site_id, since=_time(get, "since"), until=_time(get, "until"),
                   status=status, status_class=status_class, blocked=blocked, client=client,
                   path_prefix=path, method=get.get("method", "").upper() or None,
                   attack_type=get.get("attack_type"), classification=get.get("classification"))

    def conditions(self) -> tuple[list[sql.Composable], list[Any]]:
        """The WHERE conditions (site and filters, not the time range) and their values."""
        where: list[sql.Composable] = [sql.SQL("site_id = %s")]
        values: list[Any] = [self.site_id]
        if self.status is not None:
            where.append(sql.SQL("status = %s"))
            values.append(self.status)
        if self.status_class is not None:
            where.append(sql.SQL("status >= %s AND status < %s"))
            values += [self.status_class * 100, self.status_class * 100 + 100]
        if self.blocked is not None:
            where.append(sql.SQL("blocked") if self.blocked else sql.SQL("NOT blocked"))
        if self.client is not None:
            if self.client.num_addresses == 1:
                where.append(sql.SQL("client_ip = %s::inet"))
                values.append(str(self.client.network_address))
            else:
                where.append(sql.SQL("client_ip <<= %s::cidr"))
                values.append(str(self.client))
        if self.path_prefix is not None:
            where.append(sql.SQL("path LIKE %s"))
            values.append(_like_prefix(self.path_prefix))
        for column in ("method", "attack_type", "classification"):
            value = getattr(self, column)
            if value is not None:
                where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                values.append(value)
        return where, values


def _time(params: Mapping[str, str], name: str) -> datetime | None:
    text = params.get(name)
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise QueryError(name, "expected an ISO 8601 time such as 2026-12-01T10:00:00Z") from None
    if value.tzinfo is None:
        raise QueryError(name, "give a time zone (for example 2026-12-01T10:00:00Z)")
    return value


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def parse_limit(text: str | None, default: int = DEFAULT_LIMIT, most: int = MAX_LIMIT) -> int:
    """A page size from a query parameter (L{QueryError} unless 1 to C{most})."""
    if text is None or not text.strip():
        return default
    if not text.strip().isdigit() or not 1 <= int(text) <= most:
        raise QueryError("limit", f"expected a number from 1 to {most}")
    return int(text)


# -- pages of requests -----------------------------------------------------------

@attrs.frozen
class Page:
    """
    One page of requests, newest first.

    @ivar next_cursor: where the next page starts, or C{None} when the
        range is exhausted.
    @ivar next_after: the same position as C{(ts, id)}.
    @ivar searched_to: when the page is short because the query searched as
        many rows as a call may (more may match further back), the time down
        to which the range has been searched; otherwise C{None}.
    """

    rows: tuple[RequestRecord, ...]
    next_after: tuple[datetime, int] | None
    searched_to: datetime | None = None

    @property
    def next_cursor(self) -> str | None:
        return None if self.next_after is None else encode_cursor(*self.next_after)


@attrs.frozen
class _Slice:
    """
    A time range [lo, hi) of a search, newest first (C{None}: unbounded),
    and the rows it holds by the hourly rollup.
    """

    lo: datetime | None
    hi: datetime | None
    rows: int


#: Rows a search slice covers (from the hourly rollup's counts), and the
#: rows a call searches before it answers a short page.
SLICE_ROWS = 2500
SEARCH_ROWS = 10000


def _slices(cur: psycopg.Cursor, site: uuid.UUID, lo: datetime | None,
            hi: datetime | None, per_slice: int) -> list[_Slice]:
    """
    Cut [lo, hi) into slices of about C{per_slice} rows, newest first, at
    hour boundaries, from the hourly rollup (hours with no rows are skipped
    over).  The first slice reaches up to C{hi}, the last down to C{lo}.
    """
    conditions = [sql.SQL("site_id = %s")]
    values: list[Any] = [site]
    if lo is not None:
        conditions.append(sql.SQL("bucket >= %s"))
        values.append(_floor(lo, 3600))
    if hi is not None:
        conditions.append(sql.SQL("bucket < %s"))
        values.append(hi)
    cur.execute(sql.SQL("SELECT bucket, requests FROM request_log_hourly WHERE {}"
                        " ORDER BY bucket DESC").format(sql.SQL(" AND ").join(conditions)),
                values)
    slices: list[_Slice] = []
    top, count = hi, 0
    for bucket, requests in cur.fetchall():
        count += requests
        if count >= per_slice:
            bottom = bucket if lo is None or bucket > lo else lo
            slices.append(_Slice(bottom, top, count))
            top, count = bottom, 0
    if not slices or top != lo:
        slices.append(_Slice(lo, top, count))
    return slices


def _requests(cur: psycopg.Cursor, flt: RequestFilter, limit: int,
              after: tuple[datetime, int] | None, search_rows: float,
              per_slice: int) -> Page:
    """One page (DB thread); see L{RequestLogQueries.requests}."""
    searched = 0
    where, values = flt.conditions()
    hi = flt.until
    keyset = after is not None and (hi is None or after[0] < hi)
    if keyset:
        assert after is not None
        hi = after[0]
    slices = _slices(cur, flt.site_id, flt.since, hi, per_slice)
    rows: list[RequestRecord] = []
    for index, piece in enumerate(slices):
        conditions = list(where)
        params = list(values)
        if piece.lo is not None:
            conditions.append(sql.SQL("ts >= %s"))
            params.append(piece.lo)
        if index == 0 and keyset:
            # After (ts, id), written so that the index serves "ts <= ...".
            assert after is not None
            conditions.append(sql.SQL("ts <= %s AND (ts < %s OR id < %s)"))
            params += [after[0], after[0], after[1]]
        elif piece.hi is not None:
            conditions.append(sql.SQL("ts < %s"))
            params.append(piece.hi)
        params.append(limit + 1 - len(rows))
        cur.execute(sql.SQL("SELECT {} FROM request_log WHERE {} ORDER BY ts DESC, id DESC"
                            " LIMIT %s").format(_SELECT, sql.SQL(" AND ").join(conditions)),
                    params)
        rows.extend(RequestRecord(*r) for r in cur.fetchall())
        if len(rows) > limit:
            last = rows[limit - 1]
            return Page(tuple(rows[:limit]), (last.ts, last.id))
        searched += piece.rows
        if index + 1 < len(slices) and searched >= search_rows:
            assert piece.lo is not None
            # Searched down to piece.lo: continue below it (no row has id 0).
            return Page(tuple(rows), (piece.lo, 0), piece.lo)
    return Page(tuple(rows), None)


def _latest(cur: psycopg.Cursor, site: uuid.UUID, limit: int) -> list[RequestRecord]:
    cur.execute(sql.SQL("SELECT {} FROM request_log WHERE site_id = %s"
                        " ORDER BY ts DESC, id DESC LIMIT %s").format(_SELECT), (site, limit))
    return [RequestRecord(*r) for r in cur.fetchall()]


def _one(cur: psycopg.Cursor, site: uuid.UUID, ts: datetime,
         row_id: int) -> RequestRecord | None:
    cur.execute(sql.SQL("SELECT {} FROM request_log WHERE site_id = %s AND ts = %s AND id = %s")
                .format(_SELECT), (site, ts, row_id))
    found = cur.fetchone()
    return None if found is None else RequestRecord(*found)


@attrs.frozen
class Impact:
    """
    What an exclusion of one rule would have changed over a range of a
    site's logged requests (L{RequestLogQueries.exclusion_impact}).

    @ivar matched: requests the rule matched (under the path prefix).
    @ivar let_through: of those, the malicious ones (blocked, or logged as
        "would block" in monitor mode) whose score without the rule's
        severity is below the threshold: they would have passed.
    @ivar clients: distinct client addresses among C{let_through}.
    """

    since: datetime
    until: datetime
    matched: int
    let_through: int
    clients: int


def _impact(cur: psycopg.Cursor, site: uuid.UUID, rule_id: int, severity: int,
            path_prefix: str | None, threshold: int, since: datetime,
            until: datetime) -> Impact:
    conditions = [sql.SQL("site_id = %s AND ts >= %s AND ts < %s"
                          " AND rule_ids @> ARRAY[%s::integer]")]
    values: list[Any] = [site, since, until, rule_id]
    if path_prefix is not None:
        conditions.append(sql.SQL("path LIKE %s"))
        values.append(_like_prefix(path_prefix))
    # Served by the partial index on attacks (schema 001): rows with rule ids
    # are the non-benign ones.
    conditions.append(sql.SQL("attack_type IS NOT NULL"))
    cur.execute(sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE passes),"
        " count(DISTINCT client_ip) FILTER (WHERE passes) FROM ("
        " SELECT client_ip, classification = 'malicious'"
        "   AND coalesce(anomaly_score, 0) - %s < %s AS passes"
        " FROM request_log WHERE {}) AS hits").format(sql.SQL(" AND ").join(conditions)),
        [severity, threshold, *values])
    matched, passes, clients = cur.fetchone()
    return Impact(since, until, matched, passes, clients)


# -- stats -----------------------------------------------------------------------

@attrs.frozen
class Bucket:
    """
    The requests of one time bucket (or of the whole range, for totals).

    @ivar start: the bucket's start (UTC).
    @ivar client_errors: status 400-499; C{server_errors}: 500 and above.
    @ivar p50_ms: median duration; C{p95_ms}: 95th percentile (C{None}
        without rows).
    """

    start: datetime
    requests: int
    blocked: int
    client_errors: int
    server_errors: int
    p50_ms: float | None
    p95_ms: float | None

    @property
    def error_rate(self) -> float:
        """The share of requests answered with a server error (5xx)."""
        return self.server_errors / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "requests": self.requests,
                "blocked": self.blocked, "client_errors": self.client_errors,
                "server_errors": self.server_errors, "error_rate": self.error_rate,
                "p50_ms": self.p50_ms, "p95_ms": self.p95_ms}


@attrs.frozen
class Count:
    """A key (a path, an address, an attack type) and its requests."""

    key: str
    requests: int


@attrs.frozen
class Stats:
    """
    A site's requests over [since, until), per bucket of C{bucket_seconds}.

    @ivar since: the range asked for, widened to whole buckets.
    @ivar latency_exact: whether the percentiles come from every row
        (buckets under 5 minutes: C{percentile_cont}) or are estimated from
        the rollup's latency histogram (inside the histogram bucket of the
        duration of rank ceil(q * n); the buckets are 1.3 to 2.5 times wide).
    @ivar tops_exact: whether the top paths and addresses count every row of
        the range; when the range holds more than C{top_rows} rows they are
        estimated from a sample spread over it, C{tops_rows} rows.
    """

    site_id: uuid.UUID
    since: datetime
    until: datetime
    bucket_seconds: int
    buckets: tuple[Bucket, ...]
    totals: Bucket
    top_paths: tuple[Count, ...]
    top_clients: tuple[Count, ...]
    top_attack_types: tuple[Count, ...]
    latency_exact: bool
    tops_exact: bool
    tops_rows: int

    def to_json(self) -> dict[str, Any]:
        def counts(items: Sequence[Count]) -> list[dict[str, Any]]:
            return [{"key": c.key, "requests": c.requests} for c in items]
        return {
            "site_id": str(self.site_id), "since": self.since.isoformat(),
            "until": self.until.isoformat(), "bucket_seconds": self.bucket_seconds,
            "buckets": [b.to_json() for b in self.buckets], "totals": self.totals.to_json(),
            "top_paths": counts(self.top_paths), "top_clients": counts(self.top_clients),
            "top_attack_types": counts(self.top_attack_types),
            "latency_exact": self.latency_exact, "tops_exact": self.tops_exact,
            "tops_rows": self.tops_rows,
        }


def _floor(ts: datetime, seconds: int) -> datetime:
    offset = (ts - EPOCH) // timedelta(seconds=seconds)
    return EPOCH + timedelta(seconds=offset * seconds)


def _ceil(ts: datetime, seconds: int) -> datetime:
    floor = _floor(ts, seconds)
    return floor if floor == ts else floor + timedelta(seconds=seconds)


def choose_bucket(since: datetime, until: datetime, most: int = 300) -> int:
    """The smallest of L{AUTO_BUCKETS} that cuts [since, until) into at most C{most} buckets."""
    span = (until - since).total_seconds()
    for seconds in AUTO_BUCKETS:
        if span / seconds <= most:
            return seconds
    return AUTO_BUCKETS[-1]


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """
    The C{q} quantile (0 to 1) of a latency histogram over L{LATENCY_BOUNDS}:
    the bucket that holds it, interpolated geometrically inside it
    (linearly in the first; the last, 60 s and more, answers 60 s).
    """
    total = sum(histogram)
    if not total:
        return None
    target = q * total
    seen = 0
    for k, count in enumerate(histogram):
        if count and seen + count >= target:
            if k >= len(LATENCY_BOUNDS):
                return float(LATENCY_BOUNDS[-1])
            upper = LATENCY_BOUNDS[k]
            fraction = (target - seen) / count
            if k == 0:
                return upper * fraction
            lower = LATENCY_BOUNDS[k - 1]
            return lower * (upper / lower) ** fraction
        seen += count
    return float(LATENCY_BOUNDS[-1])


def _series_raw(cur: psycopg.Cursor, site: uuid.UUID, since: datetime, until: datetime,
                seconds: int) -> tuple[dict[datetime, Bucket], Bucket]:
    cur.execute(
        """
        SELECT date_bin(make_interval(secs => %s), ts, TIMESTAMPTZ 'epoch') AS b,
               count(*), count(*) FILTER (WHERE blocked),
               count(*) FILTER (WHERE status >= 400 AND status < 500),
               count(*) FILTER (WHERE status >= 500),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms),
               percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)
        FROM request_log WHERE site_id = %s AND ts >= %s AND ts < %s
        GROUP BY GROUPING SETS ((1), ())
        """, (seconds, site, since, until))
    series: dict[datetime, Bucket] = {}
    totals = Bucket(since, 0, 0, 0, 0, None, None)
    for b, requests, blocked, client, server, p50, p95 in cur.fetchall():
        bucket = Bucket(since if b is None else b, requests, blocked, client, server,
                        None if p50 is None else float(p50), None if p95 is None else float(p95))
        if b is None:
            totals = bucket
        else:
            series[b] = bucket
    return series, totals


def _series_rollup(cur: psycopg.Cursor, table: str, site: uuid.UUID, since: datetime,
                   until: datetime, seconds: int) -> tuple[dict[datetime, Bucket], Bucket]:
    cur.execute(sql.SQL(
        """
        SELECT date_bin(make_interval(secs => %s), bucket, TIMESTAMPTZ 'epoch') AS b,
               requests, blocked, client_errors, server_errors, latency
        FROM {} WHERE site_id = %s AND bucket >= %s AND bucket < %s
        """).format(sql.Identifier(table)), (seconds, site, since, until))
    sums: dict[datetime, list[Any]] = {}
    every = [0, 0, 0, 0, [0] * (len(LATENCY_BOUNDS) + 1)]
    for b, requests, blocked, client, server, latency in cur.fetchall():
        entry = sums.get(b)
        if entry is None:
            entry = sums[b] = [0, 0, 0, 0, [0] * (len(LATENCY_BOUNDS) + 1)]
        for target in (entry, every):
            target[0] += requests
            target[1] += blocked
            target[2] += client
            target[3] += server
            histogram = target[4]
            for i, n in enumerate(latency):
                histogram[i] += n

    def bucket(start: datetime, entry: list[Any]) -> Bucket:
        return Bucket(start, entry[0], entry[1], entry[2], entry[3],
                      percentile(entry[4], 0.5), percentile(entry[4], 0.95))

    return {b: bucket(b, e) for b, e in sums.items()}, bucket(since, every)


#: Top paths and addresses count every row up to this many, else a sample
#: of about this many rows.
TOP_ROWS = 5000
#: The sample's time slices.
TOP_SLICES = 40

_TOPS = """
    SELECT 'path', path, sum(w) FROM rows WHERE path IS NOT NULL
    GROUP BY 2 ORDER BY 3 DESC, 2 LIMIT %(top)s)
    UNION ALL
    (SELECT 'client', host(client_ip), sum(w) FROM rows WHERE client_ip IS NOT NULL
    GROUP BY 2 ORDER BY 3 DESC, 2 LIMIT %(top)s)
"""


def _tops(cur: psycopg.Cursor, site: uuid.UUID, since: datetime, until: datetime, top: int,
          slices: list[tuple[datetime, datetime, int]] | None,
          sample: int) -> tuple[list[Count], list[Count], int]:
    """
    The top paths and client addresses of the range: from every row
    (C{slices=None}), or estimated from samples spread evenly over it: of
    each slice C{(lo, hi, rows it holds)}, its first C{sample / len(slices)}
    rows, each counted for as many as the slice holds over the rows taken.
    """
    params: dict[str, Any] = {"site": site, "since": since, "until": until, "top": top}
    if slices is None:
        statement = ("WITH rows AS MATERIALIZED (SELECT path, client_ip, 1.0::float8 AS w"
                     " FROM request_log WHERE site_id = %(site)s AND ts >= %(since)s"
                     " AND ts < %(until)s), n AS (SELECT count(*) AS n FROM rows)"
                     " SELECT 'rows', NULL, n FROM n UNION ALL (" + _TOPS)
    else:
        params.update(los=[lo for lo, _, _ in slices], his=[hi for _, hi, _ in slices],
                      held=[n for _, _, n in slices], each=max(1, sample // len(slices)))
        statement = """
            WITH bounds AS (
                SELECT lo, hi, held, s FROM unnest(%(los)s::timestamptz[],
                    %(his)s::timestamptz[], %(held)s::bigint[])
                    WITH ORDINALITY AS b(lo, hi, held, s)),
            taken AS MATERIALIZED (
                SELECT b.s, b.held, r.path, r.client_ip FROM bounds b CROSS JOIN LATERAL (
                    SELECT path, client_ip FROM request_log
                    WHERE site_id = %(site)s AND ts >= b.lo AND ts < b.hi
                    ORDER BY ts LIMIT %(each)s) AS r),
            weight AS (SELECT s, held::float8 / count(*) AS w FROM taken GROUP BY s, held),
            rows AS (SELECT path, client_ip, w FROM taken JOIN weight USING (s))
            SELECT 'rows', NULL, count(*) FROM taken UNION ALL (""" + _TOPS
    cur.execute(statement, params)
    paths: list[Count] = []
    clients: list[Count] = []
    examined = 0
    for kind, key, value in cur.fetchall():
        if kind == "rows":
            examined = int(value)
        else:
            (paths if kind == "path" else clients).append(Count(key, round(value)))
    return paths, clients, examined


def _sample_slices(buckets: Sequence[Bucket], seconds: int,
                   count: int) -> list[tuple[datetime, datetime, int]]:
    """C{count} runs of consecutive buckets that hold rows, as (lo, hi, rows)."""
    step = timedelta(seconds=seconds)
    per = max(1, math.ceil(len(buckets) / count))
    slices = []
    for i in range(0, len(buckets), per):
        run = buckets[i:i + per]
        held = sum(b.requests for b in run)
        if held:
            slices.append((run[0].start, run[-1].start + step, held))
    return slices


def _stats(cur: psycopg.Cursor, site: uuid.UUID, since: datetime, until: datetime,
           seconds: int, top: int, top_rows: int, top_slices: int) -> Stats:
    if seconds % 300:
        series, totals = _series_raw(cur, site, since, until, seconds)
        latency_exact = True
    else:
        table = "request_log_hourly" if seconds % 3600 == 0 else "request_log_5min"
        series, totals = _series_rollup(cur, table, site, since, until, seconds)
        latency_exact = False
    attacks = _attack_types(cur, site, since, until, top)
    step = timedelta(seconds=seconds)
    buckets = []
    at = since
    while at < until:
        buckets.append(series.get(at) or Bucket(at, 0, 0, 0, 0, None, None))
        at += step
    tops_exact = totals.requests <= top_rows
    slices = None if tops_exact else _sample_slices(buckets, seconds, top_slices)
    paths, clients, examined = _tops(cur, site, since, until, top, slices, top_rows)
    return Stats(site, since, until, seconds, tuple(buckets), totals, tuple(paths),
                 tuple(clients), tuple(attacks), latency_exact, tops_exact, examined)


def _attack_types(cur: psycopg.Cursor, site: uuid.UUID, since: datetime, until: datetime,
                  top: int) -> list[Count]:
    """From the hourly rollup for whole hours, from the rows for the edges."""
    first_hour, last_hour = _ceil(since, 3600), _floor(until, 3600)
    counts: dict[str, int] = {}
    pieces: list[tuple[datetime, datetime]] = []
    if first_hour < last_hour:
        cur.execute("SELECT attack_type, sum(requests) FROM request_log_attacks_hourly"
                    " WHERE site_id = %s AND bucket >= %s AND bucket < %s GROUP BY 1",
                    (site, first_hour, last_hour))
        for key, n in cur.fetchall():
            counts[key] = counts.get(key, 0) + int(n)
        pieces = [(since, first_hour), (last_hour, until)]
    else:
        pieces = [(since, until)]
    for lo, hi in pieces:
        if lo >= hi:
            continue
        # Served by the partial index on attacks (schema 001).
        cur.execute("SELECT attack_type, count(*) FROM request_log WHERE site_id = %s"
                    " AND ts >= %s AND ts < %s AND attack_type IS NOT NULL GROUP BY 1",
                    (site, lo, hi))
        for key, n in cur.fetchall():
            counts[key] = counts.get(key, 0) + int(n)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [Count(k, n) for k, n in ranked]


# -- export ----------------------------------------------------------------------

#: Characters that make a spreadsheet read a cell as a formula (OWASP's list).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """
    A value for a CSV cell: text that a spreadsheet would take for a
    formula gets a leading apostrophe (CSV injection); numbers, booleans
    and times go as they are.
    """
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bool, int, float, uuid.UUID)):
        return str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    text = str(value)
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text


def csv_header() -> bytes:
    return _csv_lines([RECORD_COLUMNS])


def csv_rows(records: Iterable[RequestRecord]) -> bytes:
    """Records as CSV lines (RFC 4180 quoting, CRLF), each cell through L{csv_cell}."""
    return _csv_lines([csv_cell(v) for v in record] for record in records)


def _csv_lines(rows: Iterable[Iterable[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def json_rows(records: Sequence[RequestRecord], first: bool) -> bytes:
    """Records as elements of a JSON array, one per line (after a comma unless C{first})."""
    lines = [json.dumps(r.to_json(), separators=(",", ":")) for r in records]
    if not lines:
        return b""
    return (("" if first else ",\n") + ",\n".join(lines)).encode("utf-8")


#: Export formats: content type and file suffix.
EXPORT_FORMATS = {"csv": ("text/csv; charset=utf-8", "csv"),
                  "json": ("application/json", "json")}


@implementer(IPushProducer)
@attrs.define(eq=False)
class _Export:
    """Pages to a consumer, one at a time, while the consumer wants them."""

    queries: RequestLogQueries
    flt: RequestFilter
    fmt: str
    consumer: IConsumer
    page_size: int
    rows: int = 0
    _paused: Deferred[None] | None = None
    _stopped: bool = False

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        self.resumeProducing()

    async def run(self) -> int:
        self.consumer.registerProducer(self, True)
        try:
            self.consumer.write(csv_header() if self.fmt == "csv" else b"[\n")
            after: tuple[datetime, int] | None = None
            while True:
                if self._paused is not None:
                    await self._paused
                if self._stopped:
                    break
                page = await self.queries.requests(self.flt, self.page_size, after=after,
                                                   search_rows=math.inf)
                if self._stopped:
                    break
                if self.fmt == "csv":
                    chunk = csv_rows(page.rows)
                else:
                    chunk = json_rows(page.rows, first=self.rows == 0)
                self.rows += len(page.rows)
                if page.next_after is None and self.fmt == "json":
                    chunk += b"\n]\n"
                if chunk:
                    self.consumer.write(chunk)
                if page.next_after is None:
                    break
                after = page.next_after
        finally:
            self.consumer.unregisterProducer()
        return self.rows


# -- the module's face -------------------------------------------------------------

@attrs.define(eq=False)
class RequestLogQueries:
    """
    The dashboard's request-log queries, each one transaction on the
    database's thread pool.

    @ivar db: a L{veil.store.db.Database}.
    @ivar timeout: each query's statement time-out, in seconds (past it:
        L{QueryTooSlow}).
    @ivar search_rows: how many rows (by the rollup) L{requests} searches
        before it answers a short page (checked between slices).
    @ivar slice_rows: how many rows a slice holds.
    """

    db: Any
    timeout: float = 10.0
    search_rows: float = SEARCH_ROWS
    slice_rows: int = SLICE_ROWS
    top_rows: int = TOP_ROWS
    top_slices: int = TOP_SLICES

    def _run(self, desc: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        timeout_ms = max(1, int(self.timeout * 1000))

        def run(cur: psycopg.Cursor) -> Any:
            cur.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(
                sql.Literal(timeout_ms)))
            try:
                return fn(cur, *args)
            except pgerrors.QueryCanceled:
                raise QueryTooSlow("the query took too long: narrow the time range"
                                   " or the filters") from None

        return self.db.transact(desc, run)

    def requests(self, flt: RequestFilter, limit: int = DEFAULT_LIMIT,
                 cursor: str | None = None, after: tuple[datetime, int] | None = None,
                 search_rows: float | None = None) -> Deferred[Page]:
        """
        One page of C{flt}'s requests, newest first, continuing after
        C{cursor} (a L{Page.next_cursor}) or C{after} (a position); see
        L{Page} for short pages.  C{search_rows} overrides L{search_rows}
        (C{math.inf}: search to the end of the range).
        """
        if not 1 <= limit <= EXPORT_PAGE_MAX:
            raise QueryError("limit", f"expected a number from 1 to {MAX_LIMIT}")
        if cursor is not None:
            after = decode_cursor(cursor)
        rows = self.search_rows if search_rows is None else search_rows
        return self._run("logquery.requests", _requests, flt, limit, after, rows,
                         self.slice_rows)

    def latest(self, site_id: uuid.UUID, limit: int) -> Deferred[list[RequestRecord]]:
        """The C{limit} most recent rows of a site, by time, newest first."""
        return self._run("logquery.latest", _latest, site_id, limit)

    def one(self, site_id: uuid.UUID, ts: datetime, row_id: int) -> Deferred[RequestRecord | None]:
        """The row of site C{site_id} at position C{(ts, row_id)} (a cursor's), or C{None}."""
        return self._run("logquery.one", _one, site_id, ts, row_id)

    def exclusion_impact(self, site_id: uuid.UUID, rule_id: int, severity: int,
                         path_prefix: str | None, threshold: int, since: datetime,
                         until: datetime) -> Deferred[Impact]:
        """
        Over C{[since, until)}: how many of the site's logged requests rule
        C{rule_id} (of C{severity}) matched under C{path_prefix}, and how
        many of them an exclusion of it would have let through at
        C{threshold} (L{Impact}).  The log keeps which rules matched, not
        which part of the request, so a target the exclusion is limited to
        is not taken into account: the count is an upper bound.
        """
        if since >= until:
            raise QueryError("until", "must be later than since")
        return self._run("logquery.exclusion_impact", _impact, site_id, rule_id, severity,
                         path_prefix, threshold, since, until)

    def stats(self, site_id: uuid.UUID, since: datetime, until: datetime,
              bucket: int | None = None, top: int = 10) -> Deferred[Stats]:
        """
        C{site_id}'s requests over [since, until) (widened to whole
        buckets), per bucket of C{bucket} seconds (a multiple of 60;
        default: L{choose_bucket}).
        """
        for name, value in (("since", since), ("until", until)):
            if value.tzinfo is None:
                raise QueryError(name, "give a time zone (for example 2026-12-01T10:00:00Z)")
        if since >= until:
            raise QueryError("until", "must be later than since")
        seconds = choose_bucket(since, until) if bucket is None else bucket
        if seconds < 60 or seconds % 60 or (seconds >= 300 and seconds % 300):
            raise QueryError("bucket", "a bucket is 1 to 4 minutes or a multiple of 5 minutes"
                                       " (in seconds)")
        if not 1 <= top <= 100:
            raise QueryError("top", "expected a number from 1 to 100")
        since, until = _floor(since, seconds), _ceil(until, seconds)
        if (until - since) / timedelta(seconds=seconds) > MAX_BUCKETS:
            raise QueryError("bucket", f"at most {MAX_BUCKETS} buckets: choose a wider bucket")
        if seconds < 300 and until - since > RAW_RANGE:
            raise QueryError("bucket", "over more than 6 hours, buckets are 5 minutes or more")
        return self._run("logquery.stats", _stats, site_id, since, until, seconds, top,
                         self.top_rows, self.top_slices)

    def export(self, flt: RequestFilter, fmt: str, consumer: IConsumer,
               page_size: int = 1000) -> Deferred[int]:
        """
        Write every request of C{flt}, newest first, to C{consumer} (for
        example a C{twisted.web} request) as C{fmt} (C{"csv"} or
        C{"json"}: an array), a page at a time, pausing while the consumer
        asks to; fire with the rows written once done.  The caller sets
        the response headers (L{EXPORT_FORMATS}) and finishes the response.
        """
        if fmt not in EXPORT_FORMATS:
            raise QueryError("format", "expected csv or json")
        return Deferred.fromCoroutine(_Export(self, flt, fmt, consumer, page_size).run())

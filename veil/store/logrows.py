"""
Request-log rows, and batches of them ready for C{COPY}.

A L{LogRow} is what the proxy records for one request: a named tuple, so
that making one per request is cheap.  L{RequestLog.append
<veil.store.requestlog.RequestLog.append>} turns it into a line of
PostgreSQL's C{COPY} text format at once (L{copy_line}), on the reactor
thread, and collects the lines in a L{Batch}.  The log's writer thread then
sends a batch with a few large C{COPY} writes instead of formatting it row
by row: measured under the shared benchmark, formatting on the writer
thread held the GIL for a fifth of the reactor's time (C{docs/performance.md}).

The same lines are what the spool keeps on disk while the database is away.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from psycopg import sql


class LogRow(NamedTuple):
    """One request, as the request log stores it (C{request_log}'s columns but C{id})."""

    ts: datetime
    site_id: uuid.UUID | None
    host: str | None
    method: str | None
    path: str | None
    query: str | None
    status: int | None
    bytes_in: int | None
    bytes_out: int | None
    duration_ms: float | None
    origin_ms: float | None
    client_ip: str | None
    request_id: str | None
    user_agent: str | None
    classification: str | None = None
    classifier: str | None = None
    confidence: float | None = None
    attack_type: str | None = None
    blocked: bool = False
    #: The ids of the rules that matched (after exclusions), for the
    #: signature stage's verdict (schema 004).
    rule_ids: tuple[int, ...] | None = None
    #: Their summed severities.
    anomaly_score: int | None = None
    #: For non-benign rows: a redacted excerpt of the request (cut to
    #: L{EXCERPT_MAX} characters when written).
    excerpt: str | None = None


#: The columns a L{LogRow} fills, in order (C{COPY}'s column list, after C{id}).
COLUMNS: tuple[str, ...] = LogRow._fields


def select_list(columns: Iterable[str]) -> sql.Composed:
    """
    A C{SELECT} list of C{request_log} columns, with C{client_ip} given back
    as text (C{host(client_ip)}), the form a L{LogRow} holds.
    """
    return sql.SQL(", ").join(
        sql.SQL("host(client_ip)") if column == "client_ip" else sql.Identifier(column)
        for column in columns)

#: The longest C{excerpt} written, in characters, and the most rule ids.
EXCERPT_MAX = 4096
RULE_IDS_MAX = 64

_NULL = "\\N"
_BACKSLASH = "\\"
#: The verdict columns of a row the WAF had nothing to say about, and its end.
_BENIGN = "\\N\t\\N\t\\N\t\\N\tf\t\\N\t\\N\t\\N\n"
#: COPY text escapes; NUL cannot be stored in text at all, so it becomes U+FFFD.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r",
                          "\x00": "\ufffd"})
#: A site id's text, by the id's identity (and the id itself, so that its
#: identity stays its own while it is cached): no UUID hashing per row.
_uuid_text: dict[int, tuple[uuid.UUID, str]] = {}
#: The text of every number below 1000 in three digits.
_DIGITS3 = tuple(f"{i:03d}" for i in range(1000))
_EPOCH = datetime.fromtimestamp(0, UTC)
#: The second the latest UTC timestamp fell in, [start, end), and its text
#: up to the fraction (one tuple, read and replaced whole: the writer
#: thread formats spooled rows too).
_second: list[tuple[datetime, datetime, str]] = [(_EPOCH, _EPOCH, "")]


def _uuid(value: uuid.UUID) -> str:
    entry = _uuid_text.get(id(value))
    if entry is not None and entry[0] is value:
        return entry[1]
    if len(_uuid_text) > 10000:
        _uuid_text.clear()
    text = str(value)
    _uuid_text[id(value)] = (value, text)
    return text


def _timestamp(ts: datetime) -> str:
    """C{ts} as text; a UTC time's second is kept for the next rows (see copy_line)."""
    if ts.tzinfo is not UTC:
        return ts.isoformat()
    start = ts.replace(microsecond=0)
    head = start.isoformat()[:-6] + "."  # 2026-12-01T18:30:00.
    _second[0] = (start, start + timedelta(seconds=1), head)
    us = ts.microsecond
    return f"{head}{_DIGITS3[us // 1000]}{_DIGITS3[us % 1000]}+00:00"


def copy_line(row: LogRow) -> str:
    """
    C{row} as one line of C{COPY ... FROM STDIN} text (newline included).
    Times keep three decimals (microseconds), the confidence four: the
    columns are C{real}, and C{repr} of a float costs twice as much.

    Once per request, so written for the common row: a timestamp in the
    same second as the last one reuses that second's text (C{isoformat}
    alone cost 11,000 instructions); text that needs no escaping (checked
    with C{isprintable} and a search for a backslash, both in C) is not
    translated (C{str.translate} raised and cleared a C{KeyError} for every
    distinct character not in the table: 12,000 instructions for a request
    id); a site id's text is found by the id's identity.
    """
    (ts, site_id, host, method, path, query, status, bytes_in, bytes_out, duration_ms,
     origin_ms, client_ip, request_id, user_agent, classification, classifier, confidence,
     attack_type, blocked, rule_ids, anomaly_score, excerpt) = row
    n, e, b = _NULL, _ESCAPES, _BACKSLASH
    start, end, head = _second[0]
    if ts.tzinfo is UTC and start <= ts < end:
        us = ts.microsecond
        stamp = f"{head}{_DIGITS3[us // 1000]}{_DIGITS3[us % 1000]}+00:00"
    else:
        stamp = _timestamp(ts)
    if site_id is None:
        site = n
    else:
        entry = _uuid_text.get(id(site_id))
        site = entry[1] if entry is not None and entry[0] is site_id else _uuid(site_id)
    # Text columns: translated only when they need escaping.
    host = n if host is None else (
        host if host.isprintable() and b not in host else host.translate(e))
    method = n if method is None else (
        method if method.isprintable() and b not in method else method.translate(e))
    path = n if path is None else (
        path if path.isprintable() and b not in path else path.translate(e))
    query = n if query is None else (
        query if query.isprintable() and b not in query else query.translate(e))
    client_ip = n if client_ip is None else (
        client_ip if client_ip.isprintable() and b not in client_ip
        else client_ip.translate(e))
    request_id = n if request_id is None else (
        request_id if request_id.isprintable() and b not in request_id
        else request_id.translate(e))
    user_agent = n if user_agent is None else (
        user_agent if user_agent.isprintable() and b not in user_agent
        else user_agent.translate(e))
    line = (f"{stamp}\t{site}\t{host}\t{method}\t{path}\t{query}\t"
            f"{n if status is None else status}\t{n if bytes_in is None else bytes_in}\t"
            f"{n if bytes_out is None else bytes_out}\t"
            f"{n if duration_ms is None else f'{duration_ms:.3f}'}\t"
            f"{n if origin_ms is None else f'{origin_ms:.3f}'}\t"
            f"{client_ip}\t{request_id}\t{user_agent}\t")
    if (classification is None and classifier is None and confidence is None
            and attack_type is None and not blocked and rule_ids is None
            and anomaly_score is None and excerpt is None):
        return line + _BENIGN  # most rows: nothing judged
    return (f"{line}{n if classification is None else classification.translate(e)}\t"
            f"{n if classifier is None else classifier.translate(e)}\t"
            f"{n if confidence is None else f'{confidence:.4f}'}\t"
            f"{n if attack_type is None else attack_type.translate(e)}\t"
            f"{'t' if blocked else 'f'}\t"
            f"{n if rule_ids is None else _int_array(rule_ids)}\t"
            f"{n if anomaly_score is None else anomaly_score}\t"
            f"{n if excerpt is None else excerpt[:EXCERPT_MAX].translate(e)}\n")


def _int_array(values: tuple[int, ...]) -> str:
    """An C{integer[]} in COPY text: C{{942100,941100}} (only matching rows get one)."""
    return "{" + ",".join([str(int(v)) for v in values[:RULE_IDS_MAX]]) + "}"


_SEPARATORS = len(COLUMNS) - 1


def upgrade_line(line: str) -> str:
    """
    A C{COPY} line spooled by an earlier version, which lacks the columns
    added since (always at the end), with those columns as NULL.
    """
    missing = _SEPARATORS - line.count("\t")
    if missing <= 0:
        return line
    return line.removesuffix("\n") + "\t\\N" * missing + "\n"


class Batch:
    """
    Rows on their way to the database: their C{COPY} lines, the sites they
    touch (for the batch's announcement) and the months they fall in (for
    the partitions they need).
    """

    __slots__ = ("_last_month", "_last_site", "lines", "months", "sites")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.sites: set[uuid.UUID] = set()
        self.months: set[tuple[int, int]] = set()
        self._last_site: uuid.UUID | None = None
        self._last_month = 0

    def __len__(self) -> int:
        return len(self.lines)

    def add(self, row: LogRow) -> None:
        self.lines.append(copy_line(row))
        site = row.site_id
        if site is not None and site is not self._last_site:
            # Consecutive rows are mostly one site's: skip UUID hashing then.
            self._last_site = site
            self.sites.add(site)
        ts = row.ts
        month = ts.year * 12 + ts.month
        if month != self._last_month:
            self._last_month = month
            self.months.add((ts.year, ts.month))

    @classmethod
    def of(cls, rows: Iterable[LogRow]) -> Batch:
        batch = cls()
        for row in rows:
            batch.add(row)
        return batch

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> Batch:
        """A batch of lines made by L{copy_line} (read back from the spool)."""
        batch = cls()
        for line in lines:
            line = upgrade_line(line)
            batch.lines.append(line)
            ts, site, _ = line.split("\t", 2)
            batch.months.add((int(ts[0:4]), int(ts[5:7])))
            if site != _NULL:
                batch.sites.add(uuid.UUID(site))
        return batch

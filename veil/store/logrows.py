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
from datetime import datetime
from typing import NamedTuple


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


#: The columns a L{LogRow} fills, in order (C{COPY}'s column list, after C{id}).
COLUMNS: tuple[str, ...] = LogRow._fields

_NULL = "\\N"
#: COPY text escapes; NUL cannot be stored in text at all, so it becomes U+FFFD.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r",
                          "\x00": "\ufffd"})
_uuid_text: dict[uuid.UUID, str] = {}


def _text(value: str | None) -> str:
    return _NULL if value is None else value.translate(_ESCAPES)


def _uuid(value: uuid.UUID | None) -> str:
    if value is None:
        return _NULL
    text = _uuid_text.get(value)
    if text is None:
        if len(_uuid_text) > 10000:
            _uuid_text.clear()
        text = _uuid_text[value] = str(value)
    return text


def _number(value: float | int | None) -> str:
    return _NULL if value is None else repr(value)


def copy_line(row: LogRow) -> str:
    """C{row} as one line of C{COPY ... FROM STDIN} text (newline included)."""
    (ts, site_id, host, method, path, query, status, bytes_in, bytes_out, duration_ms,
     origin_ms, client_ip, request_id, user_agent, classification, classifier, confidence,
     attack_type, blocked) = row
    return (f"{ts.isoformat()}\t{_uuid(site_id)}\t{_text(host)}\t{_text(method)}\t"
            f"{_text(path)}\t{_text(query)}\t{_number(status)}\t{_number(bytes_in)}\t"
            f"{_number(bytes_out)}\t{_number(duration_ms)}\t{_number(origin_ms)}\t"
            f"{_text(client_ip)}\t{_text(request_id)}\t{_text(user_agent)}\t"
            f"{_text(classification)}\t{_text(classifier)}\t{_number(confidence)}\t"
            f"{_text(attack_type)}\t{'t' if blocked else 'f'}\n")


class Batch:
    """
    Rows on their way to the database: their C{COPY} lines, the sites they
    touch (for the batch's announcement) and the months they fall in (for
    the partitions they need).
    """

    __slots__ = ("lines", "months", "sites")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.sites: set[uuid.UUID] = set()
        self.months: set[tuple[int, int]] = set()

    def __len__(self) -> int:
        return len(self.lines)

    def add(self, row: LogRow) -> None:
        self.lines.append(copy_line(row))
        if row.site_id is not None:
            self.sites.add(row.site_id)
        ts = row.ts
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
            batch.lines.append(line)
            ts, site, _ = line.split("\t", 2)
            batch.months.add((int(ts[0:4]), int(ts[5:7])))
            if site != _NULL:
                batch.sites.add(uuid.UUID(site))
        return batch

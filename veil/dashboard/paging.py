"""
Keyset pagination: lists are read in a fixed order and continue after the
last row a client saw, never with an offset (an offset re-reads every
skipped row and shifts when rows are added).

A cursor is the sort key of the last row, as opaque URL-safe text::

    page = Paging.from_query(call.query)             # ?limit=50&cursor=...
    after = page.after(datetime, UUID)               # None on the first page
    rows = await store.items(after=after, limit=page.fetch)
    return page.result(rows, key=lambda r: (r.created_at, r.id), item=as_json)

The store fetches C{limit + 1} rows; the extra row only tells that there
is a next page.  The answer is C{{"items": [...], "next_cursor": "..."}}
(C{null} on the last page).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from veil.dashboard.schema import Array, Field, Integer, Object, String
from veil.errors import ApiError

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

#: The query parameters of a paginated list, for route declarations.
QUERY = Object({
    "limit": Integer(minimum=1, maximum=MAX_LIMIT,
                     description=f"items per page (default {DEFAULT_LIMIT})"),
    "cursor": String(max_length=500, description="next_cursor of the previous page"),
})


def page_of(item: Field) -> Object:
    """The documented shape of a page of C{item}s."""
    return Object({"items": Array(items=item, max_items=MAX_LIMIT),
                   "next_cursor": String(nullable=True, description="null on the last page")},
                  required=("items", "next_cursor"))


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if isinstance(value, UUID):
        return {"u": str(value)}
    return value


def encode_cursor(key: Sequence[Any]) -> str:
    """An opaque cursor for a sort key (strings, numbers, datetimes, UUIDs)."""
    text = json.dumps([_encode_value(v) for v in key], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode("utf-8")).rstrip(b"=").decode("ascii")


def _invalid() -> ApiError:
    return ApiError("invalid_cursor", "The cursor is not valid: start from the first page.",
                    {"fields": [{"field": "cursor", "code": "invalid",
                                 "message": "This cursor was not made by this list."}]},
                    status=400)


def decode_cursor(cursor: str, types: Sequence[type]) -> tuple[Any, ...]:
    """
    The sort key in C{cursor}, each value of the given type.

    @raise ApiError: 400 C{invalid_cursor} for anything not made by
        L{encode_cursor} for this key's shape.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw.decode("utf-8"))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _invalid() from None
    if not isinstance(values, list) or len(values) != len(types):
        raise _invalid()
    out: list[Any] = []
    for value, kind in zip(values, types):
        try:
            if kind is datetime:
                out.append(datetime.fromisoformat(value["t"]))
            elif kind is UUID:
                out.append(UUID(value["u"]))
            elif kind in (str, int) and type(value) is kind:
                out.append(value)
            else:
                raise TypeError(kind)
        except (TypeError, KeyError, ValueError):
            raise _invalid() from None
    return tuple(out)


@attrs.frozen
class Paging:
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, Any]) -> Paging:
        """From the validated L{QUERY} fields of a request."""
        return cls(query.get("limit") or DEFAULT_LIMIT, query.get("cursor") or None)

    @property
    def fetch(self) -> int:
        """Rows to ask the store for: one more than a page."""
        return self.limit + 1

    def after(self, *types: type) -> tuple[Any, ...] | None:
        """The sort key to continue after, or L{None} on the first page."""
        return None if self.cursor is None else decode_cursor(self.cursor, types)

    def result(self, rows: Sequence[Any], key: Callable[[Any], Sequence[Any]],
               item: Callable[[Any], Any]) -> dict[str, Any]:
        page = list(rows[:self.limit])
        more = len(rows) > self.limit
        return {"items": [item(r) for r in page],
                "next_cursor": encode_cursor(key(page[-1])) if more and page else None}

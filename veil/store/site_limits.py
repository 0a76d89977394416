"""
A site's proxy settings: the largest request body it accepts
(C{sites.max_body_size}, 413 above it) and whether TRACE is forwarded
(C{sites.allow_trace}, 405 otherwise).

Every change runs in one transaction with its C{audit_log} row; the sites
trigger announces it on C{veil_sites}, so running proxies apply it at once.
"""

from __future__ import annotations

from uuid import UUID

import attrs
import psycopg
from psycopg.types.json import Jsonb
from twisted.internet.defer import Deferred

from veil.store.admin import InvalidValue, SiteNotFound, normalise_domain
from veil.store.db import Database

#: The bounds of C{sites_max_body_size_range}.
MAX_BODY_SIZE_RANGE = (1, 1 << 40)


@attrs.frozen
class SiteLimitsRecord:
    """A site's proxy settings, as stored."""

    id: UUID
    domain: str
    max_body_size: int
    allow_trace: bool


def check_max_body_size(value: int) -> int:
    """C{value} if it is a valid maximum body size in bytes; else L{InvalidValue}."""
    low, high = MAX_BODY_SIZE_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidValue(f"the maximum body size must be a number of bytes from {low} to"
                           f" {high} (1 TiB), not {value!r}")
    return value


def _set(cur: psycopg.Cursor, domain: str, max_body_size: int | None,
         allow_trace: bool | None, actor: UUID | None) -> SiteLimitsRecord:
    cur.execute(
        "UPDATE sites SET max_body_size = coalesce(%s, max_body_size),"
        " allow_trace = coalesce(%s, allow_trace) WHERE domain = %s"
        " RETURNING id, domain, max_body_size, allow_trace",
        (max_body_size, allow_trace, domain),
    )
    row = cur.fetchone()
    if row is None:
        raise SiteNotFound(domain)
    record = SiteLimitsRecord(*row)
    detail: dict[str, object] = {}
    if max_body_size is not None:
        detail["max_body_size"] = max_body_size
    if allow_trace is not None:
        detail["allow_trace"] = allow_trace
    cur.execute(
        "INSERT INTO audit_log (actor_user_id, action, target_type, target_id, detail)"
        " VALUES (%s, 'site.update', 'site', %s, %s)",
        (actor, str(record.id), Jsonb(detail)),
    )
    return record


def _get(cur: psycopg.Cursor, domain: str) -> SiteLimitsRecord:
    cur.execute("SELECT id, domain, max_body_size, allow_trace FROM sites WHERE domain = %s",
                (domain,))
    row = cur.fetchone()
    if row is None:
        raise SiteNotFound(domain)
    return SiteLimitsRecord(*row)


class SiteLimits:
    """Reading and changing a site's proxy settings."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, domain: str) -> Deferred[SiteLimitsRecord]:
        """The site's settings; L{SiteNotFound} (in the Deferred) if there is no such site."""
        return self._db.transact("site_limits.get", _get, normalise_domain(domain))

    def set(self, domain: str, actor: UUID | None, *, max_body_size: int | None = None,
            allow_trace: bool | None = None) -> Deferred[SiteLimitsRecord]:
        """
        Change what is given (the rest stays); fires with the site's settings.

        @raise InvalidValue: for a bad domain or size (at once).
        @raise SiteNotFound: (in the Deferred) when there is no such site.
        """
        if max_body_size is not None:
            check_max_body_size(max_body_size)
        return self._db.transact("site_limits.set", _set, normalise_domain(domain),
                                 max_body_size, allow_trace, actor)

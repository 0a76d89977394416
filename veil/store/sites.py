"""
Site queries, and the in-memory site table every request is routed by.

The table is loaded whole at start-up, kept current by C{NOTIFY veil_sites}
(payload: the site's id) and reloaded whole after every listener
reconnection and periodically as a safety net.  Lookups are dictionary
reads on the reactor thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

import attrs
import psycopg
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from veil.store.db import Database
from veil.store.listener import ListenerService

_log = Logger()

#: Statuses whose host names may get certificates on demand: DNS verified.
#: C{error} is reached only from these, when an issuance failed, so the name
#: stays eligible (behind its failure back-off) rather than stuck for good.
VERIFIED_STATUSES = frozenset({"active", "ssl_provisioning", "live", "error"})

#: A request body larger than this is refused (413), unless the site says otherwise.
DEFAULT_MAX_BODY_SIZE = 100 * 1024 * 1024


@attrs.frozen
class Site:
    """What the hot path needs to know about one site."""

    id: UUID
    domain: str
    upstream: str
    status: str
    mode: str
    paranoia_level: int
    maintenance: bool
    allow_plain_http: bool
    origin_tls_verify: bool
    #: Request bodies larger than this many bytes are refused with 413.
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    #: Whether TRACE requests are forwarded (else 405).
    allow_trace: bool = False

    @property
    def dns_verified(self) -> bool:
        return self.status in VERIFIED_STATUSES


_COLUMNS = ("id, domain, upstream, status, mode, paranoia_level, maintenance,"
            " allow_plain_http, origin_tls_verify, max_body_size, allow_trace")


def _load_all(cur: psycopg.Cursor) -> list[Site]:
    cur.execute(f"SELECT {_COLUMNS} FROM sites")
    return [Site(*row) for row in cur.fetchall()]


def _load_one(cur: psycopg.Cursor, site_id: UUID) -> Site | None:
    cur.execute(f"SELECT {_COLUMNS} FROM sites WHERE id = %s", (site_id,))
    row = cur.fetchone()
    return None if row is None else Site(*row)


def _set_status(cur: psycopg.Cursor, site_id: UUID, status: str, detail: str | None,
                only_from: tuple[str, ...] | None) -> bool:
    if only_from is None:
        cur.execute("UPDATE sites SET status = %s, status_detail = %s WHERE id = %s",
                    (status, detail, site_id))
    else:
        cur.execute("UPDATE sites SET status = %s, status_detail = %s"
                    " WHERE id = %s AND status = ANY(%s)",
                    (status, detail, site_id, list(only_from)))
    return cur.rowcount == 1


class SiteStore:
    """Site queries, as Deferreds."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def all(self) -> Deferred[list[Site]]:
        return self._db.transact("sites.all", _load_all)

    def one(self, site_id: UUID) -> Deferred[Site | None]:
        return self._db.transact("sites.one", _load_one, site_id)

    def set_status(self, site_id: UUID, status: str, detail: str | None = None,
                   only_from: tuple[str, ...] | None = None) -> Deferred[bool]:
        """
        Move a site to C{status} (with C{detail} for the dashboard), only
        from one of C{only_from} when given; fires with whether it moved.
        """
        return self._db.transact("sites.set_status", _set_status, site_id, status, detail,
                                 only_from)


@attrs.define(eq=False)
class SiteTable:
    """
    Every site, by lower-case domain, in memory.

    @ivar loaded: whether a full load has completed at least once.
    """

    store: SiteStore
    clock: IReactorTime
    _by_domain: dict[str, Site] = attrs.field(factory=dict, init=False)
    _by_id: dict[UUID, Site] = attrs.field(factory=dict, init=False)
    loaded: bool = attrs.field(default=False, init=False)
    _generation: int = attrs.field(default=0, init=False)
    _listeners: list[Callable[[Site | None, Site | None], object]] = attrs.field(
        factory=list, init=False)

    def get(self, host: str) -> Site | None:
        """The site for C{host} (already lower-case, no port), or L{None}."""
        return self._by_domain.get(host)

    def sites(self) -> list[Site]:
        return list(self._by_id.values())

    def on_change(self, callback: Callable[[Site | None, Site | None], object]) -> None:
        """Call C{callback(old, new)} whenever a site is added, changed or removed."""
        self._listeners.append(callback)

    def subscribe(self, listener: ListenerService) -> None:
        listener.subscribe("veil_sites", self._notified, self.reload)

    def reload(self) -> Deferred[None]:
        """Load every site and swap the table in whole."""
        self._generation += 1
        generation = self._generation

        def swap(sites: list[Site]) -> Deferred[None] | None:
            if generation != self._generation:
                # A single-site update landed while this snapshot was being
                # read, so the snapshot may be older than the table: read again.
                return self.reload()
            old = self._by_id
            self._by_id = {s.id: s for s in sites}
            self._by_domain = {s.domain: s for s in sites}
            self.loaded = True
            for site_id in old.keys() | self._by_id.keys():
                before, after = old.get(site_id), self._by_id.get(site_id)
                if before != after:
                    self._changed(before, after)

        return self.store.all().addCallback(swap)

    def _notified(self, payload: str) -> None:
        try:
            site_id = UUID(payload)
        except ValueError:
            self.reload().addErrback(self._reload_failed)
            return
        self.store.one(site_id).addCallbacks(
            lambda site: self._update(site_id, site), self._reload_failed)

    def _reload_failed(self, failure: Any) -> None:
        _log.error("Site table update failed: {error}", error=failure.value)

    def _update(self, site_id: UUID, site: Site | None) -> None:
        self._generation += 1
        before = self._by_id.pop(site_id, None)
        if before is not None and self._by_domain.get(before.domain) == before:
            del self._by_domain[before.domain]
        if site is not None:
            self._by_id[site_id] = site
            self._by_domain[site.domain] = site
        if before != site:
            self._changed(before, site)

    def _changed(self, before: Site | None, after: Site | None) -> None:
        for callback in list(self._listeners):
            try:
                callback(before, after)
            except Exception:
                _log.failure("Site change callback failed")

"""
Site queries, and the in-memory site table every request is routed by.

The table is loaded whole at start-up, kept current by C{NOTIFY veil_sites}
(payload: the site's id) and reloaded whole after every listener
reconnection and periodically as a safety net (L{veil.store.tables}).
Lookups are dictionary reads on the reactor thread.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

import attrs
import psycopg
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from veil.store.db import Database
from veil.store.listener import ListenerService, Subscription
from veil.store.tables import Keeper, KeyedRows
from veil.workers.base import PeriodicWorker

#: The channel the C{sites} and C{site_members} triggers notify, with the site's id.
CHANNEL = "veil_sites"

#: Statuses whose host names may get certificates on demand: DNS verified.
#: C{error} is reached only from these, when an issuance failed, so the name
#: stays eligible (behind its failure back-off) rather than stuck for good.
VERIFIED_STATUSES = frozenset({"active", "ssl_provisioning", "live", "error"})


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

    @property
    def dns_verified(self) -> bool:
        return self.status in VERIFIED_STATUSES


_COLUMNS = ("id, domain, upstream, status, mode, paranoia_level, maintenance,"
            " allow_plain_http, origin_tls_verify")


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
    Every site, by lower-case domain, in memory (kept current by a
    L{veil.store.tables.Keeper}).
    """

    store: SiteStore
    clock: IReactorTime
    _by_domain: dict[str, Site] = attrs.field(factory=dict, init=False)
    _rows: KeyedRows[UUID, Site] = attrs.field(init=False)
    _keeper: Keeper[UUID, Site] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._rows = KeyedRows(self._index_all, self._index_one)
        self._keeper = Keeper("site-table", self._rows, self._load_all, self.clock,
                              load_one=self.store.one, key=UUID)

    def get(self, host: str) -> Site | None:
        """The site for C{host} (already lower-case, no port), or L{None}."""
        return self._by_domain.get(host)

    def sites(self) -> list[Site]:
        return self._rows.values()

    @property
    def loaded(self) -> bool:
        """Whether a full load has completed at least once."""
        return self._rows.loaded

    def on_change(self, callback: Callable[[Site | None, Site | None], object]) -> None:
        """Call C{callback(old, new)} whenever a site is added, changed or removed."""
        self._rows.on_change(callback)

    def subscribe(self, listener: ListenerService) -> list[Subscription]:
        """Follow C{veil_sites}, and reload whole after each (re)connection."""
        return self._keeper.follow(listener, CHANNEL)

    def reload(self) -> Deferred[None]:
        """Load every site and swap the table in whole."""
        return self._keeper.reload()

    def refresher(self, every: float) -> PeriodicWorker:
        """The supervised periodic reload, the safety net behind NOTIFY."""
        return self._keeper.refresher(every)

    def _load_all(self) -> Deferred[dict[UUID, Site]]:
        return self.store.all().addCallback(lambda sites: {s.id: s for s in sites})

    def _index_all(self, sites: dict[UUID, Site]) -> None:
        self._by_domain = {s.domain: s for s in sites.values()}

    def _index_one(self, site_id: UUID, before: Site | None, after: Site | None) -> None:
        if before is not None and self._by_domain.get(before.domain) == before:
            del self._by_domain[before.domain]
        if after is not None:
            self._by_domain[after.domain] = after

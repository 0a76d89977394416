"""
IP decisions: their queries, and the in-memory table the first WAF stage reads.

A decision says what to do with traffic from an address or network
(C{ban}, C{block}, C{throttle}, C{scrutinize}, C{log_only}), for one site or,
with no site, for every site, until it expires or for ever.

The table is loaded whole (L{DecisionTable.reload}), kept current by
C{NOTIFY veil_decisions} (payload: the decision's id; the table fetches that
one row and adds, replaces or removes it) and reloaded whole after every
listener reconnection and periodically as a safety net (L{veil.store.tables}).  Per request,
L{DecisionTable.match} does prefix-set probes only (see L{veil.waf.prefixes})
and never waits on the database.

Which decision applies to an address, for a site (L{DecisionTable.match}):

  1. Expired decisions never apply, even while they are still cached.
  2. The longest matching prefix wins: a C{log_only} for C{192.0.2.7/32}
     beats a C{ban} for C{192.0.2.0/24}, which is how an address is let
     through a wider decision.
  3. At equal prefix length, a decision for the site beats a global one,
     whatever their types.
  4. For the same network and scope, the strongest type wins:
     C{ban > block > throttle > scrutinize > log_only}; then the one that
     lasts longer (no expiry first).

Wiring: the table's owner subscribes it to the listener and runs two
supervised jobs, C{table.refresher(every=60.0)} and
C{PeriodicWorker("decision-expiry", table.prune, reactor, every=5.0)}.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Callable
from typing import Any
from uuid import UUID

import attrs
import psycopg
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime

from veil.store.db import Database
from veil.store.listener import ListenerService, Subscription
from veil.store.tables import Keeper, KeyedRows
from veil.waf.prefixes import ParsedNetwork, PrefixMap, parse_address, parse_network
from veil.workers.base import PeriodicWorker

#: The channel the C{decisions} trigger notifies, with the decision's id.
CHANNEL = "veil_decisions"

#: Decision types, strongest first.
DECISION_TYPES: tuple[str, ...] = ("ban", "block", "throttle", "scrutinize", "log_only")

#: Who made a decision.
DECISION_SOURCES: frozenset[str] = frozenset({"manual", "agent", "feed", "behaviour", "api"})

_RANK = {kind: rank for rank, kind in enumerate(DECISION_TYPES)}


def _network_text(network: Any) -> str:
    """Canonical text of a network with its prefix length (C{192.0.2.7/32})."""
    return ipaddress.ip_network(network if isinstance(network, str) else str(network),
                                strict=True).with_prefixlen


@attrs.frozen
class Decision:
    """
    One decision, as the hot path needs it.

    @ivar network: the target, in canonical text with its prefix length.
    @ivar expires_at: when it stops applying, in seconds since the epoch,
        or L{None} for until removed.
    @ivar parsed: C{network} parsed for the prefix sets (computed once, on
        whatever thread builds the decision).
    """

    id: UUID
    site_id: UUID | None
    network: str = attrs.field(converter=_network_text)
    type: str
    reason: str = ""
    source: str = "manual"
    expires_at: float | None = None
    parsed: ParsedNetwork = attrs.field(init=False, eq=False, repr=False)

    @parsed.default
    def _parse(self) -> ParsedNetwork:
        return parse_network(self.network)

    def expired(self, now: float) -> bool:
        """Whether this decision no longer applies at C{now}."""
        return self.expires_at is not None and self.expires_at <= now


def _precedence(decision: Decision) -> tuple[int, int, float, str]:
    """Sort key within one network and scope: strongest type, then longest lasting."""
    expires = decision.expires_at
    return (_RANK.get(decision.type, len(_RANK)), 0 if expires is None else 1,
            0.0 if expires is None else -expires, str(decision.id))


# -- queries (database threads) --------------------------------------------------

_COLUMNS = ("id, site_id, target::text, type, reason, source,"
            " extract(epoch FROM expires_at)::float8")


def _row(row: tuple) -> Decision:
    return Decision(*row)


def _load_all(cur: psycopg.Cursor) -> list[Decision]:
    cur.execute(f"SELECT {_COLUMNS} FROM decisions"
                " WHERE expires_at IS NULL OR expires_at > now()")
    return [_row(row) for row in cur.fetchall()]


def _load_one(cur: psycopg.Cursor, decision_id: UUID) -> Decision | None:
    cur.execute(f"SELECT {_COLUMNS} FROM decisions WHERE id = %s", (decision_id,))
    row = cur.fetchone()
    return None if row is None else _row(row)


def _add(cur: psycopg.Cursor, network: str, type: str, expires_at: float | None,
         site_id: UUID | None, reason: str, source: str,
         created_by: UUID | None) -> Decision:
    cur.execute(
        "INSERT INTO decisions (target, type, expires_at, site_id, reason, source, created_by)"
        " VALUES (%s::inet, %s, to_timestamp(%s::float8), %s, %s, %s, %s)"
        f" RETURNING {_COLUMNS}",
        (network, type, expires_at, site_id, reason, source, created_by))
    return _row(cur.fetchone())


def _remove(cur: psycopg.Cursor, decision_id: UUID) -> bool:
    cur.execute("DELETE FROM decisions WHERE id = %s", (decision_id,))
    return cur.rowcount == 1


class DecisionStore:
    """Decision queries, as Deferreds.  Changes notify C{veil_decisions} by trigger."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def load_all(self) -> Deferred[list[Decision]]:
        """Every decision that has not expired (by the database's clock)."""
        return self._db.transact("decisions.load_all", _load_all)

    def load_one(self, decision_id: UUID) -> Deferred[Decision | None]:
        """The decision C{decision_id}, expired or not, or L{None} if it is gone."""
        return self._db.transact("decisions.load_one", _load_one, decision_id)

    def add(self, network: str, type: str, expires_at: float | None = None,
            site_id: UUID | None = None, reason: str = "", source: str = "manual",
            created_by: UUID | None = None) -> Deferred[Decision]:
        """
        Record a decision and fire with it.

        @param network: an address or a network with zero host bits.
        @param expires_at: seconds since the epoch, or L{None} for until removed.
        @param site_id: the site it applies to, or L{None} for every site.
        @return: a Deferred that fails with L{ValueError} for a bad network,
            type or source (before touching the database).
        """
        try:
            text = _network_text(network)
        except (ValueError, TypeError) as e:
            return fail(ValueError(f"not a network with zero host bits: {network!r} ({e})"))
        if type not in _RANK:
            return fail(ValueError(f"unknown decision type {type!r}"))
        if source not in DECISION_SOURCES:
            return fail(ValueError(f"unknown decision source {source!r}"))
        return self._db.transact("decisions.add", _add, text, type, expires_at, site_id,
                                 reason, source, created_by)

    def remove(self, decision_id: UUID) -> Deferred[bool]:
        """Delete a decision; fire with whether it existed."""
        return self._db.transact("decisions.remove", _remove, decision_id)


def _as_store(value: DecisionStore | Database) -> DecisionStore:
    return DecisionStore(value) if isinstance(value, Database) else value


# -- the table (reactor thread) --------------------------------------------------

Bucket = tuple[Decision, ...]


@attrs.define(eq=False)
class DecisionTable:
    """
    Every unexpired decision, in prefix sets: one global, one per site.

    Each prefix set maps a network to its decisions in precedence order
    (strongest first).  Only the reactor thread reads or changes the table;
    a L{veil.store.tables.Keeper} keeps it current.
    """

    store: DecisionStore = attrs.field(converter=_as_store)
    clock: IReactorTime
    _global: PrefixMap[Bucket] = attrs.field(factory=PrefixMap, init=False)
    # Per site, by the site id's integer: a UUID hashes in Python, an int in
    # C (this is looked up once per request).
    _sites: dict[int, PrefixMap[Bucket]] = attrs.field(factory=dict, init=False)
    # No decision at all (the global set and every site's are empty): most
    # of the time, and then a request costs one attribute test.
    _empty: bool = attrs.field(default=True, init=False)
    # (expires_at, id) of cached decisions that expire; stale entries are
    # skipped when popped and dropped when the heap is rebuilt.
    _expiry: list[tuple[float, UUID]] = attrs.field(factory=list, init=False)
    _rows: KeyedRows[UUID, Decision] = attrs.field(init=False)
    _keeper: Keeper[UUID, Decision] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._rows = KeyedRows(self._install, self._reindex)
        self._keeper = Keeper("decision-table", self._rows, self._load_all, self.clock,
                              load_one=self._load_one, key=UUID)

    # -- hot path --------------------------------------------------------------

    def match(self, ip: object, site_id: UUID | None = None) -> Decision | None:
        """
        The decision that applies to client address C{ip} on site
        C{site_id} (L{None}: global decisions only), or L{None}.  See the
        module docstring for the precedence rules.  A string that is not an
        address matches nothing.
        """
        if self._empty:
            return None
        address = parse_address(ip)
        if address is None:
            return None
        # Most requests match nothing: probe without building lists first.
        local_map = self._sites.get(site_id.int) if site_id is not None else None
        if self._global.lookup_address(address) is None and (
                local_map is None or local_map.lookup_address(address) is None):
            return None
        found = self._global.matches_address(address)
        if local_map is not None:
            local = local_map.matches_address(address)
            if local:
                found = _merge(local, found) if found else local
        now = self.clock.seconds()
        for _prefixlen, bucket in found:
            for decision in bucket:
                expires = decision.expires_at
                if expires is None or expires > now:
                    return decision
        return None

    # -- inspection ------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether a full load has completed at least once."""
        return self._rows.loaded

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, decision_id: UUID) -> Decision | None:
        """The cached decision C{decision_id} (possibly expired but not yet pruned)."""
        return self._rows.get(decision_id)

    def decisions(self) -> list[Decision]:
        return self._rows.values()

    def on_change(self, callback: Callable[[Decision | None, Decision | None], object]) -> None:
        """
        Call C{callback(before, after)} whenever a decision is added
        (C{before} is L{None}), changed, or removed or expired (C{after} is
        L{None}).
        """
        self._rows.on_change(callback)

    # -- keeping current -------------------------------------------------------

    def subscribe(self, listener: ListenerService) -> list[Subscription]:
        """Follow C{veil_decisions}, and reload whole after each (re)connection."""
        return self._keeper.follow(listener, CHANNEL)

    def reload(self) -> Deferred[None]:
        """
        Load every unexpired decision and swap the table in whole.  If
        reloads overlap, a snapshot older than the one in is dropped.
        """
        return self._keeper.reload()

    def refresher(self, every: float) -> PeriodicWorker:
        """The supervised periodic reload, the safety net behind NOTIFY."""
        return self._keeper.refresher(every)

    def _notified(self, payload: str) -> Deferred[None] | None:
        return self._keeper.notified(payload)

    def prune(self) -> int:
        """Drop the cached decisions that have expired; return how many."""
        now = self.clock.seconds()
        heap = self._expiry
        dropped = 0
        while heap and heap[0][0] <= now:
            at, decision_id = heapq.heappop(heap)
            decision = self._rows.get(decision_id)
            if decision is not None and decision.expires_at == at:
                self._rows.put(decision_id, None)
                dropped += 1
        if len(heap) > 2 * len(self._rows) + 64:
            self._rebuild_expiry()
        return dropped

    # -- internals ---------------------------------------------------------------

    def _load_all(self) -> Deferred[dict[UUID, Decision]]:
        def live(decisions: list[Decision]) -> dict[UUID, Decision]:
            now = self.clock.seconds()
            return {d.id: d for d in decisions if not d.expired(now)}

        return self.store.load_all().addCallback(live)

    def _load_one(self, decision_id: UUID) -> Deferred[Decision | None]:
        def live(decision: Decision | None) -> Decision | None:
            if decision is not None and decision.expired(self.clock.seconds()):
                return None
            return decision

        return self.store.load_one(decision_id).addCallback(live)

    def _install(self, live: dict[UUID, Decision]) -> None:
        grouped: dict[UUID | None, dict[ParsedNetwork, list[Decision]]] = {}
        for decision in live.values():
            grouped.setdefault(decision.site_id, {}).setdefault(
                decision.parsed, []).append(decision)
        global_map: PrefixMap[Bucket] = PrefixMap()
        site_maps: dict[int, PrefixMap[Bucket]] = {}
        for site_id, networks in grouped.items():
            target = global_map if site_id is None else site_maps.setdefault(
                site_id.int, PrefixMap())
            for parsed, bucket in networks.items():
                target.add_parsed(parsed, tuple(sorted(bucket, key=_precedence)))
        self._global, self._sites = global_map, site_maps
        self._empty = not global_map and not site_maps
        self._rebuild_expiry()

    def _rebuild_expiry(self) -> None:
        self._expiry = [(d.expires_at, d.id) for d in self._rows.rows.values()
                        if d.expires_at is not None]
        heapq.heapify(self._expiry)

    def _reindex(self, decision_id: UUID, before: Decision | None,
                 after: Decision | None) -> None:
        if before is not None:
            self._discard(before)
        if after is not None:
            self._insert(after)

    def _scope(self, site_id: UUID | None, create: bool) -> PrefixMap[Bucket] | None:
        if site_id is None:
            return self._global
        scope = self._sites.get(site_id.int)
        if scope is None and create:
            scope = self._sites[site_id.int] = PrefixMap()
        return scope

    def _insert(self, decision: Decision) -> None:
        scope = self._scope(decision.site_id, create=True)
        assert scope is not None
        bucket = scope.get_parsed(decision.parsed) or ()
        scope.add_parsed(decision.parsed, tuple(sorted(bucket + (decision,), key=_precedence)))
        self._empty = False
        if decision.expires_at is not None:
            heapq.heappush(self._expiry, (decision.expires_at, decision.id))

    def _discard(self, decision: Decision) -> None:
        scope = self._scope(decision.site_id, create=False)
        if scope is not None:
            bucket = scope.get_parsed(decision.parsed) or ()
            rest = tuple(d for d in bucket if d.id != decision.id)
            if rest:
                scope.add_parsed(decision.parsed, rest)
            elif bucket:
                scope.remove_parsed(decision.parsed)
                if decision.site_id is not None and not scope:
                    del self._sites[decision.site_id.int]
                self._empty = not self._global and not self._sites


def _merge(local: list[tuple[int, Bucket]],
           found: list[tuple[int, Bucket]]) -> list[tuple[int, Bucket]]:
    """Site and global matches, longest prefix first, the site's first at equal length."""
    merged = []
    i = j = 0
    while i < len(local) and j < len(found):
        if local[i][0] >= found[j][0]:
            merged.append(local[i])
            i += 1
        else:
            merged.append(found[j])
            j += 1
    merged.extend(local[i:])
    merged.extend(found[j:])
    return merged

"""
Sites' WAF policies: read from the store, and held in memory for the hot path.

A site's L{SitePolicy} is built from three tables: its C{sites} row (mode,
paranoia level, anomaly threshold, body inspection limit and overflow), the
exclusions in its active C{rules} document, and its C{skip} and C{deep}
C{endpoint_profiles}.  Each of them notifies its own channel with the site's
id when it changes (C{veil_sites}, C{veil_rules}, C{veil_endpoint_profiles});
L{PolicyTable} follows all three and rebuilds that one site's policy, on a
database thread, and swaps it in on the reactor thread
(L{veil.store.tables.Keeper}).  The proxy asks L{PolicyTable.get} per
request: one dictionary lookup.

Endpoint profiles are given to the policy most specific first, since
L{SitePolicy.profile_for} takes the first that matches: exact paths, then
patterns with C{{name}} segments, then prefixes and suffixes by the length
of their fixed part; a profile for one method before one for any method; at
a tie, C{deep} before C{skip}.

A rules document that does not parse (written by hand, or by a newer Veil)
loses only its bad entries, which are logged (at most hourly per site).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from uuid import UUID

import attrs
import psycopg
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from veil.logs import Throttle
from veil.store.db import Database
from veil.store.listener import ListenerService, Subscription
from veil.store.tables import Keeper, KeyedRows
from veil.waf.policy import (
    DEFAULT_INSPECT_BODY_LIMIT,
    EndpointProfile,
    Exclusion,
    SitePolicy,
    parse_target,
)
from veil.workers.base import PeriodicWorker

_log = Logger()

#: The channels a site's policy changes on; each payload is the site's id.
CHANNELS = ("veil_sites", "veil_rules", "veil_endpoint_profiles")

#: An exclusion id: eight characters from an alphabet without look-alikes
#: (no 0, 1, i, l, o).
EXCLUSION_ID = re.compile(r"[2-9a-hjkmnp-z]{8}")


# -- the rules document ----------------------------------------------------------


def exclusion_from_json(entry: object) -> Exclusion:
    """
    One entry of a rules document's C{exclusions} as an L{Exclusion};
    C{ValueError} says what is wrong with it.
    """
    if not isinstance(entry, dict):
        raise ValueError("an exclusion is a JSON object")  # noqa: TRY004 - bad data
    exclusion_id = entry.get("id")
    if not isinstance(exclusion_id, str) or not EXCLUSION_ID.fullmatch(exclusion_id):
        raise ValueError(f"bad exclusion id {exclusion_id!r}")
    rule = entry.get("rule")
    if rule is not None and (type(rule) is not int or rule <= 0):
        raise ValueError(f"exclusion {exclusion_id}: bad rule id {rule!r}")
    attack_class = entry.get("class")
    if attack_class is not None and not isinstance(attack_class, str):
        raise ValueError(f"exclusion {exclusion_id}: bad class {attack_class!r}")
    path = entry.get("path")
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise ValueError(f"exclusion {exclusion_id}: bad path prefix {path!r}")
    target = entry.get("target")
    if target is not None:
        if not isinstance(target, str):
            raise ValueError(f"exclusion {exclusion_id}: bad target {target!r}")
        target = parse_target(target)
    try:
        return Exclusion(exclusion_id, rule, attack_class, path, target)
    except ValueError as e:
        raise ValueError(f"exclusion {exclusion_id}: {e}") from None


def exclusions_from_json(entries: object) -> tuple[tuple[Exclusion, ...], list[str]]:
    """The exclusions of a rules document, and the problems of the entries left out."""
    if entries is None:
        return (), []
    if not isinstance(entries, list):
        return (), ["'exclusions' is not a list"]
    found, problems = [], []
    for entry in entries:
        try:
            found.append(exclusion_from_json(entry))
        except ValueError as e:
            problems.append(str(e))
    return tuple(found), problems


def profile_precedence(profile: EndpointProfile) -> tuple[int, int, bool, bool, str]:
    """Sort key putting the most specific endpoint profile first (module docstring)."""
    pattern = profile.path_pattern
    if "*" in pattern:
        kind = 2
    elif "{" in pattern:
        kind = 1
    else:
        kind = 0
    return (kind, -len(pattern.replace("*", "")), profile.method == "*",
            profile.mode != "deep", pattern)


# -- loading (database threads) ------------------------------------------------------


@attrs.frozen
class Loaded:
    """Policies as read, with what was wrong in their rules documents (by site)."""

    policies: dict[UUID, SitePolicy]
    problems: dict[UUID, list[str]]


_SITES = ("SELECT s.id, s.mode, s.paranoia_level, s.anomaly_threshold, s.inspect_body_limit,"
          " s.body_overflow, r.body -> 'exclusions'"
          " FROM sites s LEFT JOIN rules r ON r.site_id = s.id AND r.is_active")
_PROFILES = ("SELECT site_id, method, path_pattern, mode FROM endpoint_profiles"
             " WHERE mode <> 'normal'")


def _build(sites: Iterable[tuple], profiles: Iterable[tuple],
           default_limit: int) -> Loaded:
    by_site: dict[UUID, list[EndpointProfile]] = {}
    for site_id, method, pattern, mode in profiles:
        by_site.setdefault(site_id, []).append(EndpointProfile(method, pattern, mode))
    policies: dict[UUID, SitePolicy] = {}
    problems: dict[UUID, list[str]] = {}
    for site_id, mode, paranoia, threshold, limit, overflow, entries in sites:
        exclusions, wrong = exclusions_from_json(entries)
        if wrong:
            problems[site_id] = wrong
        policies[site_id] = SitePolicy(
            site_id, mode=mode, paranoia=paranoia, threshold=threshold,
            inspect_body_limit=default_limit if limit is None else limit,
            body_overflow=overflow, exclusions=exclusions,
            profiles=tuple(sorted(by_site.get(site_id, ()), key=profile_precedence)))
    return Loaded(policies, problems)


def _load_all(cur: psycopg.Cursor, default_limit: int) -> Loaded:
    cur.execute(_SITES)
    sites = cur.fetchall()
    cur.execute(_PROFILES)
    return _build(sites, cur.fetchall(), default_limit)


def _load_one(cur: psycopg.Cursor, site_id: UUID, default_limit: int) -> Loaded:
    cur.execute(_SITES + " WHERE s.id = %s", (site_id,))
    sites = cur.fetchall()
    cur.execute(_PROFILES + " AND site_id = %s", (site_id,))
    return _build(sites, cur.fetchall(), default_limit)


class PolicyStore:
    """
    Policy queries, as Deferreds.

    @param inspect_body_limit: the body limit of sites that set none.
    """

    def __init__(self, db: Database,
                 inspect_body_limit: int = DEFAULT_INSPECT_BODY_LIMIT) -> None:
        self._db = db
        self.inspect_body_limit = inspect_body_limit

    def all(self) -> Deferred[Loaded]:
        """Every site's policy."""
        return self._db.transact("policies.all", _load_all, self.inspect_body_limit)

    def one(self, site_id: UUID) -> Deferred[Loaded]:
        """The policy of one site (none when the site is gone)."""
        return self._db.transact("policies.one", _load_one, site_id, self.inspect_body_limit)


# -- the table (reactor thread) ----------------------------------------------------------


@attrs.define(eq=False)
class PolicyTable:
    """
    Every site's L{SitePolicy}, by site id, in memory.

    Wiring: the owner subscribes the table to the listener, awaits a first
    L{reload}, and runs L{refresher} (every 60 s).
    """

    store: PolicyStore
    clock: IReactorTime
    _rows: KeyedRows[UUID, SitePolicy] = attrs.field(init=False)
    _keeper: Keeper[UUID, SitePolicy] = attrs.field(init=False)
    _problems: Throttle = attrs.field(init=False)
    #: The same policies by the site id's integer: a dict lookup in C per
    #: request, where a UUID key costs a call of its Python __hash__ and __eq__.
    _by_int: dict[int, SitePolicy] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self._rows = KeyedRows(index_all=self._index_all, index_one=self._index_one)
        self._keeper = Keeper("policy-table", self._rows, self._load_all, self.clock,
                              load_one=self._load_one, key=UUID)
        self._problems = Throttle(self.clock, 3600.0)

    # -- hot path ------------------------------------------------------------------

    def get(self, site_id: UUID) -> SitePolicy:
        """
        The policy of site C{site_id}: Veil's defaults (block mode, paranoia
        1, threshold 5) when the table has none for it.
        """
        policy = self._by_int.get(site_id.int)
        if policy is None:
            return SitePolicy(site_id, inspect_body_limit=self.store.inspect_body_limit)
        return policy

    def _index_all(self, rows: dict[UUID, SitePolicy]) -> None:
        self._by_int = {key.int: policy for key, policy in rows.items()}

    def _index_one(self, key: UUID, before: SitePolicy | None, after: SitePolicy | None) -> None:
        if after is None:
            self._by_int.pop(key.int, None)
        else:
            self._by_int[key.int] = after

    # -- inspection and keeping current -----------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether a full load has completed at least once."""
        return self._rows.loaded

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, site_id: UUID) -> bool:
        """Whether the table holds the site's own policy (not the default)."""
        return site_id in self._rows.rows

    def on_change(self, callback: Any) -> None:
        """Call C{callback(before, after)} whenever a site's policy is added, changed or removed."""
        self._rows.on_change(callback)

    def subscribe(self, listener: ListenerService) -> list[Subscription]:
        """Follow the three channels, and reload whole after each (re)connection."""
        return self._keeper.follow(listener, *CHANNELS)

    def reload(self) -> Deferred[None]:
        """Load every site's policy and swap the table in whole."""
        return self._keeper.reload()

    def refresher(self, every: float) -> PeriodicWorker:
        """The supervised periodic reload, the safety net behind NOTIFY."""
        return self._keeper.refresher(every)

    def _load_all(self) -> Deferred[dict[UUID, SitePolicy]]:
        return self.store.all().addCallback(self._checked)

    def _load_one(self, site_id: UUID) -> Deferred[SitePolicy | None]:
        return self.store.one(site_id).addCallback(
            lambda loaded: self._checked(loaded).get(site_id))

    def _checked(self, loaded: Loaded) -> dict[UUID, SitePolicy]:
        for site_id, problems in loaded.problems.items():
            self._problems.emit(
                _log.warn, site_id,
                "Site {site_id}: {count} exclusion(s) of its rules document left out:"
                " {problems}{suppressed_text}",
                site_id=str(site_id), count=len(problems), problems="; ".join(problems)[:500])
        return loaded.policies

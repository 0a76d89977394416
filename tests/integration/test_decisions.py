"""Tests for L{veil.waf.decisions}: the store against a real PostgreSQL, and the table."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from uuid import UUID

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.postgres import fresh_database, started_database
from veil.store.listener import ListenerService
from veil.waf.decisions import Decision, DecisionStore, DecisionTable


def add_site(conninfo: str, domain: str) -> UUID:
    """Insert a site (and its owner) straight into the store."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        owner = conn.execute("INSERT INTO users (email) VALUES (%s) RETURNING id",
                             (f"owner-{uuid.uuid4().hex[:8]}@example.com",)).fetchone()[0]
        return conn.execute("INSERT INTO sites (owner_id, domain, upstream) VALUES (%s, %s, %s)"
                            " RETURNING id", (owner, domain, "http://127.0.0.1:9")).fetchone()[0]


def execute(conninfo: str, statement: str, params: tuple = ()) -> list[tuple]:
    """Run one statement in its own committed transaction, as another process would."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


class Changes:
    """Records a table's changes and lets a test wait (bounded) for a condition."""

    def __init__(self, table: DecisionTable) -> None:
        self.seen: list[tuple[Decision | None, Decision | None]] = []
        self._waiting: list[tuple[Callable[[], bool], Deferred[None]]] = []
        table.on_change(self._changed)

    def _changed(self, before: Decision | None, after: Decision | None) -> None:
        self.seen.append((before, after))
        for entry in list(self._waiting):
            condition, d = entry
            if condition():
                self._waiting.remove(entry)
                d.callback(None)

    def until(self, condition: Callable[[], bool], timeout: float = 15.0) -> Deferred[None]:
        if condition():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append((condition, d))
        return d.addTimeout(timeout, reactor)


class _DatabaseCase(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.conninfo = fresh_database(self)
        self.db = started_database(self, self.conninfo)
        self.store = DecisionStore(self.db)
        self.clock = Clock()
        self.clock.advance(int(time.time()))  # whole seconds: expiries round-trip exactly
        self.table = DecisionTable(self.store, self.clock)
        self.site_a = add_site(self.conninfo, "a.example.com")
        self.site_b = add_site(self.conninfo, "b.example.com")

    def add(self, network: str, type: str, site_id: UUID | None = None,
            expires_in: float | None = None, reason: str = "") -> Deferred[Decision]:
        expires_at = None if expires_in is None else self.clock.seconds() + expires_in
        return self.store.add(network, type, expires_at, site_id, reason, "manual")

    def match_type(self, ip: str, site_id: UUID | None = None) -> str | None:
        decision = self.table.match(ip, site_id)
        return None if decision is None else decision.type


class DecisionStoreTests(_DatabaseCase):
    """DecisionStore writes and reads decisions."""

    async def test_add_load_remove(self) -> None:
        """A decision added is read back the same by load_one and load_all, and removed."""
        added = await self.store.add("2001:db8::/32", "block", self.clock.seconds() + 3600.5,
                                     self.site_a, "too many 404s", "agent")
        self.assertEqual(added.network, "2001:db8::/32")
        self.assertEqual((added.site_id, added.type, added.reason, added.source),
                         (self.site_a, "block", "too many 404s", "agent"))
        self.assertAlmostEqual(added.expires_at, self.clock.seconds() + 3600.5, places=3)
        self.assertEqual(await self.store.load_one(added.id), added)
        self.assertEqual(await self.store.load_all(), [added])
        host = await self.store.add("192.0.2.7", "ban")
        self.assertEqual(host.network, "192.0.2.7/32")
        self.assertIsNone(host.site_id)
        self.assertIsNone(host.expires_at)
        self.assertTrue(await self.store.remove(added.id))
        self.assertFalse(await self.store.remove(added.id))
        self.assertIsNone(await self.store.load_one(added.id))
        self.assertEqual(await self.store.load_all(), [host])

    async def test_load_all_skips_expired(self) -> None:
        """load_all leaves out decisions whose expiry has passed."""
        execute(self.conninfo,
                "INSERT INTO decisions (target, type, source, created_at, expires_at)"
                " VALUES ('192.0.2.1', 'ban', 'manual', now() - interval '2 hours',"
                " now() - interval '1 hour')")
        kept = await self.add("192.0.2.2", "ban", expires_in=3600)
        self.assertEqual(await self.store.load_all(), [kept])

    async def test_bad_input_refused(self) -> None:
        """A network with host bits, an unknown type or source fails with ValueError."""
        for args in [("10.1.2.3/8", "ban"), ("nonsense", "ban"), ("10.0.0.0/8", "deny")]:
            with self.assertRaises(ValueError):
                await self.store.add(*args)
        with self.assertRaises(ValueError):
            await self.store.add("10.0.0.0/8", "ban", source="someone")
        self.assertEqual(await self.store.load_all(), [])


class DecisionTableTests(_DatabaseCase):
    """DecisionTable loads decisions and picks the one that applies."""

    async def test_global_and_site(self) -> None:
        """Global decisions apply to every site; a site's decisions only to that site."""
        await self.add("203.0.113.0/24", "block")
        await self.add("198.51.100.0/24", "throttle", self.site_a)
        await self.add("2001:db8::/48", "scrutinize", self.site_b)
        await self.table.reload()
        self.assertTrue(self.table.loaded)
        self.assertEqual(len(self.table), 3)
        for site in (None, self.site_a, self.site_b):
            self.assertEqual(self.match_type("203.0.113.9", site), "block")
        self.assertEqual(self.match_type("198.51.100.1", self.site_a), "throttle")
        self.assertIsNone(self.match_type("198.51.100.1", self.site_b))
        self.assertIsNone(self.match_type("198.51.100.1"))
        self.assertEqual(self.match_type("2001:db8::77", self.site_b), "scrutinize")
        self.assertIsNone(self.match_type("2001:db8::77", self.site_a))
        self.assertIsNone(self.match_type("192.0.2.1", self.site_a))
        self.assertEqual(self.match_type("::ffff:203.0.113.9", self.site_a), "block")
        self.assertIsNone(self.table.match("not an address", self.site_a))
        self.assertIsNone(self.table.match(None, self.site_a))

    async def test_longest_prefix_wins(self) -> None:
        """A longer prefix wins over a shorter one, whatever their scope and type."""
        await self.add("203.0.113.0/24", "ban")
        await self.add("203.0.113.7/32", "log_only", self.site_a)
        await self.add("198.51.100.0/24", "log_only", self.site_a)
        await self.add("198.51.100.9/32", "ban")
        await self.table.reload()
        self.assertEqual(self.match_type("203.0.113.7", self.site_a), "log_only")
        self.assertEqual(self.match_type("203.0.113.8", self.site_a), "ban")
        self.assertEqual(self.match_type("203.0.113.7", self.site_b), "ban")
        self.assertEqual(self.match_type("198.51.100.9", self.site_a), "ban")
        self.assertEqual(self.match_type("198.51.100.10", self.site_a), "log_only")

    async def test_site_beats_global_at_equal_length(self) -> None:
        """At the same prefix length, the site's decision wins over a global one."""
        await self.add("203.0.113.0/24", "ban")
        await self.add("203.0.113.0/24", "throttle", self.site_a)
        await self.table.reload()
        self.assertEqual(self.match_type("203.0.113.1", self.site_a), "throttle")
        self.assertEqual(self.match_type("203.0.113.1", self.site_b), "ban")

    async def test_type_precedence(self) -> None:
        """On one network and scope: ban > block > throttle > scrutinize > log_only."""
        added = {}
        for kind in ["log_only", "scrutinize", "throttle", "ban", "block"]:
            added[kind] = await self.add("192.0.2.0/24", kind, self.site_a)
        for kind in ["ban", "block", "throttle", "scrutinize", "log_only"]:
            await self.table.reload()
            self.assertEqual(self.match_type("192.0.2.5", self.site_a), kind)
            await self.store.remove(added[kind].id)
        await self.table.reload()
        self.assertIsNone(self.table.match("192.0.2.5", self.site_a))
        self.assertEqual(len(self.table), 0)

    async def test_expiry_at_lookup(self) -> None:
        """An expired decision stops matching at once, and prune drops it later."""
        ban = await self.add("192.0.2.7", "ban", expires_in=60)
        await self.add("192.0.2.7", "log_only", expires_in=120)
        await self.add("192.0.2.0/24", "block")
        await self.add("198.51.100.0/24", "throttle", self.site_a, expires_in=30)
        await self.table.reload()
        self.assertEqual(self.table.match("192.0.2.7"), ban)
        self.assertEqual(self.match_type("198.51.100.1", self.site_a), "throttle")
        self.assertEqual(self.table.prune(), 0)

        self.clock.advance(30)
        self.assertIsNone(self.table.match("198.51.100.1", self.site_a))
        self.assertEqual(self.match_type("192.0.2.7"), "ban")
        self.clock.advance(30)
        self.assertEqual(self.match_type("192.0.2.7"), "log_only")
        self.assertEqual(len(self.table), 4)  # still cached: matching ignores them
        self.clock.advance(60)
        self.assertEqual(self.match_type("192.0.2.7"), "block")

        changes = Changes(self.table)
        self.assertEqual(self.table.prune(), 3)
        self.assertEqual(len(self.table), 1)
        self.assertEqual(sorted(before.type for before, after in changes.seen),
                         ["ban", "log_only", "throttle"])
        self.assertEqual(self.match_type("192.0.2.7"), "block")

    async def test_reload_skips_expired_by_clock(self) -> None:
        """A reload leaves out decisions that have expired by the table's clock."""
        await self.add("192.0.2.7", "ban", expires_in=60)
        await self.add("192.0.2.8", "ban")
        self.clock.advance(61)
        await self.table.reload()
        self.assertEqual(len(self.table), 1)
        self.assertIsNone(self.table.match("192.0.2.7"))
        self.assertEqual(self.match_type("192.0.2.8"), "ban")

    async def test_reload_swaps_and_reports(self) -> None:
        """A reload replaces the whole table and reports what was added and removed."""
        first = await self.add("192.0.2.7", "ban")
        await self.table.reload()
        changes = Changes(self.table)
        await self.store.remove(first.id)
        second = await self.add("2001:db8::1", "block", self.site_a)
        await self.table.reload()
        self.assertIsNone(self.table.match("192.0.2.7"))
        self.assertEqual(self.table.match("2001:db8::1", self.site_a), second)
        self.assertEqual(sorted(changes.seen, key=lambda c: c[0] is None),
                         [(first, None), (None, second)])


class DecisionNotifyTests(_DatabaseCase):
    """The table follows veil_decisions notifications from other connections."""

    async def test_follows_inserts_updates_deletes(self) -> None:
        """Rows inserted, changed and deleted by SQL reach the table through NOTIFY."""
        existing = await self.add("192.0.2.1", "ban")
        listener = ListenerService(self.conninfo, reactor, poll_interval=0.1, max_backoff=1.0)
        changes = Changes(self.table)
        self.table.subscribe(listener)
        listener.startService()
        self.addCleanup(listener.stopService)
        # The first (re)connection listens, then reloads the table.
        await changes.until(lambda: self.table.get(existing.id) is not None)
        self.assertTrue(self.table.loaded)

        [(new_id,)] = execute(self.conninfo,
                              "INSERT INTO decisions (target, type, source, site_id)"
                              " VALUES ('203.0.113.0/24', 'throttle', 'agent', %s) RETURNING id",
                              (self.site_a,))
        await changes.until(lambda: self.match_type("203.0.113.5", self.site_a) == "throttle")
        self.assertIsNone(self.table.match("203.0.113.5", self.site_b))

        execute(self.conninfo, "UPDATE decisions SET type = 'ban', site_id = NULL WHERE id = %s",
                (new_id,))
        await changes.until(lambda: self.match_type("203.0.113.5", self.site_b) == "ban")
        self.assertEqual(self.table.match("203.0.113.5", self.site_a).id, new_id)

        execute(self.conninfo, "DELETE FROM decisions WHERE id = %s", (new_id,))
        await changes.until(lambda: self.table.get(new_id) is None)
        self.assertIsNone(self.table.match("203.0.113.5", self.site_a))
        self.assertEqual(len(self.table), 1)

    async def test_expiry_via_notify(self) -> None:
        """A row changed to have already expired (by the table's clock) leaves the table."""
        listener = ListenerService(self.conninfo, reactor, poll_interval=0.1, max_backoff=1.0)
        changes = Changes(self.table)
        self.table.subscribe(listener)
        decision = await self.add("192.0.2.9", "block", expires_in=3600)
        listener.startService()
        self.addCleanup(listener.stopService)
        await changes.until(lambda: self.table.get(decision.id) is not None)
        self.clock.advance(600)
        execute(self.conninfo,
                "UPDATE decisions SET expires_at = to_timestamp(%s) WHERE id = %s",
                (self.clock.seconds() - 1, decision.id))
        await changes.until(lambda: self.table.get(decision.id) is None)
        self.assertIsNone(self.table.match("192.0.2.9"))


# -- ordering, against a store whose answers the test releases ---------------------

class HeldStore:
    """A decision store whose answers are released by the test, in any order."""

    def __init__(self) -> None:
        self.all: list[Deferred[list[Decision]]] = []
        self.one: list[tuple[UUID, Deferred[Decision | None]]] = []

    def load_all(self) -> Deferred[list[Decision]]:
        d: Deferred[list[Decision]] = Deferred()
        self.all.append(d)
        return d

    def load_one(self, decision_id: UUID) -> Deferred[Decision | None]:
        d: Deferred[Decision | None] = Deferred()
        self.one.append((decision_id, d))
        return d


def decision(network: str, type: str = "ban", site_id: UUID | None = None,
             expires_at: float | None = None, decision_id: UUID | None = None) -> Decision:
    return Decision(decision_id or uuid.uuid4(), site_id, network, type, "", "manual",
                    expires_at)


class DecisionTableOrderingTests(SynchronousTestCase):
    """Out-of-order answers from the store never leave the table stale."""

    def setUp(self) -> None:
        self.store = HeldStore()
        self.clock = Clock()
        self.clock.advance(1000)
        self.table = DecisionTable(self.store, self.clock)  # type: ignore[arg-type]

    def test_older_fetch_answer_ignored(self) -> None:
        """Of two fetches of one id, only the later one's answer is applied."""
        d = decision("192.0.2.1")
        self.table._notified(str(d.id))
        self.table._notified(str(d.id))
        (_, first), (_, second) = self.store.one
        second.callback(None)
        first.callback(d)
        self.assertIsNone(self.table.match("192.0.2.1"))
        self.assertEqual(len(self.table), 0)

    def test_change_during_reload_fetched_again(self) -> None:
        """A change notified while a reload reads is fetched again after the swap."""
        d = decision("192.0.2.1")
        reloaded = self.table.reload()
        self.table._notified(str(d.id))
        self.store.one.pop()[1].callback(d)
        self.store.all[0].callback([])  # a snapshot read before the insert
        self.assertEqual(self.successResultOf(reloaded), None)
        [(fetched_id, again)] = self.store.one
        self.assertEqual(fetched_id, d.id)
        again.callback(d)
        self.assertEqual(self.table.match("192.0.2.1"), d)

    def test_latest_reload_swaps(self) -> None:
        """When reloads overlap, only the last one started swaps its rows in."""
        newer = decision("192.0.2.2")
        self.table.reload()
        self.table.reload()
        self.store.all[1].callback([newer])
        self.store.all[0].callback([decision("192.0.2.1")])
        self.assertIsNone(self.table.match("192.0.2.1"))
        self.assertEqual(self.table.match("192.0.2.2"), newer)

    def test_bad_payload_reloads(self) -> None:
        """A payload that is not an id makes the table reload whole."""
        self.table._notified("garbage")
        self.assertEqual(len(self.store.all), 1)

    def test_replaced_expiry(self) -> None:
        """A decision whose expiry was extended is not pruned at its old expiry."""
        first = decision("192.0.2.1", expires_at=1010)
        self.table.reload()
        self.store.all.pop().callback([first])
        extended = decision("192.0.2.1", expires_at=1100, decision_id=first.id)
        self.table._notified(str(first.id))
        self.store.one.pop()[1].callback(extended)
        self.clock.advance(20)
        self.assertEqual(self.table.prune(), 0)
        self.assertEqual(self.table.match("192.0.2.1"), extended)
        self.clock.advance(100)
        self.assertIsNone(self.table.match("192.0.2.1"))
        self.assertEqual(self.table.prune(), 1)
        self.assertEqual(len(self.table), 0)

    def test_site_map_dropped_when_empty(self) -> None:
        """Removing a site's last decision leaves no empty prefix set behind."""
        site = uuid.uuid4()
        d = decision("192.0.2.0/24", "block", site)
        self.table.reload()
        self.store.all.pop().callback([d])
        self.assertEqual(self.table.match("192.0.2.9", site), d)
        self.table._notified(str(d.id))
        self.store.one.pop()[1].callback(None)
        self.assertIsNone(self.table.match("192.0.2.9", site))
        self.assertEqual(self.table._sites, {})

    def test_from_none_to_some_and_back(self) -> None:
        """
        With no decision at all the table answers at once, and it answers
        again as soon as a decision arrives by notification (global or a
        site's, the site's found by an equal id that is another object),
        and not after the last one goes.
        """
        site = uuid.uuid4()
        self.table.reload()
        self.store.all.pop().callback([])
        self.assertIsNone(self.table.match("192.0.2.9", site))
        local = decision("192.0.2.0/24", "block", site)
        self.table._notified(str(local.id))
        self.store.one.pop()[1].callback(local)
        self.assertEqual(self.table.match("192.0.2.9", UUID(str(site))), local)
        self.assertIsNone(self.table.match("192.0.2.9", uuid.uuid4()))
        self.table._notified(str(local.id))
        self.store.one.pop()[1].callback(None)
        self.assertIsNone(self.table.match("192.0.2.9", site))
        wide = decision("192.0.2.0/24", "throttle")
        self.table._notified(str(wide.id))
        self.store.one.pop()[1].callback(wide)
        self.assertEqual(self.table.match("192.0.2.9", site), wide)
        self.table._notified(str(wide.id))
        self.store.one.pop()[1].callback(None)
        self.assertIsNone(self.table.match("192.0.2.9", site))
        self.assertEqual(len(self.table), 0)

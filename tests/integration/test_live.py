"""
The live hub across processes: two request logs, hubs, listeners and pools
on one real PostgreSQL database, as two Veil processes would have.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import attrs
import psycopg
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.integration.test_requestlog import row
from tests.support.postgres import fresh_database, started_database
from tests.support.waiting import until
from veil.live.hub import Event, Gap, Hub, Subscription
from veil.live.peers import PeerFeed
from veil.metrics import Registry
from veil.store.listener import ListenerService
from veil.store.requestlog import RequestLog


@attrs.define(eq=False)
class Process:
    """What one Veil process has of the live stream."""

    hub: Hub
    log: RequestLog
    listener: ListenerService
    feed: PeerFeed
    metrics: Registry

    def fetched(self) -> float:
        return self.metrics.counter("veil_live_peer_rows_total", "").value()


def events(subscription: Subscription, seen: list[Event | Gap]) -> list[str]:
    """Move what C{subscription} has queued into C{seen}; the request ids (or gaps) so far."""
    seen.extend(subscription.take())
    return [f"gap:{i.reason}" if isinstance(i, Gap) else i.row.request_id for i in seen]


class PeerFeedTests(TestCase):
    """Rows one process writes reach the other processes' subscribers, once."""

    timeout = 60

    def setUp(self) -> None:
        self.conninfo = fresh_database(self)

    async def process(self) -> Process:
        metrics = Registry()
        hub = Hub(reactor, metrics=metrics)
        db = started_database(self, self.conninfo, max_size=2, metrics=metrics)
        listener = ListenerService(self.conninfo, reactor, poll_interval=0.1)
        log = RequestLog(self.conninfo, reactor, Path(self.mktemp()).resolve(),
                         publish=hub.publish, origin=hub.origin, metrics=metrics, interval=0.05)
        feed = PeerFeed(hub, db, listener, reactor, metrics=metrics)
        log.startService()
        self.addCleanup(log.stopService)
        feed.startService()
        self.addCleanup(feed.stopService)
        listener.startService()
        self.addCleanup(listener.stopService)
        await until(lambda: listener.backend_pid is not None, what="the listener connected")
        return Process(hub, log, listener, feed, metrics)

    async def test_rows_cross_processes_once(self) -> None:
        """
        A row appended in one process reaches a subscriber of its site in
        the other (fetched from the database), and the local subscriber gets
        it once (at append time), not again when its own batch is announced.
        Rows of sites nobody watches are not fetched.
        """
        one, two = await self.process(), await self.process()
        site, unwatched = uuid.uuid4(), uuid.uuid4()
        seen_one: list[Event | Gap] = []
        seen_two: list[Event | Gap] = []
        sub_one = one.hub.subscribe(site)
        sub_two = two.hub.subscribe(site)

        one.log.append(row(1, unwatched))
        one.log.append(row(2, site))
        self.assertEqual(events(sub_one, seen_one), ["req-2"])
        await until(lambda: events(sub_two, seen_two) == ["req-2"],
                    what="process one's row in process two")
        self.assertEqual(two.fetched(), 1)

        # The other way; notifications arrive in commit order, so once
        # process one has process two's row, it has also seen (and
        # skipped) the announcement of its own batch.
        two.log.append(row(3, site))
        self.assertEqual(events(sub_two, seen_two), ["req-2", "req-3"])
        await until(lambda: events(sub_one, seen_one) == ["req-2", "req-3"],
                    what="process two's row in process one")
        self.assertEqual(one.fetched(), 1)

        # Nothing more arrives: no duplicate of either.
        one.log.append(row(4, site))
        await until(lambda: two.fetched() == 2, what="the next row fetched")
        self.assertEqual(events(sub_two, seen_two), ["req-2", "req-3", "req-4"])
        self.assertEqual(events(sub_one, seen_one), ["req-2", "req-3", "req-4"])
        # The fetched row is the row written, field by field.
        self.assertEqual(seen_two[0].data()["path"], "/item/2")
        self.assertEqual(seen_two[0].data()["client_ip"], "192.0.2.10")
        self.assertEqual(seen_two[0].data()["site_id"], str(site))

    async def test_nobody_watching(self) -> None:
        """A process with no subscribers fetches nothing of the other's rows."""
        one, two = await self.process(), await self.process()
        site = uuid.uuid4()
        sub_one = one.hub.subscribe(site)
        seen: list[Event | Gap] = []
        # Two's own row, announced after one's: once one has it, two has
        # seen one's announcement too.
        two.log.append(row(1, uuid.uuid4()))
        await until(lambda: two.log.pending == 0, what="two's row written")
        one.log.append(row(2, site))
        await until(lambda: one.log.pending == 0, what="one's row written")
        two.log.append(row(3, site))
        await until(lambda: events(sub_one, seen) == ["req-2", "req-3"],
                    what="two's row in one")
        self.assertEqual(two.fetched(), 0)

    async def test_operator_sees_every_site(self) -> None:
        """An every-site subscriber in one process gets the other's rows of any site."""
        one, two = await self.process(), await self.process()
        every = two.hub.subscribe(None)
        seen: list[Event | Gap] = []
        one.log.append(row(1, uuid.uuid4()))
        one.log.append(row(2, None))
        one.log.append(row(3, uuid.uuid4()))
        await until(lambda: events(every, seen) == ["req-1", "req-2", "req-3"],
                    what="every row in the operator view")

    async def test_listener_reconnect_is_a_gap(self) -> None:
        """When the listener's connection is lost, subscribers are told of a gap."""
        one = await self.process()
        sub = one.hub.subscribe(uuid.uuid4())
        seen: list[Event | Gap] = []
        old = one.listener.backend_pid
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (old,))
        await until(lambda: one.listener.backend_pid not in (None, old),
                    what="the listener reconnected")
        self.assertEqual(events(sub, seen), ["gap:reconnect"])
        self.flushLoggedErrors()

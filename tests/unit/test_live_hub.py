"""Tests for L{veil.live.hub} and the request log's announcements."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from veil.live.hub import Event, Gap, Hub, Subscription, parse_event_id
from veil.metrics import Registry
from veil.store.logrows import Batch
from veil.store.requestlog import ANNOUNCEMENT_MAX, Announcement, LogRow, id_ranges

SITE_A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
SITE_B = uuid.UUID("00000000-0000-4000-8000-00000000000b")


def row(n: int, site: uuid.UUID | None = SITE_A) -> LogRow:
    return LogRow(
        ts=datetime(2031, 7, 4, 12, 0, n % 60, tzinfo=timezone.utc), site_id=site,
        host="shop.test", method="GET", path=f"/item/{n}", query=None, status=200,
        bytes_in=10, bytes_out=20, duration_ms=1.5, origin_ms=1.0, client_ip="192.0.2.1",
        request_id=f"req-{n}", user_agent="curl/8", classification="malicious",
        classifier="signature", confidence=0.9, attack_type="sqli", blocked=True,
        rule_ids=(3011, 3020), anomaly_score=10, excerpt="GET /item?id=1'--")


def paths(items: list[Event | Gap]) -> list[str]:
    """Each item as its path, or C{gap:<reason>}."""
    return [f"gap:{i.reason}" if isinstance(i, Gap) else i.row.path for i in items]


class HubTests(SynchronousTestCase):
    """The hub hands each row to the subscribers of its site, within bounds."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Registry()
        self.hub = Hub(self.clock, ring_size=100, queue_limit=10, linger=60.0,
                       metrics=self.metrics)

    def test_filtering(self) -> None:
        """A site's subscriber gets that site's rows only; an operator's gets every row."""
        a = self.hub.subscribe(SITE_A)
        b = self.hub.subscribe(SITE_B)
        every = self.hub.subscribe(None)
        self.hub.publish(row(1, SITE_A))
        self.hub.publish(row(2, SITE_B))
        self.hub.publish(row(3, None))
        self.assertEqual(paths(a.take()), ["/item/1"])
        self.assertEqual(paths(b.take()), ["/item/2"])
        self.assertEqual(paths(every.take()), ["/item/1", "/item/2", "/item/3"])

    def test_event_data(self) -> None:
        """
        An event carries the row as a JSON-ready dict (with the WAF's verdict:
        rule ids, score, excerpt), and an increasing SSE id.
        """
        s = self.hub.subscribe(SITE_A)
        self.hub.publish(row(1))
        self.hub.publish(row(2))
        first, second = s.take()
        data = json.loads(json.dumps(first.data()))
        self.assertEqual(data, {
            "site_id": str(SITE_A), "ts": "2031-07-04T12:00:01+00:00", "host": "shop.test",
            "method": "GET", "path": "/item/1", "query": None, "status": 200, "bytes_in": 10,
            "bytes_out": 20, "duration_ms": 1.5, "origin_ms": 1.0, "client_ip": "192.0.2.1",
            "request_id": "req-1", "user_agent": "curl/8", "classification": "malicious",
            "classifier": "signature", "confidence": 0.9, "attack_type": "sqli",
            "blocked": True, "rule_ids": [3011, 3020], "anomaly_score": 10,
            "excerpt": "GET /item?id=1'--"})
        self.assertEqual(parse_event_id(first.id), (self.hub.origin, 1))
        self.assertEqual(parse_event_id(second.id), (self.hub.origin, 2))
        self.assertGreater(second.cursor, first.cursor)

    def test_no_subscribers(self) -> None:
        """With nobody subscribed, publishing only advances the cursor and the ring."""
        for n in range(1000):
            self.hub.publish(row(n))
        self.assertEqual(self.hub.cursor, 1000)
        self.assertEqual(self.hub.subscribers, 0)
        # Subscribers of other sites are not given anything either.
        b = self.hub.subscribe(SITE_B)
        self.hub.publish(row(1000, SITE_A))
        self.assertEqual(len(b), 0)

    def test_bounded_queue_gap(self) -> None:
        """
        A subscriber that does not take falls behind: its queue never holds
        more than its limit, it is told with a gap, and the loss is counted.
        """
        slow = self.hub.subscribe(SITE_A, limit=5)
        fast = self.hub.subscribe(SITE_A)
        for n in range(1, 101):
            self.hub.publish(row(n))
            self.assertLessEqual(len(slow), 5)
            self.assertEqual(paths(fast.take()), [f"/item/{n}"])
        items = slow.take()
        self.assertIsInstance(items[0], Gap)
        self.assertEqual(items[0].reason, "overflow")
        self.assertEqual(paths(items[1:]), [f"/item/{n}" for n in range(100 - len(items) + 2,
                                                                         101)])
        # Everything before the last events was lost, and counted.
        self.assertEqual(slow.lost, 100 - (len(items) - 1))
        self.assertEqual(self.metrics.counter("veil_live_lost_total", "").value(), slow.lost)
        self.assertEqual(fast.lost, 0)
        self.hub.publish(row(101))
        self.assertEqual(paths(slow.take()), ["/item/101"])

    def test_on_ready(self) -> None:
        """on_ready is called when the queue becomes non-empty, not for every event."""
        woken: list[Subscription] = []
        s = self.hub.subscribe(SITE_A, on_ready=woken.append)
        self.hub.publish(row(1))
        self.hub.publish(row(2))
        self.assertEqual(woken, [s])
        s.take()
        self.hub.publish(row(3))
        self.assertEqual(woken, [s, s])

    def test_failing_subscriber(self) -> None:
        """A subscriber whose on_ready raises does not keep others from their events."""
        def broken(s: Subscription) -> None:
            raise RuntimeError("boom")

        self.hub.subscribe(SITE_A, on_ready=broken)
        good = self.hub.subscribe(SITE_A)
        self.hub.publish(row(1))
        self.assertEqual(paths(good.take()), ["/item/1"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unsubscribe(self) -> None:
        """A cancelled subscription gets nothing more, and cancelling twice is harmless."""
        s = self.hub.subscribe(SITE_A)
        other = self.hub.subscribe(SITE_A)
        self.hub.publish(row(1))
        s.cancel()
        s.cancel()
        self.hub.publish(row(2))
        self.assertEqual(len(s), 0)
        self.assertFalse(s.active)
        self.assertEqual(self.hub.subscribers, 1)
        self.assertEqual(paths(other.take()), ["/item/1", "/item/2"])
        other.cancel()
        self.assertEqual(self.hub.subscribers, 0)

    def test_resume(self) -> None:
        """Resuming from an event id replays the ring's later rows of the site, without a gap."""
        s = self.hub.subscribe(SITE_A)
        self.hub.publish(row(1))
        self.hub.publish(row(2))
        last = s.take()[-1].id
        s.cancel()
        self.hub.publish(row(3, SITE_A))
        self.hub.publish(row(4, SITE_B))
        self.hub.publish(row(5, SITE_A))
        self.clock.advance(30)
        again = self.hub.subscribe(SITE_A, last_event_id=last)
        self.assertEqual(paths(again.take()), ["/item/3", "/item/5"])
        self.hub.publish(row(6))
        self.assertEqual(paths(again.take()), ["/item/6"])

    def test_resume_not_possible(self) -> None:
        """
        A resumption the hub cannot vouch for starts with a gap: an id of
        another hub, a malformed one, one older than the ring, one from
        before the site's watch lapsed.
        """
        s = self.hub.subscribe(SITE_A)
        self.hub.publish(row(1))
        last = s.take()[-1].id
        for bad in ["0123abcd-1", "garbage", f"{self.hub.origin}-999"]:
            resumed = self.hub.subscribe(SITE_A, last_event_id=bad)
            self.assertEqual(paths(resumed.take()), ["gap:resume"])
            resumed.cancel()
        s.cancel()
        # Other processes' rows of the site are no longer fetched after the linger.
        self.clock.advance(61)
        lapsed = self.hub.subscribe(SITE_A, last_event_id=last)
        self.assertEqual(paths(lapsed.take()), ["gap:resume"])
        # Older than the ring, though the site was watched all along.
        watching = self.hub.subscribe(SITE_A)
        self.hub.publish(row(2))
        recent = watching.take()[-1].id
        for n in range(100):  # the ring's size: the next row after `recent` is its oldest
            self.hub.publish(row(n, SITE_B))
        self.assertEqual(paths(self.hub.subscribe(SITE_A, last_event_id=recent).take()), [])
        self.hub.publish(row(3, SITE_B))
        old = self.hub.subscribe(SITE_A, last_event_id=recent)
        self.assertEqual(paths(old.take()), ["gap:resume"])

    def test_resume_with_operator_watching(self) -> None:
        """A site's rows are complete while an operator watches every site."""
        self.hub.subscribe(None)
        s = self.hub.subscribe(SITE_A)
        self.hub.publish(row(1))
        last = s.take()[-1].id
        s.cancel()
        self.clock.advance(600)
        self.hub.publish(row(2))
        again = self.hub.subscribe(SITE_A, last_event_id=last)
        self.assertEqual(paths(again.take()), ["/item/2"])

    def test_resume_across_gap(self) -> None:
        """A resumption across a marked gap gets the gap in its place."""
        s = self.hub.subscribe(SITE_A)
        self.hub.publish(row(1))
        last = s.take()[-1].id
        s.cancel()
        self.hub.mark_gap("reconnect")
        self.hub.publish(row(2))
        again = self.hub.subscribe(SITE_A, last_event_id=last)
        self.assertEqual(paths(again.take()), ["gap:resume", "/item/2"])

    def test_mark_gap(self) -> None:
        """A marked gap goes to every subscriber, between the events around it."""
        a = self.hub.subscribe(SITE_A)
        every = self.hub.subscribe(None)
        self.hub.publish(row(1))
        self.hub.mark_gap("reconnect")
        self.hub.publish(row(2))
        self.assertEqual(paths(a.take()), ["/item/1", "gap:reconnect", "/item/2"])
        self.assertEqual(paths(every.take()), ["/item/1", "gap:reconnect", "/item/2"])
        self.assertEqual(self.metrics.counter("veil_live_gaps_total", "")
                         .value(reason="reconnect"), 1)

    def test_recent(self) -> None:
        """
        recent(): the ring's latest rows of one site, oldest first, with their
        cursors; gaps and other sites' rows are left out.
        """
        hub = Hub(self.clock, ring_size=5)
        for n in range(4):
            hub.publish(row(n, SITE_A if n % 2 else SITE_B))
        hub.mark_gap("fetch")
        hub.publish(row(4, SITE_A))
        hub.publish(row(5, SITE_A))
        recent = hub.recent(SITE_A, 2)
        self.assertEqual([(e.cursor, e.row.path) for e in recent],
                         [(6, "/item/4"), (7, "/item/5")])
        # The ring holds cursors 3..7: the row of cursor 2 has left it.
        self.assertEqual([e.cursor for e in hub.recent(SITE_A, 10)], [4, 6, 7])
        self.assertEqual(hub.recent(SITE_A, 0), [])
        self.assertEqual(hub.recent(uuid.uuid4(), 3), [])

    def test_wanted(self) -> None:
        """
        Other processes' rows are wanted for watched sites, and for a
        while after their last subscriber leaves; every row while an
        operator watches.
        """
        self.assertIsNone(self.hub.wanted([SITE_A, SITE_B]))
        self.assertIsNone(self.hub.wanted(None))
        a = self.hub.subscribe(SITE_A)
        self.assertEqual(self.hub.wanted([SITE_A, SITE_B]), {SITE_A})
        self.assertIsNone(self.hub.wanted([SITE_B]))
        self.assertEqual(self.hub.wanted(None), {SITE_A})
        a.cancel()
        self.clock.advance(59)
        self.assertEqual(self.hub.wanted([SITE_A]), {SITE_A})
        self.clock.advance(2)
        self.assertIsNone(self.hub.wanted([SITE_A]))
        self.hub.subscribe(None)
        self.assertEqual(self.hub.wanted([SITE_B]), frozenset())

    def test_limits(self) -> None:
        """A queue must hold at least a gap and an event."""
        self.assertRaises(ValueError, self.hub.subscribe, SITE_A, limit=1)
        self.assertRaises(ValueError, Hub, self.clock, queue_limit=1)


class AnnouncementTests(SynchronousTestCase):
    """The flusher's NOTIFY payload is small and says exactly what a batch wrote."""

    def test_round_trip(self) -> None:
        """A payload parses back to the announcement."""
        batch = [row(1, SITE_B), row(2, SITE_A), row(3, None), row(4, SITE_A)]
        note = Announcement.for_batch("abc123", Batch.of(batch), [10, 11, 12, 14])
        self.assertEqual(note.ranges, ((10, 12), (14, 14)))
        self.assertEqual(note.sites, (SITE_A, SITE_B))
        self.assertEqual(Announcement.parse(note.payload()), note)

    def test_size_bounded(self) -> None:
        """Too many sites or ranges are left out, and the payload stays under the limit."""
        many = [row(n, uuid.uuid4()) for n in range(5000)]
        note = Announcement.for_batch("abc123", Batch.of(many), range(1000, 11000, 2))
        payload = note.payload()
        self.assertLessEqual(len(payload.encode()), ANNOUNCEMENT_MAX)
        parsed = Announcement.parse(payload)
        self.assertIsNone(parsed.sites)
        self.assertEqual(parsed.ranges, ())
        self.assertEqual(parsed.count, 5000)

    def test_malformed(self) -> None:
        """Payloads that are not announcements raise ValueError."""
        for bad in ["", "{}", '{"count": 5}', '{"v": 1, "origin": "x"}', "[1]",
                    '{"v": 1, "origin": "x", "count": 1, "ids": [1]}']:
            self.assertRaises(ValueError, Announcement.parse, bad)

    def test_id_ranges(self) -> None:
        """Ids become sorted inclusive ranges."""
        self.assertEqual(id_ranges([5, 3, 4, 9, 10, 1]), ((1, 1), (3, 5), (9, 10)))
        self.assertEqual(id_ranges([]), ())

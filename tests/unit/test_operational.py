"""
Tests for the dashboard port's operational endpoints (L{veil.dashboard.app}):
C{/ready} answering from what is known about the database, and the probes
writing no access line.

The Klein resource is the real one, driven with L{treq.testing.StubTreq}
(C{/ready}) or by raw requests over a L{StringTransport} (the access log,
which belongs to the twisted.web site).
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from veil.dashboard.app import DashboardApp, Readiness
from veil.dashboard.dashboard import dashboard_site
from veil.errors import StoreUnavailable
from veil.metrics import Registry


class Pings:
    """A ping whose every call the test answers by hand."""

    def __init__(self) -> None:
        self.calls: list[Deferred[float]] = []

    def __call__(self) -> Deferred[float]:
        d: Deferred[float] = Deferred()
        self.calls.append(d)
        return d


class ReadyTests(SynchronousTestCase):
    """/ready answers 503 at once while the database is known down, and pings otherwise."""

    def setUp(self) -> None:
        self.pings = Pings()
        self.down: str | None = None
        self.readiness = Readiness(self.pings, lambda: self.down)
        self.readiness.set_phase("running")
        app = DashboardApp(self.readiness, dict, Registry())
        self.client = StubTreq(app.resource())

    def get(self) -> Deferred[Any]:
        return self.client.get("http://dashboard/ready")

    def answer(self, d: Deferred[Any]) -> tuple[int, dict]:
        """The status and JSON body of a finished request."""
        self.client.flush()
        response = self.successResultOf(d)
        body = json.loads(self.successResultOf(response.content()))
        return response.code, body

    def test_known_unreachable_answers_at_once(self) -> None:
        """
        While the pool knows the database is unreachable, /ready is 503
        with that reason before any ping has answered; two probes start
        one background ping between them, and once it has answered the
        next probe may start another.
        """
        self.down = "reconnection attempts failed"
        code, body = self.answer(self.get())
        self.assertEqual(code, 503)
        self.assertEqual(body["database"], {"ok": False, "error": "reconnection attempts failed"})
        self.assertFalse(body["ready"])
        self.assertEqual(len(self.pings.calls), 1)
        self.assertEqual(self.answer(self.get())[0], 503)
        self.assertEqual(len(self.pings.calls), 1)
        self.pings.calls[0].errback(StoreUnavailable("still down"))
        self.assertIsNone(self.readiness.checking)
        self.assertEqual(self.answer(self.get())[0], 503)
        self.assertEqual(len(self.pings.calls), 2)
        self.pings.calls[1].callback(0.001)

    def test_recovery_seen_by_the_next_probe(self) -> None:
        """Once the background ping finds the database back, the next probe pings and is 200."""
        self.down = "no database connection"
        self.assertEqual(self.answer(self.get())[0], 503)
        self.down = None  # what the pool knows once the background ping worked
        self.pings.calls[0].callback(0.002)
        d = self.get()
        self.assertEqual(len(self.pings.calls), 2)
        self.assertNoResult(d)
        self.pings.calls[1].callback(0.003)
        code, body = self.answer(d)
        self.assertEqual(code, 200)
        self.assertEqual(body["database"], {"ok": True, "latency_ms": 3.0})

    def test_ping_fails(self) -> None:
        """Not known down, but the ping fails: 503 with the ping's error."""
        d = self.get()
        self.pings.calls[0].errback(StoreUnavailable("no database connection: timeout"))
        code, body = self.answer(d)
        self.assertEqual(code, 503)
        self.assertEqual(body["database"]["error"], "no database connection: timeout")

    def test_background_check_bug_is_logged(self) -> None:
        """A background ping failing with something unexpected is logged as a failure."""
        self.down = "down"
        readiness = Readiness(lambda: fail(ZeroDivisionError()), lambda: self.down)
        readiness.check_later()
        self.assertIsNone(readiness.checking)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_starting(self) -> None:
        """Before start-up has ended, /ready is 503 with the phase's detail, and nothing pings."""
        readiness = Readiness(self.pings, lambda: None)
        readiness.detail = "applying schema migrations"
        self.client = StubTreq(DashboardApp(readiness, dict, Registry()).resource())
        code, body = self.answer(self.get())
        self.assertEqual((code, body["reason"]), (503, "applying schema migrations"))
        self.assertEqual(self.pings.calls, [])


class AccessLogTests(SynchronousTestCase):
    """The dashboard port's site writes no access line, for the probes or anything else."""

    def test_probes_not_logged(self) -> None:
        """/health, /ready, /metrics and a 404 elsewhere write nothing to the log."""
        readiness = Readiness(lambda: succeed(0.001), lambda: None)
        readiness.set_phase("running")
        site = dashboard_site(DashboardApp(readiness, dict, Registry()).resource())
        site.doStart()
        self.addCleanup(site.doStop)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for path in (b"/health", b"/ready", b"/metrics", b"/nothing-here"):
            transport = StringTransport()
            protocol = site.buildProtocol(None)
            protocol.makeConnection(transport)
            protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: d\r\n"
                                  b"Connection: close\r\n\r\n")
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 "), path)
            protocol.connectionLost(None)
        logged = " ".join(formatEvent(e) for e in events)
        self.assertNotIn("/health", logged)
        self.assertNotIn("/ready", logged)
        self.assertNotIn("/metrics", logged)
        self.assertNotIn("/nothing-here", logged)

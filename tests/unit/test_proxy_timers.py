"""
The proxy's request-body clocks, on a fake clock: the minimum body rate
and the gap without a byte cut a body off with 408, but the time Veil
itself did not read (a pipelined request holding its part, the origin not
taking more) does not count; the time the body budget stopped a client
does.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from veil.metrics import Registry
from veil.proxy.server import ProxyFactory, ProxyProtocol, Verdict
from veil.proxy.upstream import OriginPool
from veil.store.sites import Site


class BodyClockTests(SynchronousTestCase):
    """A request body must keep coming: at least body_min_rate bytes/s after body_grace."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.site = Site(uuid.uuid4(), "app.test", "http://192.0.2.10:80", "live", "block", 1,
                         False, True, True)
        self.rows: list = []
        self.answers: list[Deferred] = []

    def factory(self, **kw: Any) -> ProxyFactory:
        # The body hook answers 403: what a request gets once its body is
        # held, when it is not cut off first (and no origin is needed).
        options: dict[str, Any] = {"body_timeout": 30.0, "body_min_rate": 100.0,
                                   "body_grace": 10.0, "header_timeout": 1000.0,
                                   "idle_timeout": 1000.0,
                                   "inspect_body": lambda ex: Verdict(403)}
        options.update(kw)
        return ProxyFactory(self.clock, {"app.test": self.site}.get, OriginPool(self.clock),
                            self.rows.append, Registry(), scheme="http", **options)

    def connect(self, factory: ProxyFactory) -> tuple[ProxyProtocol, StringTransport]:
        """
        A client connection on the plain-HTTP route, where GET /wait is
        answered locally when the test fires its Deferred (so that a
        request pipelined behind it waits for its turn, with no origin).
        """
        def route(ex: Any, site: Site | None) -> bool:
            if ex.target == b"/wait":
                d: Deferred = Deferred()
                self.answers.append(d)
                ex.local = lambda: d
                return True
            return False
        proto = factory.build_plain(None, route)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
        proto.makeConnection(transport)
        return proto, transport

    def run_until(self, seconds: float, step: float = 0.25) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)

    def test_trickle_cut_off(self) -> None:
        """
        One byte every 9 s (each gap shorter than body_timeout): cut off
        with 408 once body_grace has passed, at about 10 s plus a hundredth
        of a second per byte.
        """
        proto, transport = self.connect(self.factory())
        proto.dataReceived(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n"
                           b"\r\nx")
        self.run_until(9.0)
        proto.dataReceived(b"x")
        self.run_until(0.75)
        self.assertEqual(transport.value(), b"")
        self.run_until(1.5)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n"),
                        transport.value()[:80])
        self.assertEqual([row.status for row in self.rows], [408])

    def test_steady_body(self) -> None:
        """150 bytes/s for 20 s (above the 100 bytes/s minimum) is never cut off."""
        proto, transport = self.connect(self.factory())
        proto.dataReceived(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10000\r\n"
                           b"\r\n")
        for _ in range(20):
            proto.dataReceived(b"y" * 150)
            self.run_until(1.0)
        self.assertEqual(transport.value(), b"")

    def test_gap(self) -> None:
        """A body well ahead of the rate that then stops is cut off body_timeout after its last byte."""
        proto, transport = self.connect(self.factory())
        proto.dataReceived(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10000\r\n"
                           b"\r\n" + b"z" * 9000)
        self.run_until(29.0)
        self.assertEqual(transport.value(), b"")
        self.run_until(2.0)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))

    def test_held_while_waiting_not_counted(self) -> None:
        """
        A body pipelined behind a request that takes 100 s to answer holds
        its part and is not read meanwhile: that time does not count, and
        it is not cut off (it gets to the body decision once its turn comes).
        """
        factory = self.factory(inspect_body_limit=lambda site: 10)
        proto, transport = self.connect(factory)
        proto.dataReceived(b"GET /wait HTTP/1.1\r\nHost: app.test\r\n\r\n"
                           b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n"
                           b"\r\n" + b"h" * 20)
        self.assertEqual(transport.producerState, "paused")
        self.run_until(100.0)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(factory.budget.used, 20)
        [answer] = self.answers
        answer.callback((200, b"done", b""))
        self.assertIn(b"HTTP/1.1 403 Forbidden\r\n", transport.value())
        self.assertEqual([row.status for row in self.rows], [200, 403])

    def test_budget_stop_counted(self) -> None:
        """
        A pipelined body stopped because the body budget is spent is not
        excused: its rate still runs out (the 408 comes once its turn comes).
        """
        factory = self.factory(inspect_body_limit=lambda site: 1000, body_budget=10)
        proto, transport = self.connect(factory)
        proto.dataReceived(b"GET /wait HTTP/1.1\r\nHost: app.test\r\n\r\n"
                           b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n"
                           b"\r\n" + b"b" * 20)
        self.assertEqual(factory.budget.waiting, 1)
        self.assertEqual(transport.producerState, "paused")
        self.run_until(12.0)
        [answer] = self.answers
        answer.callback((200, b"done", b""))
        self.assertIn(b"HTTP/1.1 408 Request Timeout\r\n", transport.value())
        self.assertEqual([row.status for row in self.rows], [200, 408])
        self.assertEqual(factory.budget.used, 0)

"""
What the proxy writes to the text log, over real sockets: nothing per
origin connection, the origin's time-outs (504) and other failures once a
minute per origin with a count of the rest, and refused requests without
the client's address.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThreadPool
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.integration.test_proxy import Response, get, site, talk
from tests.support.origin import client_threads, listen_origin
from veil.metrics import Registry
from veil.proxy.server import ProxyFactory
from veil.proxy.upstream import OriginPool


class ProxyLogTests(TestCase):
    """An operator can read the proxy's log during an incident."""

    timeout = 30

    def setUp(self) -> None:
        self.threads = client_threads(self, "test-proxy-logging", 4)
        self.origin, upstream = listen_origin(self)
        self.sites = {"app.test": site("app.test", upstream)}
        self.pool = OriginPool(reactor, connect_timeout=2.0, response_timeout=0.3)
        self.addCleanup(self.pool.close)
        self.factory = ProxyFactory(reactor, self.sites.get, self.pool, lambda row: None,
                                    Registry(), scheme="http", header_timeout=2.0)
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def talk(self, *sends: bytes, **kw: Any) -> Deferred[tuple[list[Response], bool]]:
        return deferToThreadPool(reactor, self.threads, talk, self.port, *sends, **kw)

    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    async def test_no_line_per_origin_connection(self) -> None:
        """Requests over new origin connections (closed after each) log nothing."""
        for _ in range(3):
            [r], _ = await self.talk(get("/close"))
            self.assertEqual(r.status, 200)
        self.assertEqual(self.origin.connections, 3)
        self.assertEqual(self.texts(), [])

    async def test_timeouts_logged_and_throttled(self) -> None:
        """
        An origin that does not answer in time: the 504 is logged, naming
        the origin and the site, once; the next ones within the minute are
        counted (by the log's Throttle), not logged.
        """
        self.origin.slow_delay = 1.0
        for _ in range(3):
            [r], _ = await self.talk(get("/slow"))
            self.assertEqual(r.status, 504)
        [text] = self.texts()
        self.assertIn("did not answer within 0.3 s: answered 504", text)
        self.assertIn("app.test", text)
        self.assertIn(self.sites["app.test"].upstream.split("//")[1], text)

    async def test_refusals_without_client_address(self) -> None:
        """Malformed requests are logged once a minute, with the client's network, not its address."""
        for _ in range(3):
            [r], _ = await self.talk(b"GET / HTTP/1.1\r\nHost: app.test\r\nBad Header: x\r\n\r\n")
            self.assertEqual(r.status, 400)
        [event] = list(self.events)
        self.assertEqual(event["network"], "127.0.0.0/24")
        self.assertNotIn("127.0.0.1", repr({k: v for k, v in event.items()
                                            if not k.startswith("log_")}))
        self.assertNotIn("127.0.0.1", formatEvent(event))

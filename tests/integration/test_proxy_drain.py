"""
L{ProxyFactory.drain} over real loopback sockets: idle connections close at
once, exchanges in flight finish with C{Connection: close}, a request
arriving during the drain is still answered, and stuck connections are
aborted at the timeout.
"""

from __future__ import annotations

import socket
import threading
import time

import httptools
from twisted.internet import reactor

from tests.integration.test_proxy import _Reader, get
from tests.integration.test_proxy_limits import ProxyCase, read_all
from tests.support.waiting import until
from veil.metrics import Registry
from veil.proxy.server import ProxyFactory


def parse(data: bytes) -> list:
    reader = _Reader(True)
    try:
        reader.parser.feed_data(data)
    except httptools.HttpParserError:
        pass
    return reader.responses


class DrainTests(ProxyCase):
    """drain() winds the proxy's client connections down for shut-down."""

    def make_factory(self) -> ProxyFactory:
        return ProxyFactory(reactor, self.sites.get, self.pool, self.rows.append, Registry(),
                            scheme="http", header_timeout=10.0, body_timeout=30.0,
                            idle_timeout=30.0)

    async def test_drain(self) -> None:
        """
        With an idle keep-alive connection, a slow request in flight, a
        request whose head is half sent and a stuck upload: the idle one is
        closed at once; the slow one gets its 200 with Connection: close,
        then the close; the half-sent head, completed during the drain, is
        answered with Connection: close; the stuck one is aborted at the
        timeout, when the drain's Deferred fires.
        """
        self.origin.slow_delay = 1.0
        go_on = threading.Event()
        self.addCleanup(go_on.set)
        seen: dict[str, float] = {}

        def idle() -> tuple[bytes, bytes]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(get("/echo"))
                first = b""
                while not first.endswith(b'"conn": 1}'):
                    first += s.recv(65536)
                seen["idle_ready"] = time.time()
                rest, _ = read_all(s)
                seen["idle_closed"] = time.time()
                return first, rest

        def slow() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(get("/slow"))
                data, _ = read_all(s)
                seen["slow_answered"] = time.time()
                return data

        def half_head() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(b"GET /echo HTTP/1.1\r\nHo")
                seen["half_sent"] = time.time()
                go_on.wait(10)
                s.sendall(b"st: app.test\r\n\r\n")
                return read_all(s)[0]

        def stuck() -> tuple[bytes, float]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n"
                          b"\r\n" + b"u" * 10)
                data, _ = read_all(s)
                return data, time.time()

        idle_d = self.in_thread(idle)
        await until(lambda: "idle_ready" in seen, 5, "the idle connection's first answer")
        slow_d = self.in_thread(slow)
        half_d = self.in_thread(half_head)
        stuck_d = self.in_thread(stuck)
        await until(lambda: len(self.origin.requests) == 2 and "half_sent" in seen
                    and sum(bool(p.queue) for p in self.factory.connections) == 2, 5,
                    "the slow and the stuck requests in flight")
        self.assertEqual(len(self.factory.connections), 4)

        started = reactor.seconds()
        drained = self.factory.drain(2.0)
        go_on.set()
        _, rest = await idle_d
        self.assertEqual(rest, b"")
        self.assertLess(seen["idle_closed"] - started, 0.5)

        [answer] = parse(await slow_d)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header(b"connection"), b"close")
        self.assertEqual(answer.json()["target"], "/slow")
        self.assertLess(seen["idle_closed"], seen["slow_answered"])

        [late] = parse(await half_d)
        self.assertEqual((late.status, late.header(b"connection")), (200, b"close"))

        data, aborted_at = await stuck_d
        self.assertEqual(data, b"")
        await drained
        self.assertGreaterEqual(reactor.seconds() - started, 1.9)
        self.assertGreaterEqual(aborted_at - started, 1.9)
        self.assertEqual(self.factory.connections, set())
        self.assertEqual(sorted(row.status for row in self.rows), [200, 200, 200, 499])

    async def test_nothing_to_drain(self) -> None:
        """With no client connection, drain() fires at once."""
        drained = self.factory.drain(5.0)
        self.assertIsNone(self.successResultOf(drained))

"""
The proxy's bounds on slow clients and misbehaving origins, over real
loopback sockets: a stalled request body (408, origin connection dropped)
and origin response heads over 32 KiB or 100 fields (502).
"""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import TestCase

from tests.integration.test_proxy import get, site, talk
from tests.support.origin import client_threads, listen_origin
from tests.support.waiting import until
from veil.metrics import Registry
from veil.proxy.server import ProxyFactory
from veil.proxy.upstream import OriginPool


def read_all(s: socket.socket) -> tuple[bytes, bool]:
    """Read until the server closes; returns the bytes and whether it was a reset."""
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        return data, True
    return data, False


class ProxyCase(TestCase):
    """Base: a proxy on loopback in front of the test origin, clients on their own threads."""

    timeout = 30

    def setUp(self) -> None:
        self.threads = client_threads(self, "test-proxy-limits", 8)
        self.origin, self.upstream = listen_origin(self)
        self.sites = {"app.test": site("app.test", self.upstream)}
        self.pool = OriginPool(reactor, connect_timeout=2.0, response_timeout=5.0)
        self.addCleanup(self.pool.close)
        self.rows: list = []
        self.factory = self.make_factory()
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def make_factory(self) -> ProxyFactory:
        return ProxyFactory(reactor, self.sites.get, self.pool, self.rows.append, Registry(),
                            scheme="http", header_timeout=2.0, body_timeout=0.5,
                            idle_timeout=5.0)

    def in_thread(self, fn: Any, *args: Any, **kwargs: Any) -> Deferred:
        return deferToThreadPool(reactor, self.threads, fn, *args, **kwargs)


class BodyTimeoutTests(ProxyCase):
    """
    A request body that stops arriving is cut off after body_timeout seconds
    (here nothing of a body is held before the origin connection is taken,
    so that the origin side is exercised too).
    """

    def make_factory(self) -> ProxyFactory:
        return ProxyFactory(reactor, self.sites.get, self.pool, self.rows.append, Registry(),
                            scheme="http", header_timeout=2.0, body_timeout=0.5,
                            idle_timeout=5.0, inspect_body_limit=lambda site: 0)

    async def test_stalled_body(self) -> None:
        """
        Headers, 10 of 100 body bytes, then silence: the client gets a 408
        with Connection: close and is disconnected, the origin connection
        that had the partial request is closed, and the exchange is logged
        as 408.
        """
        def client() -> tuple[bytes, bool, float]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n"
                          b"\r\n" + b"u" * 10)
                started = time.monotonic()
                data, reset = read_all(s)
                return data, reset, time.monotonic() - started

        data, reset, waited = await self.in_thread(client)
        self.assertTrue(data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data[:200])
        self.assertIn(b"\r\nConnection: close\r\n", data)
        self.assertFalse(reset)
        self.assertGreaterEqual(waited, 0.45)
        await until(lambda: self.origin.lost == 1, 5, "the origin connection closed")
        self.assertEqual(self.origin.connections, 1)
        self.assertEqual(self.origin.requests, [])
        [row] = self.rows
        self.assertEqual((row.status, row.method, row.path, row.bytes_in), (408, "POST",
                                                                            "/upload", 10))
        self.assertIn(row.request_id.encode(), data)

    async def test_trickling_body_is_fine(self) -> None:
        """A body whose bytes keep coming, each gap shorter than body_timeout, goes through."""
        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 60\r\n"
                          b"Connection: close\r\n\r\n")
                for _ in range(6):
                    time.sleep(0.2)  # the client's own pace, shorter than body_timeout
                    s.sendall(b"u" * 10)
                return read_all(s)[0]

        data = await self.in_thread(client)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:200])
        self.assertTrue(data.endswith(b"\r\n\r\n60"), data[-50:])
        self.assertEqual([row.status for row in self.rows], [200])

    async def test_stalled_after_response_started(self) -> None:
        """
        When the origin has already started its response, a stalled body
        aborts both connections (no 408 can follow a started response); the
        exchange is logged with the status that was sent.
        """
        early = _ScriptedOrigin(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"5\r\nhello\r\n")
        eport = reactor.listenTCP(0, early, interface="127.0.0.1")
        self.addCleanup(eport.stopListening)
        self.sites["early.test"] = site("early.test", f"http://127.0.0.1:{eport.getHost().port}")

        def client() -> tuple[bytes, bool]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(b"POST / HTTP/1.1\r\nHost: early.test\r\nContent-Length: 100\r\n\r\n"
                          b"abc")
                return read_all(s)

        data, _ = await self.in_thread(client)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:200])
        self.assertNotIn(b"408", data)
        await until(lambda: early.lost == 1, 5, "the origin connection closed")
        [row] = self.rows
        self.assertEqual(row.status, 200)


class _ScriptedProtocol(Protocol):
    def __init__(self, factory: _ScriptedOrigin) -> None:
        self.f = factory
        self.buffer = b""

    def connectionMade(self) -> None:
        self.f.connections += 1

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.f.heads += 1
            self.transport.write(self.f.answer)

    def connectionLost(self, reason: Any = None) -> None:
        self.f.lost += 1


class _ScriptedOrigin(Factory):
    """An origin that answers every request head with the same bytes (GETs only)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.connections = self.lost = self.heads = 0

    def buildProtocol(self, addr: Any) -> _ScriptedProtocol:
        return _ScriptedProtocol(self)


class OriginHeadLimitTests(ProxyCase):
    """An origin's response head over the limits is an origin failure: 502, connection dropped."""

    async def _through(self, answer: bytes, requests: int = 2) -> list:
        bad = _ScriptedOrigin(answer)
        bport = reactor.listenTCP(0, bad, interface="127.0.0.1")
        self.addCleanup(bport.stopListening)
        self.sites["bad.test"] = site("bad.test", f"http://127.0.0.1:{bport.getHost().port}")
        self.bad = bad
        responses, _ = await self.in_thread(talk, self.port, *[get("/", host="bad.test")] * requests,
                                      responses=requests)
        return responses

    async def assert_refused(self, answer: bytes) -> None:
        responses = await self._through(answer)
        self.assertEqual([r.status for r in responses], [502, 502])
        for r in responses:
            self.assertIn(r.header(b"x-request-id"), r.body)
            self.assertIn(b"Bad gateway", r.body)
        # Each failed connection was dropped, never reused.
        self.assertEqual(self.bad.connections, 2)
        await until(lambda: self.bad.lost == 2, 5, "both origin connections closed")
        self.assertEqual([row.status for row in self.rows], [502, 502])

    async def test_head_too_large(self) -> None:
        """A 40 KiB header field gives 502."""
        await self.assert_refused(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 40 * 1024
                                  + b"\r\nContent-Length: 2\r\n\r\nok")

    async def test_head_too_large_after_interim(self) -> None:
        """A 40 KiB head after a 1xx in the same read gives 502 (its size is still counted)."""
        await self.assert_refused(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                                  b"HTTP/1.1 200 OK\r\n" + b"".join(
                                      b"X-%d: " % i + b"a" * 500 + b"\r\n" for i in range(80))
                                  + b"Content-Length: 2\r\n\r\nok")

    async def test_too_many_headers(self) -> None:
        """101 header fields give 502."""
        await self.assert_refused(b"HTTP/1.1 200 OK\r\n" + b"".join(
            b"X-%d: v\r\n" % i for i in range(100)) + b"Content-Length: 2\r\n\r\nok")

    async def test_endless_header_line(self) -> None:
        """A header line that never ends (200 KiB and counting) gives 502."""
        await self.assert_refused(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200 * 1024)

    async def test_within_limits(self) -> None:
        """100 header fields and a 30 KiB value pass, and the connection is reused."""
        responses = await self._through(
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 30 * 1024 + b"\r\n" + b"".join(
                b"X-%d: v\r\n" % i for i in range(98)) + b"Content-Length: 2\r\n\r\nok")
        self.assertEqual([(r.status, r.body) for r in responses], [(200, b"ok")] * 2)
        self.assertEqual(len(responses[0].header(b"x-big")), 30 * 1024)
        self.assertEqual(self.bad.connections, 1)

"""
Origin connections are reused only when their last response ended exactly
at a message boundary, with nothing more from the origin: a misbehaving
origin (response splitting, a wrong Content-Length, a body after a HEAD or
a 204) never gets its extra bytes in front of another client's response.

Each test runs a real proxy over loopback in front of a scripted origin of
its own (L{tests.support.origin.ScriptedOrigin}).
"""

from __future__ import annotations

import array
import fcntl
import socket
import termios
from typing import Any

import attrs
from OpenSSL import crypto
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.ssl import CertificateOptions
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import TestCase

from tests.integration.test_proxy import Response, get, site, talk
from tests.support.origin import (
    ScriptedProtocol,
    client_threads,
    listen_scripted,
    plain_answer,
)
from tests.support.waiting import until
from veil.metrics import Registry
from veil.proxy.server import ProxyFactory
from veil.proxy.upstream import OriginPool

#: What a response-splitting origin appends to its answer to /poison: the
#: start of a 302 that would send the next client elsewhere with a cookie.
STRAY_HEAD = (b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/\r\n"
              b"Set-Cookie: session=attacker; Path=/\r\nX-Pad: ")


def answering(poison: dict[bytes, bytes]) -> Any:
    """An answer function: the bytes in C{poison} for those paths, else L{plain_answer}."""
    def answer(proto: ScriptedProtocol, method: bytes, url: bytes) -> None:
        if url in poison:
            proto.transport.write(poison[url])
        else:
            plain_answer(proto, method, url)
    return answer


class ReuseCase(TestCase):
    """Base: a proxy on loopback in front of a scripted origin."""

    timeout = 30
    pool_size = 256

    def setUp(self) -> None:
        self.threads = client_threads(self, "test-proxy-reuse", 8)
        self.origin, oport = listen_scripted(self, self.origin_tls())
        scheme = "https" if self.origin_tls() is not None else "http"
        # The TLS origin's certificate is from a CA of the test's own: not verified.
        self.site = attrs.evolve(site("app.test", f"{scheme}://127.0.0.1:{oport}"),
                                 origin_tls_verify=False)
        self.pool = OriginPool(reactor, connect_timeout=2.0, response_timeout=5.0,
                               max_per_origin=self.pool_size)
        self.addCleanup(self.pool.close)
        self.rows: list = []
        factory = ProxyFactory(reactor, {"app.test": self.site}.get, self.pool,
                               self.rows.append, Registry(), scheme="http",
                               header_timeout=5.0, idle_timeout=10.0)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def origin_tls(self) -> Any:
        return None

    def talk(self, *sends: bytes, **kw: Any) -> Deferred[tuple[list[Response], bool]]:
        return deferToThreadPool(reactor, self.threads, talk, self.port, *sends, **kw)

    async def one(self, data: bytes) -> Response:
        [r], _ = await self.talk(data)
        return r

    async def assert_clean(self, connection: int) -> None:
        """The next client's GET /ok gets the origin's own answer, on origin connection N."""
        r = await self.one(get("/ok"))
        self.assertEqual((r.status, r.body), (200, b"conn %d: GET /ok" % connection))
        self.assertIsNone(r.header(b"set-cookie"))
        self.assertIsNone(r.header(b"location"))

    async def head(self, data: bytes) -> bytes:
        """Send a HEAD request; the response head (no body follows a HEAD's)."""
        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(data)
                got = b""
                while not got.endswith(b"\r\n\r\n"):
                    got += s.recv(1)
                return got
        return await deferToThreadPool(reactor, self.threads, client)

    async def assert_not_reused(self, data: bytes) -> Any:
        """C{data} is answered; the origin connection it used is closed, never reused."""
        r = await (self.head(data) if data.startswith(b"HEAD ") else self.one(data))
        await until(lambda: self.origin.lost >= 1, 5, "the origin connection closed")
        await self.assert_clean(2)
        return r


class StrayBytesTests(ReuseCase):
    """Bytes after a complete response close the origin connection."""

    async def test_partial_head_after_response(self) -> None:
        """
        The issue's example: /poison answers 200 "hello" followed, in the
        same write, by the start of a 302 with a cookie; the /poison client
        gets "hello", and the next client, on another connection, gets its
        own answer on a new origin connection (no 302, no cookie).
        """
        self.origin.answer = answering({b"/poison": b"HTTP/1.1 200 OK\r\nContent-Length: 5"
                                        b"\r\n\r\nhello" + STRAY_HEAD})
        r = await self.assert_not_reused(get("/poison"))
        self.assertEqual((r.status, r.body), (200, b"hello"))
        self.assertEqual([row.status for row in self.rows], [200, 200])

    async def test_whole_response_after_response(self) -> None:
        """A complete second response in the same write is never delivered to anyone."""
        self.origin.answer = answering({b"/poison": b"HTTP/1.1 200 OK\r\nContent-Length: 5"
                                        b"\r\n\r\nhello" + STRAY_HEAD + b"1\r\n"
                                        b"Content-Length: 0\r\n\r\n"})
        r = await self.assert_not_reused(get("/poison"))
        self.assertEqual(r.body, b"hello")

    async def test_wrong_content_length(self) -> None:
        """A body longer than its Content-Length: the length is delivered, the rest dropped."""
        self.origin.answer = answering({b"/poison": b"HTTP/1.1 200 OK\r\nContent-Length: 5"
                                        b"\r\n\r\nhello world"})
        r = await self.assert_not_reused(get("/poison"))
        self.assertEqual(r.body, b"hello")

    async def test_blank_lines_after_response(self) -> None:
        """
        CR LF after the end of a response (which the parser would skip
        silently) is a byte too many as well: the connection is closed.
        """
        self.origin.answer = answering({b"/poison": b"HTTP/1.1 200 OK\r\nContent-Length: 5"
                                        b"\r\n\r\nhello\r\n"})
        await self.assert_not_reused(get("/poison"))

    async def test_blank_lines_after_chunked_response(self) -> None:
        """The same after a chunked response's last chunk."""
        self.origin.answer = answering({b"/poison": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: "
                                        b"chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\r\n"})
        r = await self.assert_not_reused(get("/poison"))
        self.assertEqual(r.body, b"hello")

    async def test_blank_lines_after_empty_response(self) -> None:
        """The same after a response with an empty body."""
        self.origin.answer = answering({b"/poison": b"HTTP/1.1 200 OK\r\nContent-Length: 0"
                                        b"\r\n\r\n\n"})
        await self.assert_not_reused(get("/poison"))

    async def test_exact_responses_are_reused(self) -> None:
        """
        Responses that end exactly where they say (a body ending in CR LF,
        a chunked body with trailers, an empty body) keep their connection.
        """
        self.origin.answer = answering({
            b"/crlf": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nhi\r\n",
            b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"2\r\nhi\r\n0\r\nX-Trailer: 1\r\n\r\n",
            b"/empty": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        })
        for path, body in ((b"/crlf", b"hi\r\n"), (b"/chunked", b"hi"), (b"/empty", b"")):
            r = await self.one(get(path.decode()))
            self.assertEqual((r.status, r.body), (200, body))
        await self.assert_clean(1)
        self.assertEqual(self.origin.connections, 1)

    async def test_bytes_while_idle(self) -> None:
        """
        Bytes that arrive on an idle pooled connection (the rest of a split
        response, sent later) close it before anyone uses it.
        """
        r = await self.one(get("/first"))
        self.assertEqual(r.body, b"conn 1: GET /first")
        self.origin.protocols[0].transport.write(STRAY_HEAD)
        await until(lambda: self.origin.lost == 1, 5, "the idle connection closed")
        await self.assert_clean(2)

    async def test_bytes_pending_when_reused(self) -> None:
        """
        Bytes that have reached the socket of an idle connection but were
        not read yet (the reactor had not got to them) are seen when the
        connection is taken: it is closed and another one used.
        """
        r = await self.one(get("/first"))
        self.assertEqual(r.body, b"conn 1: GET /first")
        [idle] = [c for slot in self.pool._slots.values() for c in slot.idle]
        idle.transport.stopReading()  # the reactor does not get to it
        self.origin.protocols[0].transport.write(STRAY_HEAD)
        fd = idle.transport.fileno()

        def unread() -> int:
            count = array.array("i", [0])
            fcntl.ioctl(fd, termios.FIONREAD, count, True)
            return count[0]
        await until(lambda: unread() == len(STRAY_HEAD), 5, "the stray bytes in the socket")
        await self.assert_clean(2)

    async def test_pipelined_next_request(self) -> None:
        """A pipelined request after /poison gets its own answer, from a new connection."""
        self.origin.answer = answering({b"/poison": b"HTTP/1.1 200 OK\r\nContent-Length: 5"
                                        b"\r\n\r\nhello" + STRAY_HEAD})
        responses, _ = await self.talk(get("/poison") + get("/ok"), responses=2)
        self.assertEqual([(r.status, r.body) for r in responses],
                         [(200, b"hello"), (200, b"conn 2: GET /ok")])


class WaiterTests(ReuseCase):
    """A connection handed straight to a waiting request is checked like one taken from the pool."""

    pool_size = 1

    async def test_waiter_gets_a_clean_connection(self) -> None:
        """
        With one connection allowed, B waits while A's /poison is answered
        with a response and a stray head; B gets its own answer on a new
        connection.
        """
        held: list[ScriptedProtocol] = []

        def answer(proto: ScriptedProtocol, method: bytes, url: bytes) -> None:
            if url == b"/poison":
                held.append(proto)
            else:
                plain_answer(proto, method, url)
        self.origin.answer = answer
        a = self.talk(get("/poison"))
        await until(lambda: held, 5, "A's request at the origin")
        b = self.talk(get("/ok"))
        await until(lambda: any(s.waiters for s in self.pool._slots.values()), 5,
                    "B waiting for the pool")
        # 32 KiB exactly, then the stray bytes in a write of their own: over
        # TLS the layer delivers its records in pieces of at most 32 KiB,
        # so the response comes in one piece and the stray head in the next.
        body = b"h" * (32768 - len(b"HTTP/1.1 200 OK\r\nContent-Length: 32730\r\n\r\n"))
        held[0].transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(body), body))
        held[0].transport.write(STRAY_HEAD)
        [ra], _ = await a
        [rb], _ = await b
        self.assertEqual(ra.body, body)
        self.assertEqual((rb.status, rb.body), (200, b"conn 2: GET /ok"))


class BodilessResponseTests(ReuseCase):
    """After a HEAD, a 204, a 304, a 1xx or a response ended by the close, the connection is closed."""

    async def test_head(self) -> None:
        """A HEAD's response, even one that (wrongly) carries a body, never shares its connection."""
        self.origin.answer = answering({b"/h": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
                                        b"hello"})
        head = await self.assert_not_reused(b"HEAD /h HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
        self.assertIn(b"\r\nContent-Length: 5\r\n", head)

    async def test_head_without_body(self) -> None:
        """A correct HEAD answer (no body) closes the connection too."""
        await self.assert_not_reused(b"HEAD /plain HTTP/1.1\r\nHost: app.test\r\n\r\n")

    async def test_204_with_stray(self) -> None:
        """A 204 followed by a stray head: the 204 is delivered, the stray never is."""
        self.origin.answer = answering({b"/nc": b"HTTP/1.1 204 No Content\r\n\r\n"
                                        + STRAY_HEAD})
        r = await self.assert_not_reused(get("/nc"))
        self.assertEqual(r.status, 204)

    async def test_304(self) -> None:
        """A 304 (with a Content-Length that delimits nothing) closes its connection."""
        self.origin.answer = answering({b"/nm": b"HTTP/1.1 304 Not Modified\r\n"
                                        b"Content-Length: 7\r\n\r\n"})
        r = await self.assert_not_reused(get("/nm"))
        self.assertEqual(r.status, 304)

    async def test_interim(self) -> None:
        """A 100 Continue then the final response: the connection is not reused."""
        self.origin.answer = answering({b"/c": b"HTTP/1.1 100 Continue\r\n\r\n"
                                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"})
        r = await self.assert_not_reused(get("/c"))
        self.assertEqual((r.status, r.body), (200, b"ok"))

    async def test_until_close(self) -> None:
        """A response delimited by the close is delivered whole; the next request gets a new connection."""
        def answer(proto: ScriptedProtocol, method: bytes, url: bytes) -> None:
            if url == b"/eof":
                proto.transport.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
                proto.transport.loseConnection()
            else:
                plain_answer(proto, method, url)
        self.origin.answer = answer
        r = await self.assert_not_reused(get("/eof"))
        self.assertEqual(r.body, b"until the end")


def _tls_options() -> CertificateOptions:
    from tests.integration.test_origin_tls import make_ca, make_leaf
    key, cert = make_leaf(make_ca(), "app.test")
    return CertificateOptions(privateKey=crypto.PKey.from_cryptography_key(key),
                              certificate=crypto.X509.from_cryptography(cert))


class TLSOriginTests(WaiterTests):
    """
    Over TLS the stray bytes come in a record of their own, which the TLS
    layer delivers after the response's: the connection is released only
    once that delivery is over, so the waiter still gets a clean one.
    """

    def origin_tls(self) -> Any:
        if not hasattr(self, "_tls"):
            self._tls = _tls_options()
        return self._tls


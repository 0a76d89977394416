"""
What the proxy accepts from a client and what it passes on, over real
loopback sockets in front of the echoing test origin: absolute-form
targets, chunked trailers, upgrades, forwarding headers a client could
spoof, request-line and Host leniency, TRACE, and request loops.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import TestCase

from tests.integration.test_proxy import Response, get, site, talk
from tests.support.origin import (
    ScriptedProtocol,
    client_threads,
    listen_origin,
    listen_scripted,
)
from veil.metrics import Registry
from veil.proxy.server import ProxyFactory
from veil.proxy.upstream import OriginPool


class RequestCase(TestCase):
    """Base: a proxy (scheme http, and one with scheme https) in front of the echo origin."""

    timeout = 30

    def setUp(self) -> None:
        self.threads = client_threads(self, "test-proxy-requests", 6)
        self.origin, self.upstream = listen_origin(self)
        self.sites = {s.domain: s for s in (
            site("app.test", self.upstream),
            attrs.evolve(site("trace.test", self.upstream), allow_trace=True),
        )}
        self.pool = OriginPool(reactor, connect_timeout=2.0, response_timeout=5.0)
        self.addCleanup(self.pool.close)
        self.rows: list = []
        self.factory = self.listen("http")
        self.port = self.factory.port
        self.https = self.listen("https")

    def listen(self, scheme: str, **kw: Any) -> ProxyFactory:
        factory = ProxyFactory(reactor, self.sites.get, self.pool, self.rows.append, Registry(),
                               scheme=scheme, header_timeout=2.0, idle_timeout=5.0, **kw)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        factory.port = port.getHost().port  # type: ignore[attr-defined]
        return factory

    def talk(self, *sends: bytes, port: int | None = None, **kw: Any
             ) -> Deferred[tuple[list[Response], bool]]:
        return deferToThreadPool(reactor, self.threads, talk, port or self.port, *sends, **kw)

    async def seen(self, data: bytes, **kw: Any) -> tuple[Response, dict[str, str]]:
        """Send C{data}; the response and the headers the origin saw (lower-case names)."""
        [r], _ = await self.talk(data, **kw)
        self.assertEqual(r.status, 200, r.body[:300])
        return r, {n.lower(): v for n, v in r.json()["headers"]}

    async def refused(self, data: bytes, status: int = 400, port: int | None = None) -> Response:
        """C{data} is answered C{status} and the connection closed; the origin sees nothing."""
        responses, closed = await self.talk(data, port=port)
        self.assertEqual([r.status for r in responses], [status], data[:80])
        self.assertTrue(closed)
        self.assertEqual(self.origin.requests, [])
        return responses[0]


class AbsoluteFormTests(RequestCase):
    """An absolute-form target's authority replaces Host (RFC 9112 3.2.2)."""

    async def test_authority_replaces_host(self) -> None:
        """
        GET http://app.test/echo with Host: evil.test reaches the origin as
        /echo with Host and X-Forwarded-Host app.test, and is logged so.
        """
        r, headers = await self.seen(b"GET http://app.test/echo?x=1 HTTP/1.1\r\n"
                                     b"Host: evil.test\r\n\r\n")
        self.assertEqual(r.json()["target"], "/echo?x=1")
        self.assertEqual((headers["host"], headers["x-forwarded-host"]), ("app.test", "app.test"))
        self.assertEqual(self.rows[0].host, "app.test")

    async def test_authority_port_kept(self) -> None:
        """The authority is passed on as written, port included."""
        _, headers = await self.seen(b"GET http://APP.test:8080/ HTTP/1.1\r\nHost: x.test\r\n\r\n")
        self.assertEqual(headers["host"], "APP.test:8080")

    async def test_scheme_must_match_the_connection(self) -> None:
        """https:// on a plain connection, and http:// on a TLS one, are refused with 400."""
        await self.refused(b"GET https://app.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n")
        await self.refused(b"GET http://app.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n",
                           port=self.https.port)  # type: ignore[attr-defined]
        [r], _ = await self.talk(b"GET https://app.test/echo HTTP/1.1\r\nHost: app.test\r\n\r\n",
                                 port=self.https.port)  # type: ignore[attr-defined]
        self.assertEqual(r.status, 200)

    async def test_user_info_refused(self) -> None:
        """An authority with user information is a 400."""
        await self.refused(b"GET http://u:p@app.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n")

    async def test_other_name_than_sni(self) -> None:
        """On a TLS connection for app.test, an absolute target for another name is a 421."""
        port = reactor.listenTCP(0, self.factory.for_sni("app.test"), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        responses, _ = await self.talk(b"GET http://other.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n",
                                       port=port.getHost().port)
        self.assertEqual([r.status for r in responses], [421])
        self.assertEqual(self.origin.requests, [])


class TrailerTests(RequestCase):
    """Chunked trailers never become request headers."""

    async def test_trailer_dropped(self) -> None:
        """
        A trailer Cookie: admin=1 after a chunked body on a cold pool does not
        reach the origin, in a request of its own or pipelined behind another.
        """
        post = (b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\nCookie: admin=1\r\nX-Late: 1\r\n\r\n")
        r, headers = await self.seen(post)
        self.assertNotIn("cookie", headers)
        self.assertNotIn("x-late", headers)
        self.assertEqual(r.json()["body_len"], 3)
        responses, _ = await self.talk(get("/slow") + post, responses=2)
        self.assertEqual([r.status for r in responses], [200, 200])
        self.assertNotIn("cookie", {n.lower() for n, _ in responses[1].json()["headers"]})


class UpgradeTests(RequestCase):
    """Only websocket upgrades are tunnelled, and never with a request body."""

    async def test_upgrade_with_body_refused(self) -> None:
        """Upgrade: websocket with a Content-Length or a chunked body is a 400, at once."""
        head = b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        await self.refused(head + b"Content-Length: 5\r\n\r\nhello")
        await self.refused(head + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")

    async def test_h2c_not_tunnelled(self) -> None:
        """
        An h2c upgrade is answered as a plain request: the origin sees no
        Upgrade, the client gets the origin's 200 and then the close, and
        what it sends after the head (an HTTP/2 preface) reaches no one.
        """
        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(b"GET /echo HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, "
                          b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__"
                          b"\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                return data
        data = await deferToThreadPool(reactor, self.threads, client)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:200])
        self.assertIn(b"\r\nConnection: close\r\n", data)
        [(method, target, headers, _)] = self.origin.requests
        self.assertEqual((method, target), (b"GET", b"/echo"))
        names = {n.lower() for n, _ in headers}
        self.assertNotIn("upgrade", names)
        self.assertNotIn("http2-settings", names)

    async def test_websocket_still_tunnelled(self) -> None:
        """A websocket upgrade without a body still gets the origin's 101 and a tunnel."""
        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(get("/ws", extra="Connection: Upgrade\r\nUpgrade: WebSocket\r\n")
                          + b"ping")
                got = b""
                while not got.endswith(b"ping"):
                    got += s.recv(1000)
                return got
        out = await deferToThreadPool(reactor, self.threads, client)
        self.assertTrue(out.startswith(b"HTTP/1.1 101 "), out)

    async def test_unasked_101_is_a_bad_gateway(self) -> None:
        """An origin answering 101 to a request that asked for no upgrade gives 502."""
        scripted, sport = listen_scripted(self)

        def answer(proto: ScriptedProtocol, method: bytes, url: bytes) -> None:
            proto.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                  b"Connection: Upgrade\r\n\r\nsurprise")
        scripted.answer = answer
        self.sites["odd.test"] = site("odd.test", f"http://127.0.0.1:{sport}")
        [r], _ = await self.talk(get("/", host="odd.test"))
        self.assertEqual(r.status, 502)


class ForwardingHeaderTests(RequestCase):
    """Headers a client could use to spoof what Veil tells the origin are dropped."""

    async def test_spoofable_headers_dropped(self) -> None:
        """
        Forwarded and header names with an underscore (X_Real_IP,
        X_Forwarded_For, Transfer_Encoding, Content_Length) do not reach the
        origin; ordinary headers do, and Veil's own forwarding headers are set.
        """
        _, headers = await self.seen(get("/echo", extra=(
            "Forwarded: for=203.0.113.9;proto=https\r\nX_Real_IP: 203.0.113.9\r\n"
            "X_Forwarded_For: 203.0.113.9\r\nTransfer_Encoding: chunked\r\n"
            "Content_Length: 5\r\nX-Custom: kept\r\n")))
        for gone in ("forwarded", "x_real_ip", "x_forwarded_for", "transfer_encoding",
                     "content_length"):
            self.assertNotIn(gone, headers)
        self.assertEqual(headers["x-custom"], "kept")
        self.assertEqual((headers["x-real-ip"], headers["x-forwarded-for"]),
                         ("127.0.0.1", "127.0.0.1"))


class RequestLineTests(RequestCase):
    """Request lines and Host values llhttp would let through are refused."""

    async def test_fragment(self) -> None:
        """A #fragment in the target is a 400."""
        await self.refused(get("/a#frag"))
        await self.refused(get("/a?b=1#frag"))

    async def test_extra_spaces(self) -> None:
        """Two spaces before the target or before the version are a 400."""
        await self.refused(b"GET  /echo HTTP/1.1\r\nHost: app.test\r\n\r\n")
        await self.refused(b"GET /echo  HTTP/1.1\r\nHost: app.test\r\n\r\n")

    async def test_extra_spaces_pipelined(self) -> None:
        """The same in a request that follows another in the same packet: the first is answered."""
        responses, closed = await self.talk(
            get("/echo") + b"GET  /echo HTTP/1.1\r\nHost: app.test\r\n\r\n", responses=2)
        self.assertEqual([r.status for r in responses], [200, 400])
        self.assertTrue(closed)

    async def test_extra_spaces_after_bodies(self) -> None:
        """
        The same after a request with a body in the same packet (whose body
        holds a well-spaced look-alike of the bad line), with a length or
        chunked.
        """
        bad = b"GET  /echo HTTP/1.1\r\nHost: app.test\r\n\r\n"
        lookalike = b"GET /echo HTTP/1.1\r\n"
        for first in (
            b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n%s"
            % (len(lookalike), lookalike),
            (b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3\r\nabc\r\n0\r\n\r\n"),
        ):
            responses, closed = await self.talk(first + bad, responses=2)
            self.assertEqual([r.status for r in responses], [200, 400], first)
            self.assertTrue(closed)
        responses, _ = await self.talk(first + get("/echo") + get("/echo"), responses=3)
        self.assertEqual([r.status for r in responses], [200, 200, 200])

    async def test_extra_spaces_split(self) -> None:
        """The same when the request line arrives in pieces."""
        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for piece in (b"GET ", b" /echo HTTP/1.1\r\n", b"Host: app.test\r\n\r\n"):
                    s.sendall(piece)
                    time.sleep(0.05)  # the client's own pace: pieces, not one packet
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                return data
        data = await deferToThreadPool(reactor, self.threads, client)
        self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data[:100])

    async def test_single_spaces_pass(self) -> None:
        """Leading blank lines, then a normal request line: forwarded."""
        r, _ = await self.seen(b"\r\n" + get("/echo"))
        self.assertEqual(r.json()["target"], "/echo")

    async def test_host_port_range(self) -> None:
        """A port above 65535, in Host or an absolute-form target, is a 400; 65535 is fine."""
        await self.refused(get("/", host="app.test:65536"))
        await self.refused(get("/", host="app.test:99999"))
        await self.refused(b"GET http://app.test:65536/ HTTP/1.1\r\nHost: app.test\r\n\r\n")
        await self.refused(get("/", host="[::1]:65536"))
        _, headers = await self.seen(get("/echo", host="app.test:65535"))
        self.assertEqual(headers["host"], "app.test:65535")


class TraceTests(RequestCase):
    """TRACE is refused with 405, unless the site allows it."""

    async def test_trace_refused(self) -> None:
        """TRACE to a site that does not allow it is a 405 with an Allow header."""
        [r], _ = await self.talk(b"TRACE / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.assertEqual(r.status, 405)
        self.assertNotIn(b"TRACE", r.header(b"allow"))
        self.assertEqual(self.origin.requests, [])

    async def test_trace_allowed(self) -> None:
        """TRACE to a site with allow_trace is forwarded."""
        [r], _ = await self.talk(b"TRACE /t HTTP/1.1\r\nHost: trace.test\r\n\r\n")
        self.assertEqual((r.status, r.json()["method"]), (200, "TRACE"))


class LoopTests(RequestCase):
    """Forwarded requests carry Veil's Via; one that comes back is refused with 508."""

    async def test_via_added(self) -> None:
        """The origin sees the client's Via and Veil's own after it."""
        [r], _ = await self.talk(get("/echo", extra="Via: 1.0 corp-proxy\r\n"))
        vias = [v for n, v in r.json()["headers"] if n.lower() == "via"]
        self.assertEqual(vias, ["1.0 corp-proxy", f"1.1 {self.factory.via.decode()}"])

    async def test_own_via_is_a_loop(self) -> None:
        """A request carrying this Veil's Via (in any position) is answered 508."""
        mine = self.factory.via.decode()
        for via in (f"1.1 {mine}", f"1.0 a, 1.1 {mine} (Veil)", f"HTTP/1.1 {mine.upper()}"):
            [r], _ = await self.talk(get("/echo", extra=f"Via: {via}\r\n"))
            self.assertEqual(r.status, 508, via)
        [r], _ = await self.talk(get("/echo", extra=f"Via: 1.1 {mine}x\r\n"))
        self.assertEqual(r.status, 200)
        self.assertEqual(self.origin.requests[0][1], b"/echo")

    async def test_site_pointing_at_the_proxy(self) -> None:
        """
        A site whose origin is the proxy itself: the request comes back once,
        is answered 508, and the client gets that 508 (through the first hop).
        """
        self.sites["self.test"] = site("self.test", f"http://127.0.0.1:{self.port}")
        [r], _ = await self.talk(get("/", host="self.test"))
        self.assertEqual(r.status, 508)
        self.assertEqual([row.status for row in self.rows], [508, 508])

"""
The reverse proxy over real loopback sockets: a real origin
(L{tests.support.origin}), the proxy listening on port 0 over plain TCP,
and blocking clients on a thread pool of their own.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable

import httptools
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from tests.support.origin import OriginFactory
from veil.metrics import Registry
from veil.proxy.server import ProxyFactory, Verdict
from veil.proxy.upstream import OriginPool
from veil.store.sites import Site


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.size = 0
        self.done = False

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def json(self) -> dict:
        return json.loads(self.body)


class _Reader:
    def __init__(self, keep_body: bool) -> None:
        self.responses: list[Response] = []
        self.keep = keep_body
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.responses.append(Response())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.responses[-1].headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.responses[-1].status = self.parser.get_status_code()

    def on_body(self, data: bytes) -> None:
        r = self.responses[-1]
        r.size += len(data)
        if self.keep:
            r.body += data

    def on_message_complete(self) -> None:
        r = self.responses[-1]
        if r.status == 100:
            self.responses.pop()
            return
        r.done = True


def talk(port: int, *sends: bytes, responses: int = 1, keep_body: bool = True,
         body_stream: tuple[int, int] | None = None, timeout: float = 10.0,
         wrap: Callable[[socket.socket], socket.socket] | None = None,
         ) -> tuple[list[Response], bool]:
    """
    Send C{sends} (then C{body_stream}: C{(total, piece)} bytes of b'u'),
    read until C{responses} complete responses or the close.  C{wrap}
    turns the connected socket into another (a TLS client's).
    @return: the responses and whether the server closed the connection.
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if wrap is not None:
        s = wrap(s)
    reader = _Reader(keep_body)
    closed = False
    try:
        for data in sends:
            s.sendall(data)
        if body_stream is not None:
            total, piece = body_stream
            chunk = b"u" * piece
            while total:
                n = min(total, piece)
                s.sendall(chunk[:n])
                total -= n
        while sum(r.done for r in reader.responses) < responses:
            data = s.recv(262144)
            if not data:
                closed = True
                break
            try:
                reader.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                break
        if sum(r.done for r in reader.responses) >= responses:
            s.settimeout(0.3)
            try:
                closed = s.recv(1) == b""
            except (TimeoutError, ConnectionResetError):
                closed = False
    except ConnectionResetError:
        closed = True
    finally:
        s.close()
    return reader.responses, closed


def get(path: str, host: str = "app.test", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def site(domain: str, upstream: str, *, status: str = "live", maintenance: bool = False,
         max_body_size: int = 4 * 1024 ** 3) -> Site:
    """
    A live site for the proxy tests; it accepts bodies of up to 4 GiB (the
    streaming tests send 1 GiB), where the default is 100 MiB.
    """
    return Site(uuid.uuid4(), domain, upstream, status, "block", 1, maintenance, False, True,
                max_body_size=max_body_size)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def assert_streams_bounded(case, size: int, limit_kib: int) -> None:
    """
    C{size} bytes up (C{Content-Length}), then down with a length and down
    chunked, through C{case.talk}, with the test process (client, proxy and
    origin) growing by less than C{limit_kib}: bodies are streamed, not held.
    """
    before = rss_kib()
    [r], _ = await case.talk(
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n" % size,
        body_stream=(size, 65536))
    case.assertEqual(r.body, b"%d" % size)
    [r], _ = await case.talk(get(f"/size/{size}"), keep_body=False)
    case.assertEqual(r.size, size)
    [r], _ = await case.talk(get(f"/chunked/{size}"), keep_body=False)
    case.assertEqual(r.size, size)
    growth = rss_kib() - before
    case.assertLess(growth, limit_kib, f"RSS grew by {growth} KiB")
    case.assertEqual([row.status for row in case.rows], [200, 200, 200])
    case.assertEqual([row.bytes_in for row in case.rows], [size, 0, 0])
    case.assertEqual([row.bytes_out >= size for row in case.rows[1:]], [True, True])


class ProxyTests(TestCase):
    """The proxy forwards, rewrites, refuses and streams correctly."""

    timeout = 60

    def setUp(self) -> None:
        self.threads = ThreadPool(minthreads=0, maxthreads=8, name="test-proxy-clients")
        self.threads.start()
        self.addCleanup(self.threads.stop)
        self.origin = OriginFactory(reactor)
        oport = reactor.listenTCP(0, self.origin, interface="127.0.0.1")
        self.addCleanup(oport.stopListening)
        self.addCleanup(self.origin.cancel)
        upstream = f"http://127.0.0.1:{oport.getHost().port}"
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        dead.close()
        self.sites = {s.domain: s for s in (
            site("app.test", upstream),
            site("maint.test", upstream, maintenance=True),
            site("setup.test", upstream, status="pending_dns"),
            site("down.test", f"http://127.0.0.1:{dead_port}"),
        )}
        self.pool = OriginPool(reactor, connect_timeout=2.0, response_timeout=1.0)
        self.addCleanup(self.pool.close)
        self.rows: list = []
        self.verdicts: dict[str, Verdict] = {}
        self.factory = ProxyFactory(
            reactor, self.sites.get, self.pool, self.rows.append, Registry(), scheme="http",
            inspect=lambda ex: self.verdicts.get(ex.target.decode()),
            header_timeout=0.5, idle_timeout=5.0)
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        sport = reactor.listenTCP(0, self.factory.for_sni("app.test"), interface="127.0.0.1")
        self.addCleanup(sport.stopListening)
        self.sni_port = sport.getHost().port

    def talk(self, *sends: bytes, port: int | None = None, **kw) -> Deferred:
        return deferToThreadPool(reactor, self.threads, talk, port or self.port, *sends, **kw)

    # -- forwarding ---------------------------------------------------------------

    async def test_forwarding_headers(self) -> None:
        """
        The request reaches the origin with X-Forwarded-*, X-Real-IP and a
        request id, without hop-by-hop headers; the response loses its
        hop-by-hop headers and carries the same request id.
        """
        [r], closed = await self.talk(get(
            "/echo?q=1", extra="X-Forwarded-For: 10.0.0.1\r\nConnection: keep-alive, X-Secret\r\n"
            "X-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: x\r\n"
            "User-Agent: tester\r\n"))
        self.assertEqual(r.status, 200)
        self.assertFalse(closed)
        seen = {n.lower(): v for n, v in r.json()["headers"]}
        self.assertEqual(r.json()["target"], "/echo?q=1")
        self.assertEqual(seen["x-forwarded-for"], "10.0.0.1, 127.0.0.1")
        self.assertEqual(seen["x-forwarded-proto"], "http")
        self.assertEqual(seen["x-forwarded-host"], "app.test")
        self.assertEqual(seen["x-real-ip"], "127.0.0.1")
        self.assertEqual(seen["host"], "app.test")
        for gone in ("x-secret", "keep-alive", "te", "proxy-authorization"):
            self.assertNotIn(gone, seen)
        rid = r.header(b"x-request-id")
        self.assertEqual(seen["x-request-id"].encode(), rid)
        self.assertEqual(len(rid), 32)
        self.assertIsNone(r.header(b"x-hop"))
        self.assertIsNone(r.header(b"connection"))
        [row] = self.rows
        self.assertEqual((row.host, row.method, row.path, row.query, row.status, row.client_ip,
                          row.request_id, row.user_agent, row.blocked, row.site_id),
                         ("app.test", "GET", "/echo", "q=1", 200, "127.0.0.1", rid.decode(),
                          "tester", False, self.sites["app.test"].id))
        self.assertGreater(row.bytes_out, 0)
        self.assertIsNotNone(row.origin_ms)

    async def test_keep_alive_reuse(self) -> None:
        """Sequential requests, on one client connection or several, share one origin connection."""
        responses, _ = await self.talk(*(get("/echo") for _ in range(3)), responses=3)
        self.assertEqual([r.status for r in responses], [200] * 3)
        for _ in range(3):
            [r], _ = await self.talk(get("/echo"))
            self.assertEqual(r.status, 200)
        self.assertEqual(self.origin.connections, 1)
        self.assertEqual(len(self.rows), 6)

    async def test_pipelining_in_order(self) -> None:
        """Three requests written at once are answered in order."""
        responses, _ = await self.talk(
            get("/slow?1") + get("/size/10") + get("/echo?3"), responses=3)
        self.assertEqual([r.status for r in responses], [200, 200, 200])
        self.assertEqual(responses[0].json()["target"], "/slow?1")
        self.assertEqual(responses[1].body, b"x" * 10)
        self.assertEqual(responses[2].json()["target"], "/echo?3")

    async def test_head(self) -> None:
        """
        HEAD keeps the origin's Content-Length and has no body; the client
        connection is reused, the origin connection is not (whatever follows
        a HEAD's answer could not be told from the next response).
        """
        def client() -> tuple[bytes, bytes]:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.sendall(b"HEAD /size/10 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += s.recv(1)
            s.sendall(get("/size/3"))
            rest = b""
            while not rest.endswith(b"\r\n\r\nxxx"):
                rest += s.recv(1000)
            s.close()
            return head, rest
        head, rest = await deferToThreadPool(reactor, self.threads, client)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
        self.assertIn(b"Content-Length: 10\r\n", head)
        self.assertTrue(rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest)
        self.assertEqual(self.origin.connections, 2)

    async def test_http10(self) -> None:
        """HTTP/1.0 closes unless it asks for keep-alive; unknown lengths end with the close."""
        [r], closed = await self.talk(b"GET /echo HTTP/1.0\r\nHost: app.test\r\n\r\n")
        self.assertEqual(r.status, 200)
        self.assertTrue(closed)
        [r], closed = await self.talk(
            b"GET /echo HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\n\r\n")
        self.assertFalse(closed)
        self.assertEqual(r.header(b"connection"), b"keep-alive")
        [r], closed = await self.talk(b"GET /chunked/5000 HTTP/1.0\r\nHost: app.test\r\n\r\n")
        self.assertEqual((r.size, closed), (5000, True))

    # -- pages ---------------------------------------------------------------------

    async def test_pages(self) -> None:
        """Unknown host 404, maintenance 503 + Retry-After, setup page 503, SNI mismatch 421."""
        [r], _ = await self.talk(get("/", host="nope.test"))
        self.assertEqual(r.status, 404)
        [r], _ = await self.talk(get("/", host="maint.test"))
        self.assertEqual(r.status, 503)
        self.assertIsNotNone(r.header(b"retry-after"))
        [r], _ = await self.talk(get("/", host="setup.test:8080"))
        self.assertEqual(r.status, 503)
        self.assertIn(b"DNS for <code>setup.test</code> is not verified yet", r.body)
        self.assertIn(b"pending_dns", r.body)
        [r], _ = await self.talk(get("/", host="maint.test"), port=self.sni_port)
        self.assertEqual(r.status, 421)
        [r], _ = await self.talk(get("/echo", host="APP.test:443"), port=self.sni_port)
        self.assertEqual(r.status, 200)
        self.assertEqual(self.origin.connections, 1)

    async def test_inspect_verdicts(self) -> None:
        """A WAF verdict answers 403 or 429 and logs blocked=True; the origin sees nothing."""
        self.verdicts["/bad"] = Verdict(403, reason="sqli")
        self.verdicts["/fast"] = Verdict(429, retry_after=30)
        [r], _ = await self.talk(get("/bad"))
        self.assertEqual(r.status, 403)
        self.assertIn(r.header(b"x-request-id"), r.body)
        [r], _ = await self.talk(get("/fast"))
        self.assertEqual((r.status, r.header(b"retry-after")), (429, b"30"))
        self.assertEqual([(x.status, x.blocked) for x in self.rows], [(403, True), (429, True)])
        self.assertEqual(self.origin.requests, [])

    # -- strictness ----------------------------------------------------------------

    async def _refused(self, data: bytes, status: int = 400) -> None:
        responses, closed = await self.talk(data)
        self.assertEqual([r.status for r in responses], [status], data[:60])
        self.assertTrue(closed)
        self.assertEqual(self.origin.requests, [])

    async def test_smuggling_vectors(self) -> None:
        """Ambiguous framing, bad chunking, folding, bare CR and bad versions are 400 and closed."""
        head = b"POST / HTTP/1.1\r\nHost: app.test\r\n"
        for data in (
            head + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            head + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            head + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            head + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            head + b"Transfer-Encoding: gzip\r\n\r\n",
            head + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            head + b"X-A: b\r\n c\r\n\r\n",
            head + b"X-A: b\rc\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: app.test\r\n\r\n",
            b"GET / HTTP/1.7\r\nHost: app.test\r\n\r\n",
            b"BREW / HTTP/1.1\r\nHost: app.test\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: app.test\r\n\r\n",
        ):
            await self._refused(data)

    async def test_limits(self) -> None:
        """33 KiB of headers or 101 headers are 431; a 9 KiB URL is 414."""
        await self._refused(get("/", extra="X-Big: " + "a" * 33 * 1024 + "\r\n"), 431)
        await self._refused(get("/", extra="".join(f"X-{i}: v\r\n" for i in range(101))), 431)
        await self._refused(get("/" + "a" * 9 * 1024), 414)

    async def test_slow_head_timeout(self) -> None:
        """A head not completed within the header timeout closes the connection."""
        responses, closed = await self.talk(b"GET / HTTP/1.1\r\nHost: app")
        self.assertEqual((responses, closed), ([], True))

    # -- origin failures -------------------------------------------------------------

    async def test_origin_down(self) -> None:
        """An origin that refuses connections gives 502 with the request id."""
        [r], _ = await self.talk(get("/", host="down.test"))
        self.assertEqual(r.status, 502)
        self.assertIn(r.header(b"x-request-id"), r.body)
        self.assertEqual(self.rows[0].status, 502)

    async def test_origin_slow(self) -> None:
        """An origin slower than the response timeout gives 504."""
        self.origin.slow_delay = 3.0
        [r], _ = await self.talk(get("/slow"))
        self.assertEqual(r.status, 504)
        self.assertIn(r.header(b"x-request-id"), r.body)

    async def test_retry_on_stale_connection(self) -> None:
        """A GET failing on a reused connection before any response byte is retried once."""
        [r], _ = await self.talk(get("/echo"))
        self.origin.drop_reused = True
        [r], _ = await self.talk(get("/echo"))
        self.assertEqual(r.status, 200)
        self.assertEqual(self.origin.connections, 2)
        [r], _ = await self.talk(b"POST /echo HTTP/1.1\r\nHost: app.test\r\n"
                                 b"Content-Length: 2\r\n\r\nhi")
        self.assertEqual(r.status, 502)

    # -- streaming -------------------------------------------------------------------

    async def test_chunked_both_ways(self) -> None:
        """A chunked request body reaches the origin; an unknown-length body is re-chunked."""
        [r], _ = await self.talk(b"POST /upload HTTP/1.1\r\nHost: app.test\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n"
                                 b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
        self.assertEqual((r.status, r.body), (200, b"11"))
        [r], _ = await self.talk(get("/chunked/100000"))
        self.assertEqual(r.header(b"transfer-encoding"), b"chunked")
        self.assertEqual(r.body, b"x" * 100000)

    async def test_large_bodies_bounded_memory(self) -> None:
        """1 GiB up and 1 GiB down (with a length, then chunked) with the process growing by less than 64 MiB."""
        await assert_streams_bounded(self, 1024 * 1024 * 1024, 64 * 1024)

    async def test_expect_continue(self) -> None:
        """Expect: 100-continue is forwarded and the origin's 100 relayed."""
        def client() -> bytes:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n"
                      b"Expect: 100-continue\r\n\r\n")
            first = s.recv(100)
            s.sendall(b"abcd")
            rest = b""
            while not rest.endswith(b"\r\n\r\n4"):
                rest += s.recv(1000)
            s.close()
            return first + rest
        out = await deferToThreadPool(reactor, self.threads, client)
        self.assertTrue(out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"), out)

    async def test_websocket_tunnel(self) -> None:
        """An upgrade gets the origin's 101 and then a raw byte tunnel both ways."""
        def client() -> bytes:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.sendall(get("/ws", extra="Connection: Upgrade\r\nUpgrade: websocket\r\n")
                      + b"early")
            got = b""
            while b"early" not in got:
                got += s.recv(1000)
            s.sendall(b"ping")
            while not got.endswith(b"ping"):
                got += s.recv(1000)
            s.close()
            return got
        out = await deferToThreadPool(reactor, self.threads, client)
        self.assertTrue(out.startswith(b"HTTP/1.1 101 "), out)
        self.assertIn(b"Upgrade: websocket", out)
        self.assertTrue(out.endswith(b"\r\n\r\nearlyping"), out)
        self.assertEqual(self.rows[0].status, 101)

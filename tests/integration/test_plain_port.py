"""
The plain-HTTP port through the proxy (L{veil.edge.plain.PlainPort}), over
real loopback sockets: http-01 answers, redirects, 404s, and the sites with
C{allow_plain_http} proxied with the TLS port's strictness, WAF and logging.
"""

from __future__ import annotations

import uuid

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThreadPool
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from tests.integration.test_edge import start_veil, until_rows
from tests.integration.test_migrate import empty_database
from tests.integration.test_proxy import get, talk
from tests.support.origin import OriginFactory, client_threads, listen_origin
from veil.edge.plain import PlainHTTP, PlainPort
from veil.errors import StoreUnavailable
from veil.metrics import Registry
from veil.proxy.server import ProxyFactory, Verdict
from veil.proxy.upstream import OriginPool
from veil.store.sites import Site

CHALLENGE = "/.well-known/acme-challenge/"


def site(domain: str, upstream: str, allow_plain_http: bool) -> Site:
    return Site(uuid.uuid4(), domain, upstream, "live", "block", 1, False, allow_plain_http,
                True)


class PlainPortTests(TestCase):
    """Each request on the plain port is routed on its own: challenge, proxy, redirect or 404."""

    timeout = 30

    def setUp(self) -> None:
        self.threads = client_threads(self, "test-plain-port")
        self.origin, upstream = listen_origin(self)
        self.sites = {s.domain: s for s in (
            site("open.test", upstream, True),
            site("closed.test", upstream, False),
        )}
        self.tokens = {"tok-1": "tok-1.thumbprint"}
        self.store_down = False
        pool = OriginPool(reactor, connect_timeout=2.0, response_timeout=5.0)
        self.addCleanup(pool.close)
        self.rows: list = []
        self.verdicts: dict[str, Verdict] = {}
        self.proxy = ProxyFactory(
            reactor, self.sites.get, pool, self.rows.append, Registry(),
            inspect=lambda ex: self.verdicts.get(ex.target.decode()))
        self.plain = PlainHTTP(self.sites.get, self.http01, 8443, "dash.test", clock=reactor)
        self.current: ProxyFactory | None = self.proxy
        port = reactor.listenTCP(0, PlainPort(self.plain, lambda: self.current),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def http01(self, token: str) -> Deferred[str | None]:
        if self.store_down:
            return fail(StoreUnavailable("database away"))
        return succeed(self.tokens.get(token))

    def talk(self, *sends: bytes, **kw) -> Deferred:
        return deferToThreadPool(reactor, self.threads, talk, self.port, *sends, **kw)

    async def test_allowed_site_proxied(self) -> None:
        """A site with allow_plain_http reaches its origin with scheme http, and is logged."""
        [r], closed = await self.talk(get("/echo?x=1", host="open.test"))
        self.assertEqual(r.status, 200)
        self.assertFalse(closed)
        seen = {n.lower(): v for n, v in r.json()["headers"]}
        self.assertEqual(seen["x-forwarded-proto"], "http")
        self.assertEqual(seen["host"], "open.test")
        self.assertEqual(seen["x-request-id"].encode(), r.header(b"x-request-id"))
        [row] = self.rows
        self.assertEqual((row.site_id, row.host, row.path, row.status, row.blocked),
                         (self.sites["open.test"].id, "open.test", "/echo", 200, False))

    async def test_waf_and_strictness(self) -> None:
        """The WAF stage blocks on the plain port too, and malformed framing is a 400 and a close."""
        self.verdicts["/bad"] = Verdict(403)
        [r], _ = await self.talk(get("/bad", host="open.test"))
        self.assertEqual(r.status, 403)
        self.assertIn(r.header(b"x-request-id"), r.body)
        [r], closed = await self.talk(b"POST / HTTP/1.1\r\nHost: open.test\r\nContent-Length: 3"
                                      b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        self.assertEqual((r.status, closed), (400, True))
        self.assertEqual(self.origin.requests, [])
        self.assertEqual([(row.status, row.blocked) for row in self.rows],
                         [(403, True), (400, False)])

    async def test_redirects(self) -> None:
        """A site without allow_plain_http and the dashboard get a 308 to https, target kept."""
        [r], closed = await self.talk(get("/a b?q=1", host="closed.test").replace(
            b"/a b", b"/a%20b"))
        self.assertEqual(r.status, 308)
        self.assertFalse(closed)
        self.assertEqual(r.header(b"location"), b"https://closed.test:8443/a%20b?q=1")
        [r], _ = await self.talk(b"POST /form HTTP/1.1\r\nHost: closed.test\r\n"
                                 b"Content-Length: 2\r\n\r\nhi")
        self.assertEqual((r.status, r.header(b"location")),
                         (308, b"https://closed.test:8443/form"))
        [r], _ = await self.talk(get("/", host="DASH.test:80"))
        self.assertEqual((r.status, r.header(b"location")), (308, b"https://dash.test:8443/"))
        self.assertEqual(self.origin.requests, [])
        self.assertEqual([row.status for row in self.rows], [308, 308, 308])

    async def test_unknown_host(self) -> None:
        """An unknown host gets the 404 page."""
        [r], _ = await self.talk(get("/", host="nobody.test"))
        self.assertEqual(r.status, 404)
        self.assertIn(b"No site here", r.body)

    async def test_challenges(self) -> None:
        """
        http-01 paths are answered from the challenge store for any host,
        even an allowed site's (the origin never sees them); an unknown
        token is 404, a store failure 503 with Retry-After.
        """
        for host in ("open.test", "closed.test", "nobody.test"):
            [r], _ = await self.talk(get(CHALLENGE + "tok-1", host=host))
            self.assertEqual((r.status, r.body), (200, b"tok-1.thumbprint"))
            self.assertEqual(r.header(b"content-type"), b"text/plain")
        [r], _ = await self.talk(get(CHALLENGE + "nope", host="open.test"))
        self.assertEqual(r.status, 404)
        [r], _ = await self.talk(get(CHALLENGE + "bad*token", host="open.test"))
        self.assertEqual(r.status, 404)
        self.store_down = True
        [r], _ = await self.talk(get(CHALLENGE + "tok-1", host="open.test"))
        self.assertEqual((r.status, r.header(b"retry-after")), (503, b"5"))
        self.assertEqual(self.origin.requests, [])

    async def test_per_request_on_one_connection(self) -> None:
        """One kept-alive connection carries a proxied request, a redirect, a challenge and a proxied one."""
        responses, closed = await self.talk(
            get("/echo", host="open.test"), get("/x", host="closed.test"),
            get(CHALLENGE + "tok-1", host="closed.test"), get("/echo?2", host="open.test"),
            responses=4)
        self.assertEqual([r.status for r in responses], [200, 308, 200, 200])
        self.assertEqual(responses[3].json()["target"], "/echo?2")
        self.assertFalse(closed)
        self.assertEqual(len(self.origin.requests), 2)

    async def test_before_the_proxy_runs(self) -> None:
        """Until the proxy exists, the plain port still redirects known sites (twisted.web)."""
        self.current = None
        [r], _ = await self.talk(get("/x", host="open.test"))
        self.assertEqual((r.status, r.header(b"location")), (308, b"https://open.test:8443/x"))


class PlainPortInVeilTests(TestCase):
    """In a running Veil, the plain port proxies the sites that allow it and logs their requests."""

    timeout = 60

    async def test_allow_plain_http(self) -> None:
        """
        A site with allow_plain_http is proxied on the plain port and its
        request lands in request_log; a site without it is redirected.
        """
        origin = OriginFactory(reactor)
        oport = reactor.listenTCP(0, origin, interface="127.0.0.1")
        self.addCleanup(oport.stopListening)
        conninfo = empty_database(self)
        veil = await start_veil(self, conninfo)
        upstream = f"http://127.0.0.1:{oport.getHost().port}"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            owner = conn.execute("INSERT INTO users (email) VALUES ('o@example.com')"
                                 " RETURNING id").fetchone()[0]
            open_id = conn.execute(
                "INSERT INTO sites (owner_id, domain, upstream, status, allow_plain_http)"
                " VALUES (%s, 'open.test', %s, 'active', true) RETURNING id",
                (owner, upstream)).fetchone()[0]
            conn.execute("INSERT INTO sites (owner_id, domain, upstream, status)"
                         " VALUES (%s, 'closed.test', %s, 'active')", (owner, upstream))
        await veil.edge.sites.reload()
        threads = ThreadPool(minthreads=0, maxthreads=2, name="test-plain-veil")
        threads.start()
        self.addCleanup(threads.stop)
        port = veil.edge.ports["http"].getHost().port
        responses, _ = await deferToThreadPool(
            reactor, threads, talk, port, get("/echo", host="open.test"),
            get("/x", host="closed.test"), responses=2)
        self.assertEqual(responses[0].status, 200)
        seen = {n.lower(): v for n, v in responses[0].json()["headers"]}
        self.assertEqual(seen["x-forwarded-proto"], "http")
        # Redirects name the configured edge port (0 here: bound at random).
        self.assertEqual((responses[1].status, responses[1].header(b"location")),
                         (308, b"https://closed.test:0/x"))
        await until_rows(conninfo, 2)
        with psycopg.connect(conninfo) as conn:
            logged = conn.execute("SELECT site_id, host, path, status FROM request_log"
                                  " ORDER BY status").fetchall()
        self.assertEqual(logged[0], (open_id, "open.test", "/echo", 200))
        self.assertEqual(logged[1][1:], ("closed.test", "/x", 308))

    async def test_http01_in_internal_ca_mode(self) -> None:
        """
        With the internal CA (no ACME account, so no CA ever asks), an
        http-01 request is a plain 404 for any host, with no warning
        logged; never the 503 "still starting" of a Veil still starting.
        """
        veil = await start_veil(self, empty_database(self))
        self.assertEqual(veil.config.tls.mode, "internal")
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        threads = ThreadPool(minthreads=0, maxthreads=1, name="test-plain-internal")
        threads.start()
        self.addCleanup(threads.stop)
        port = veil.edge.ports["http"].getHost().port
        responses, _ = await deferToThreadPool(
            reactor, threads, talk, port, get(CHALLENGE + "some-token", host="shop.test"),
            get(CHALLENGE + "other", host="nobody.test"), responses=2)
        self.assertEqual([r.status for r in responses], [404, 404])
        self.assertEqual(responses[0].body, b"Veil: no such challenge.\n")
        self.assertEqual([e for e in events if e["log_level"] in (LogLevel.warn, LogLevel.error)],
                         [])

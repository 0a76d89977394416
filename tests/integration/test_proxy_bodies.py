"""
Request bodies and the origin pool under slow or greedy clients, over real
loopback sockets: bodies held before an origin connection is taken, the
body decision point, the body budget, the per-site body limit (413), the
per-client cap on requests at origins, a full origin pool (503, logged and
counted), clients that stop reading responses, and the slow-body attack
itself: while hundreds of connections trickle bodies, other clients are
served.

Attackers connect from 127.0.0.2 and the other clients from 127.0.0.3
(Linux routes all of 127/8 to loopback), so that the per-client cap sees
two clients.
"""

from __future__ import annotations

import select
import socket
import threading
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThreadPool
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.integration.test_proxy import Response, _Reader, get, site
from tests.support.origin import (
    ScriptedProtocol,
    client_threads,
    listen_origin,
    listen_scripted,
    plain_answer,
)
from tests.support.waiting import until
from veil.metrics import Registry
from veil.proxy.server import ProxyFactory, Verdict
from veil.proxy.upstream import OriginPool
from veil.store.sites import DEFAULT_MAX_BODY_SIZE, Site

ATTACKER, VISITOR = "127.0.0.2", "127.0.0.3"


def exchange(port: int, data: bytes, source: str = VISITOR, body: bytes = b"",
             timeout: float = 10.0, responses: int = 1) -> Response:
    """
    A connection from C{source} that sends C{data} then C{body}; the last of
    the C{responses} it waits for.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                  source_address=(source, 0)) as s:
        s.sendall(data)
        if body:
            s.sendall(body)
        reader = _Reader(True)
        while sum(r.done for r in reader.responses) < responses:
            chunk = s.recv(65536)
            if not chunk:
                break
            reader.parser.feed_data(chunk)
        return reader.responses[-1] if reader.responses else Response()


def post(path: str, length: int, host: str = "app.test", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n{extra}\r\n"
            ).encode()


class BodyCase(TestCase):
    """Base: a proxy on loopback in front of the echo origin and a scripted one."""

    timeout = 60
    pool_size = 256
    connect_timeout = 2.0

    def setUp(self) -> None:
        self.threads = client_threads(self, "test-proxy-bodies", 12)
        self.origin, upstream = listen_origin(self)
        self.scripted, sport = listen_scripted(self)
        self.held: list[ScriptedProtocol] = []

        def answer(proto: ScriptedProtocol, method: bytes, url: bytes) -> None:
            if url.startswith(b"/hold"):
                self.held.append(proto)
            else:
                plain_answer(proto, method, url)
        self.scripted.answer = answer
        self.sites = {
            "app.test": site("app.test", upstream),
            "small.test": site("small.test", upstream, max_body_size=1000),
            "held.test": site("held.test", f"http://127.0.0.1:{sport}"),
        }
        self.pool = OriginPool(reactor, connect_timeout=self.connect_timeout,
                               response_timeout=10.0, max_per_origin=self.pool_size)
        self.addCleanup(self.pool.close)
        self.rows: list = []
        self.seen: list[tuple[bytes, bool]] = []
        self.verdict: Verdict | None = None
        self.registry = Registry()
        self.factory = self.make_factory()
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def options(self) -> dict[str, Any]:
        return {}

    def make_factory(self) -> ProxyFactory:
        def inspect_body(ex: Any) -> Verdict | None:
            self.seen.append((ex.body_prefix, ex.body_complete))
            return self.verdict
        return ProxyFactory(reactor, self.sites.get, self.pool, self.rows.append,
                            self.registry, scheme="http", header_timeout=10.0,
                            idle_timeout=10.0, inspect_body=inspect_body,
                            **self.options())

    def in_thread(self, fn: Any, *args: Any, **kw: Any) -> Deferred:
        return deferToThreadPool(reactor, self.threads, fn, *args, **kw)

    def request(self, data: bytes, **kw: Any) -> Deferred[Response]:
        return self.in_thread(exchange, self.port, data, **kw)

    def release_held(self) -> None:
        for proto in self.held:
            plain_answer(proto, b"GET", b"/hold")
        self.held.clear()


class HoldTests(BodyCase):
    """A body's start is held before an origin connection is taken, and the WAF can read it."""

    def options(self) -> dict[str, Any]:
        return {"inspect_body_limit": lambda site: 16 if site.domain == "small.test" else 65536}

    async def test_small_body_held_whole(self) -> None:
        """
        Half of a 100-byte body: no origin connection yet; the rest: the
        request goes out whole, after the body hook saw all of it.
        """
        def client() -> Response:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(post("/upload", 100) + b"a" * 50)
                held.wait(10)
                s.sendall(b"b" * 50)
                reader = _Reader(True)
                while not any(r.done for r in reader.responses):
                    reader.parser.feed_data(s.recv(65536))
                return reader.responses[0]
        held = threading.Event()
        self.addCleanup(held.set)
        d = self.in_thread(client)
        await until(lambda: self.factory.budget.used == 50, 10, "50 bytes held")
        self.assertEqual(self.origin.connections, 0)
        held.set()
        r = await d
        self.assertEqual((r.status, r.body), (200, b"100"))
        self.assertEqual(self.seen, [(b"a" * 50 + b"b" * 50, True)])
        self.assertEqual(self.factory.budget.used, 0)

    async def test_larger_body_prefix(self) -> None:
        """
        A body over the limit: the hook sees at least the limit's worth and
        is told the body is not complete; the whole body reaches the origin.
        """
        r = await self.request(post("/upload", 1000, host="small.test"), body=b"x" * 1000)
        self.assertEqual((r.status, r.body), (200, b"1000"))
        [(prefix, complete)] = self.seen
        self.assertGreaterEqual(len(prefix), 16)
        self.assertFalse(complete)
        self.assertEqual(prefix, b"x" * len(prefix))

    async def test_chunked_prefix_decoded(self) -> None:
        """A chunked body is held decoded, and forwarded whole."""
        r = await self.request(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: "
                               b"chunked\r\n\r\n3\r\nabc\r\n4;x=1\r\ndefg\r\n0\r\n\r\n")
        self.assertEqual((r.status, r.body), (200, b"7"))
        self.assertEqual(self.seen, [(b"abcdefg", True)])

    async def test_verdict_at_body_time(self) -> None:
        """A verdict from the body hook answers 403 and the origin sees nothing."""
        self.verdict = Verdict(403, reason="body")
        r = await self.request(post("/upload", 5), body=b"hello")
        self.assertEqual(r.status, 403)
        self.assertIn(r.header(b"x-request-id"), r.body)
        self.assertEqual((self.origin.connections, self.origin.requests), (0, []))
        self.assertEqual([(row.status, row.blocked) for row in self.rows], [(403, True)])

    async def test_expect_continue_answered_by_veil(self) -> None:
        """
        A client that waits for 100 Continue before its body gets it from
        Veil (which holds the body), once, then the origin's answer.
        """
        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(post("/upload", 4, extra="Expect: 100-continue\r\n"))
                first = b""
                while not first.endswith(b"\r\n\r\n"):
                    first += s.recv(1)
                s.sendall(b"abcd")
                rest = b""
                while not rest.endswith(b"\r\n\r\n4"):
                    rest += s.recv(1000)
                return first + rest
        out = await self.in_thread(client)
        self.assertTrue(out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"), out)
        self.assertEqual(out.count(b"100 Continue"), 1)


class BudgetTests(BodyCase):
    """The bytes held across connections stay within the body budget."""

    def options(self) -> dict[str, Any]:
        return {"body_budget": 32 * 1024, "inspect_body_limit": lambda site: 1024 * 1024}

    async def test_goes_on_with_what_it_holds(self) -> None:
        """
        A 300 KiB body whose hold (1 MiB) is more than the budget (32 KiB):
        the request goes on with the prefix it could hold, and is forwarded
        whole; nothing stays charged.
        """
        size = 300 * 1024
        r = await self.request(post("/upload", size), body=b"u" * size)
        self.assertEqual((r.status, r.body), (200, b"%d" % size))
        [(prefix, complete)] = self.seen
        self.assertFalse(complete)
        self.assertGreaterEqual(len(prefix), 32 * 1024)
        self.assertLess(len(prefix), size)
        self.assertEqual(self.factory.budget.used, 0)

    async def test_pipelined_body_waits(self) -> None:
        """
        A body pipelined behind a slow request holds what the budget allows,
        then its connection is not read until the budget has room; all is
        answered in the end and nothing stays charged.
        """
        size = 200 * 1024
        data = get("/hold", host="held.test") + post("/upload", size)
        d = self.request(data, body=b"u" * size, responses=2)
        await until(lambda: self.factory.budget.waiting == 1, 10, "the reader stopped")
        self.assertGreaterEqual(self.factory.budget.used, 32 * 1024)
        self.assertLessEqual(self.factory.budget.used, 32 * 1024 + 65536)
        self.release_held()
        r = await d
        self.assertEqual((r.status, r.body), (200, b"%d" % size))
        self.assertEqual([row.status for row in self.rows], [200, 200])
        self.assertEqual(self.factory.budget.used, 0)


class BodyLimitTests(BodyCase):
    """A body larger than its site's max_body_size is answered 413."""

    def options(self) -> dict[str, Any]:
        return {"inspect_body_limit": lambda site: 16}

    async def assert_too_large(self, data: bytes, body: bytes = b"") -> None:
        r = await self.request(data, body=body)
        self.assertEqual(r.status, 413)
        self.assertEqual(r.header(b"connection"), b"close")
        self.assertIn(b"larger than this site accepts", r.body)

    async def test_content_length_over(self) -> None:
        """A Content-Length over the limit (even 2^64 - 1) is a 413 at once; the origin sees nothing."""
        await self.assert_too_large(post("/upload", 1001, host="small.test"))
        await self.assert_too_large(post("/upload", 2 ** 64 - 1, host="small.test"))
        self.assertEqual(self.origin.connections, 0)
        self.assertEqual([row.status for row in self.rows], [413, 413])

    async def test_at_the_limit(self) -> None:
        """A body of exactly the limit goes through."""
        r = await self.request(post("/upload", 1000, host="small.test"), body=b"x" * 1000)
        self.assertEqual((r.status, r.body), (200, b"1000"))

    async def test_chunked_over(self) -> None:
        """
        A chunked body that grows over the limit while it streams to the
        origin: the origin connection is dropped and the client gets 413.
        """
        self.sites["held.test"] = site("held.test", self.sites["held.test"].upstream,
                                       max_body_size=1000)
        heads: list[bytes] = []
        self.scripted.on_head = lambda proto, method, url: heads.append(url)
        go_on = threading.Event()
        self.addCleanup(go_on.set)

        def client() -> Response:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(b"POST /upload HTTP/1.1\r\nHost: held.test\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n64\r\n" + b"c" * 100 + b"\r\n")
                go_on.wait(10)
                s.sendall(b"".join(b"64\r\n" + b"c" * 100 + b"\r\n" for _ in range(10)))
                reader = _Reader(True)
                while not any(r.done for r in reader.responses):
                    reader.parser.feed_data(s.recv(65536))
                return reader.responses[0]
        d = self.in_thread(client)
        await until(lambda: heads, 10, "the request at the origin")
        go_on.set()
        r = await d
        self.assertEqual(r.status, 413)
        await until(lambda: self.scripted.lost == 1, 10, "the origin connection dropped")
        self.assertEqual(self.scripted.requests, [])

    async def test_default_limit(self) -> None:
        """A site's default limit is 100 MiB."""
        self.assertEqual(DEFAULT_MAX_BODY_SIZE, 100 * 1024 * 1024)
        self.sites["default.test"] = Site(uuid.uuid4(), "default.test",
                                          self.sites["app.test"].upstream, "live", "block", 1,
                                          False, False, True)
        await self.assert_too_large(post("/upload", 100 * 1024 * 1024 + 1, host="default.test"))


class ClientCapTests(BodyCase):
    """One client address gets at most client_requests requests at origins at once."""

    def options(self) -> dict[str, Any]:
        return {"client_requests": 2}

    async def test_cap(self) -> None:
        """
        Three requests from one address to a slow origin: two reach it, the
        third is answered 429 at once; another address is still served.
        """
        first = [self.request(get("/hold1", host="held.test"), source=ATTACKER),
                 self.request(get("/hold2", host="held.test"), source=ATTACKER)]
        await until(lambda: len(self.held) == 2, 10, "two requests at the origin")
        r = await self.request(get("/hold3", host="held.test"), source=ATTACKER)
        self.assertEqual((r.status, r.header(b"retry-after")), (429, b"1"))
        r = await self.request(get("/echo"), source=VISITOR)
        self.assertEqual(r.status, 200)
        self.release_held()
        self.assertEqual([(await d).status for d in first], [200, 200])
        r = await self.request(get("/again", host="held.test"), source=ATTACKER)
        self.assertEqual(r.status, 200)
        await until(lambda: self.factory.loads == {}, 5, "no client counted any more")


class PoolFullTests(BodyCase):
    """A request that finds every connection to its origin busy gets 503, logged and counted."""

    pool_size = 1
    connect_timeout = 0.5

    async def test_pool_full(self) -> None:
        """With one connection allowed and busy, the next request waits, then gets 503."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        busy = self.request(get("/hold", host="held.test"))
        await until(lambda: self.held, 10, "the first request at the origin")
        r = await self.request(get("/ok", host="held.test"))
        self.assertEqual((r.status, r.header(b"retry-after")), (503, b"1"))
        self.assertIn(b"busy", r.body)
        self.assertEqual(self.factory.pool_full.value(), 1)
        self.assertIn("veil_proxy_origin_pool_full_total 1", self.registry.render())
        [event] = [e for e in events if "pool full" in e.get("log_format", "")]
        self.assertEqual(event["size"], 1)
        self.release_held()
        self.assertEqual((await busy).status, 200)

    async def test_tunnel_frees_its_place(self) -> None:
        """
        A WebSocket tunnel does not count against the pool (another request is
        served meanwhile) nor against its client's requests at origins.
        """
        self.sites["ws.test"] = site("ws.test", self.sites["app.test"].upstream)
        self.pool.max_per_origin = 1

        def tunnel() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(get("/ws", host="ws.test",
                              extra="Connection: Upgrade\r\nUpgrade: websocket\r\n"))
                got = b""
                while b"\r\n\r\n" not in got:
                    got += s.recv(1000)
                other = exchange(self.port, get("/echo", host="ws.test"), source="127.0.0.1")
                counted.append(self.factory.loads["127.0.0.1"][0])
                return got + b"|%d" % other.status
        counted: list[int] = []
        out = await self.in_thread(tunnel)
        self.assertTrue(out.startswith(b"HTTP/1.1 101 "), out)
        self.assertTrue(out.endswith(b"|200"), out)
        # With the tunnel still open, its client has no request counted at origins.
        self.assertEqual(counted, [0])


class SlowReaderTests(BodyCase):
    """A client that stops reading its response is given up on after send_timeout."""

    def options(self) -> dict[str, Any]:
        return {"send_timeout": 0.5}

    async def test_stalled_reader(self) -> None:
        """
        A 100 MB response to a client that reads nothing: both connections
        are dropped once the client has taken nothing for send_timeout.
        """
        def client() -> bool:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", self.port))
            s.sendall(get("/size/100000000"))
            done.wait(20)
            s.close()
            return True
        done = threading.Event()
        self.addCleanup(done.set)
        d = self.in_thread(client)
        await until(lambda: self.origin.lost == 1, 15, "the origin connection dropped")
        await until(lambda: not self.factory.connections, 5, "the client connection dropped")
        done.set()
        await d
        [row] = self.rows
        self.assertEqual(row.status, 200)
        self.assertLess(row.bytes_out, 100000000)


class SlowBodyAttackTests(BodyCase):
    """
    The attack of issue 10: hundreds of connections sending their bodies a
    byte at a time exhausted the origin pool; now other clients are served.
    """

    pool_size = 4
    connect_timeout = 1.0

    def options(self) -> dict[str, Any]:
        return {"client_requests": 2}

    async def test_trickling_bodies(self) -> None:
        """
        300 connections each send a head and one byte of a 100-byte body,
        20 more one byte of a 1 MiB body, and then nothing: with four origin
        connections allowed, another client's GETs and POSTs are all
        served, and no attacker request reaches the origin.
        """
        attackers: list[socket.socket] = []

        def attack() -> None:
            for i in range(320):
                s = socket.create_connection(("127.0.0.1", self.port), timeout=10,
                                             source_address=(ATTACKER, 0))
                length = 100 if i < 300 else 1024 * 1024
                s.sendall(post(f"/upload?attacker={i}", length) + b"x")
                attackers.append(s)

        def close() -> None:
            for s in attackers:
                s.close()
        self.addCleanup(close)
        await self.in_thread(attack)
        await until(lambda: sum(len(p.queue) for p in self.factory.connections) == 320, 20,
                    "every attacker's request read")
        for i in range(10):
            r = await self.request(get(f"/echo?visitor={i}"))
            self.assertEqual(r.status, 200)
            r = await self.request(post("/upload", 1000), body=b"v" * 1000)
            self.assertEqual((r.status, r.body), (200, b"1000"))
        targets = [target for _, target, _, _ in self.origin.requests]
        self.assertEqual(len(targets), 20)
        self.assertFalse([t for t in targets if b"attacker" in t])
        self.assertLessEqual(self.origin.connections, 4)

    async def test_fast_prefix_then_trickle(self) -> None:
        """
        Attackers that send a whole hold's worth at once (64 KiB of a 1 MiB
        body) and then trickle do take origin connections, but at most
        client_requests of them: the others are refused with 429 and another
        client is served.
        """
        attackers: list[socket.socket] = []

        def attack() -> list[bytes]:
            for i in range(10):
                s = socket.create_connection(("127.0.0.1", self.port), timeout=10,
                                             source_address=(ATTACKER, 0))
                s.sendall(post(f"/upload?attacker={i}", 1024 * 1024) + b"x" * 65536)
                attackers.append(s)
            answers: dict[socket.socket, bytes] = {}
            while len(answers) < 8:
                ready, _, _ = select.select([a for a in attackers if a not in answers], [], [],
                                            10)
                if not ready:
                    break
                for a in ready:
                    answers[a] = a.recv(65536)
            return list(answers.values())

        def close() -> None:
            for s in attackers:
                s.close()
        self.addCleanup(close)
        answers = await self.in_thread(attack)
        self.assertEqual([a[:12] for a in answers], [b"HTTP/1.1 429"] * 8)
        await until(lambda: self.origin.connections == 2, 10, "two attackers at the origin")
        self.assertEqual(self.factory.loads[ATTACKER][0], 2)
        for i in range(5):
            r = await self.request(get(f"/echo?visitor={i}"))
            self.assertEqual(r.status, 200)

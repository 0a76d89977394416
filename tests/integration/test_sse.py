"""
The live stream (L{veil.live.sse.LiveStream}) over real HTTP on loopback,
read by a real streaming client that parses the SSE wire format, with the
hub fed as the request log feeds it and the hydration read from a real
PostgreSQL through L{veil.store.logquery}.
"""

from __future__ import annotations

import json
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import attrs
import psycopg
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.server import Site

from tests.integration.test_edge import start_veil
from tests.integration.test_logquery import write
from tests.integration.test_migrate import empty_database
from tests.integration.test_proxy import get, talk
from tests.support.origin import client_threads, listen_origin
from tests.support.postgres import fresh_database, started_database
from tests.support.sse import SSEClient
from tests.support.waiting import until
from veil.errors import StoreUnavailable
from veil.live.hub import Hub, row_data
from veil.live.sse import LiveStream, StreamId
from veil.store.logquery import RequestLogQueries
from veil.store.logrows import LogRow

SITE = uuid.UUID("7a1e3c55-2b4d-4f6a-9c8e-0d1f2a3b4c5d")
OTHER = uuid.UUID("8b2f4d66-3c5e-4a7b-8d9f-1e2a3b4c5d6e")


@attrs.frozen
class Principal:
    """Who the stand-in sign-in says the caller is."""

    user: str
    session: str


def row(n: int, site: uuid.UUID = SITE, ts: datetime | None = None) -> LogRow:
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    return LogRow(ts=ts or base + timedelta(seconds=n), site_id=site, host="shop.test",
                  method="GET", path=f"/p/{n}", query=None, status=200, bytes_in=10,
                  bytes_out=20, duration_ms=1.5, origin_ms=1.0, client_ip="192.0.2.1",
                  request_id=f"req-{n}", user_agent="ua <script>", classification="benign")


def paths(rows: list[dict]) -> list[str]:
    return [r["path"] for r in rows]


class StreamCase(TestCase):
    """A hub, a database, the stream resource on a loopback port."""

    timeout = 60
    clock: Any = reactor
    options: ClassVar[dict[str, Any]] = {}

    def setUp(self) -> None:
        self.conninfo = fresh_database(self)
        self.db = started_database(self, self.conninfo, max_size=2)
        self.hub = Hub(reactor, linger=60.0)
        self.allowed = {("alice", SITE), ("alice", OTHER), ("bob", SITE), ("carol", SITE)}
        self.recent = RequestLogQueries(self.db).latest
        options = {"hydrate_rows": 4, "queue_limit": 50, "coalesce": 0.01, "max_per_user": 2}
        options.update(self.options)
        self.live = LiveStream(
            self.hub, lambda site, n: self.recent(site, n),
            lambda request: self.authenticate(request), lambda p, s: self.may_view(p, s),
            self.clock, user_key=lambda p: p.user,
            revocation_keys=lambda p: (("user", p.user), ("session", p.session)), **options)
        self.addCleanup(self.live.close_all)
        self.site = Site(self.live)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def authenticate(self, request: Any) -> Deferred[Principal | None]:
        header = request.getHeader(b"authorization")
        if not header or not header.startswith(b"Bearer "):
            return succeed(None)
        user, _, session = header[7:].decode().partition("/")
        return succeed(Principal(user, session or "s1"))

    def may_view(self, principal: Principal, site: uuid.UUID) -> Deferred[bool]:
        return succeed((principal.user, site) in self.allowed)

    def url(self, site: uuid.UUID | str = SITE, extra: str = "") -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/?site_id={site}{extra}"

    async def connect(self, user: str | None = "alice", site: uuid.UUID | str = SITE,
                      extra: str = "", headers: dict[str, str] | None = None,
                      **kwargs: Any) -> SSEClient:
        sent = dict(headers or {})
        if user is not None:
            sent["Authorization"] = f"Bearer {user}"
        client = SSEClient(self.url(site, extra), sent, **kwargs)
        await client.open()
        self.addCleanup(client.close)
        return client

    def publish(self, *rows: LogRow) -> None:
        for r in rows:
            self.hub.publish(r)


class HydrationTests(StreamCase):
    """A new stream starts with the site's most recent rows, joined to the live ones."""

    async def test_hydration_order(self) -> None:
        """
        The hydrate event holds the latest rows by time, oldest first: from
        the database, and from the hub's ring the rows not written yet; a row
        in both comes once; other sites' rows never.
        """
        rows = [row(n) for n in range(6)]
        write(self.conninfo, rows[:4] + [row(90, OTHER)])
        # The hub had rows 2 and 3 (written since), and 4 and 5 (still in the
        # log's buffer); another site's row too.
        self.publish(rows[2], rows[3], row(91, OTHER), rows[4], rows[5])
        client = await self.connect()
        self.assertEqual(client.status, 200)
        self.assertEqual(client.response.headers.getRawHeaders(b"content-type"),
                         [b"text/event-stream; charset=utf-8"])
        hydrate = await client.wait_for("hydrate")
        self.assertEqual(client.retry, 3000)
        data = hydrate.json()
        self.assertEqual(data["reason"], "start")
        self.assertEqual(paths(data["rows"]), ["/p/2", "/p/3", "/p/4", "/p/5"])
        self.assertEqual(data["rows"][3], row_data(rows[5]))
        parsed = StreamId.parse(hydrate.id)
        self.assertEqual((parsed.origin, parsed.cursor), (self.hub.origin, self.hub.cursor))

    async def test_rows_arriving_during_hydration(self) -> None:
        """
        Rows published while the database is read come after the hydrate
        event, once, even when the read already saw them.
        """
        gate: Deferred[None] = Deferred()
        real = self.recent

        async def slow(site: uuid.UUID, n: int) -> Any:
            await gate
            return await real(site, n)

        self.recent = lambda site, n: Deferred.fromCoroutine(slow(site, n))
        client = await self.connect()
        await until(lambda: self.live.streams == 1, what="the stream open")
        early, late = row(1), row(2)
        self.publish(early, late)
        write(self.conninfo, [early])      # written before the read: in both
        gate.callback(None)
        hydrate = await client.wait_for("hydrate")
        self.assertEqual(paths(hydrate.json()["rows"]), ["/p/1"])
        live = await client.wait_for("request")
        self.assertEqual(live.json()["path"], "/p/2")
        self.publish(row(3))
        self.assertEqual((await client.wait_for("request")).json()["path"], "/p/3")
        self.assertEqual(client.kinds(), ["hydrate", "request", "request"])

    async def test_hydration_failure_retried(self) -> None:
        """When the database cannot be read, the client gets an error event and a later hydrate."""
        clock = Clock()
        self.live.clock = clock
        failures = [StoreUnavailable("database away")]
        real = self.recent

        def flaky(site: uuid.UUID, n: int) -> Deferred[Any]:
            return fail(failures.pop()) if failures else real(site, n)

        self.recent = flaky
        client = await self.connect()
        clock.advance(0)
        error = await client.wait_for("error")
        self.assertEqual(error.json()["code"], "hydration_failed")
        clock.advance(2)
        clock.advance(0)
        await client.wait_for("hydrate")
        self.flushLoggedErrors()


class LiveTests(StreamCase):
    """After hydration, every request of the site as it happens."""

    async def started(self, **kwargs: Any) -> SSEClient:
        client = await self.connect(**kwargs)
        await client.wait_for("hydrate")
        return client

    async def test_live_delivery(self) -> None:
        """Each request of the site arrives once, in order, with increasing ids; others' not."""
        client = await self.started()
        self.publish(row(1), row(2, OTHER), row(3))
        await client.wait(3)
        events = client.events[1:]
        self.assertEqual([e.kind for e in events], ["request", "request"])
        self.assertEqual([e.json() for e in events], [row_data(row(1)), row_data(row(3))])
        ids = [StreamId.parse(e.id) for e in events]
        self.assertEqual(ids[0].cursor + 2, ids[1].cursor)
        self.assertEqual({i.origin for i in ids}, {self.hub.origin})

    async def test_late_duplicate(self) -> None:
        """
        A row the hydration read from the database that reaches the hub only
        afterwards (another process's, announced late) is not sent again.
        """
        late = row(1)
        write(self.conninfo, [late])
        client = await self.started()
        self.assertEqual(paths(client.events[0].json()["rows"]), ["/p/1"])
        self.publish(late, row(2))
        event = await client.wait_for("request")
        self.assertEqual(event.json()["path"], "/p/2")
        self.assertEqual(client.kinds(), ["hydrate", "request"])


class ResumeTests(StreamCase):
    """Reconnections continue exactly where they left off, or re-hydrate."""

    async def first(self) -> tuple[SSEClient, str]:
        client = await self.connect()
        await client.wait_for("hydrate")
        self.publish(row(1), row(2))
        await client.wait(3)
        await client.close()
        await until(lambda: self.live.streams == 0, what="the stream closed")
        return client, client.last_id

    async def test_last_event_id(self) -> None:
        """
        With Last-Event-ID, the rows published while away come first, once
        each, with no hydrate; then the live ones.
        """
        client, last = await self.first()
        self.assertEqual(last, client.events[-1].id)
        self.publish(row(3), row(4, OTHER), row(5))
        again = await self.connect(headers={"Last-Event-ID": last})
        await again.wait(2)
        self.publish(row(6))
        await again.wait(3)
        self.assertEqual(again.kinds(), ["request"] * 3)
        self.assertEqual([e.json()["path"] for e in again.events], ["/p/3", "/p/5", "/p/6"])
        self.assertEqual(self.live.metrics_resumed.value(), 1)

    async def test_after_parameter(self) -> None:
        """?after= does the same as Last-Event-ID, from the hydrate event's id too."""
        client, _ = await self.first()
        hydrate_id = client.events[0].id
        again = await self.connect(extra=f"&after={hydrate_id}")
        await again.wait(2)
        self.assertEqual([e.json()["path"] for e in again.events], ["/p/1", "/p/2"])

    async def test_late_duplicate_after_resume(self) -> None:
        """The snapshot's rows stay recognised across a resumption."""
        late = row(7)
        write(self.conninfo, [late])
        client, last = await self.first()
        self.assertIn("/p/7", paths(client.events[0].json()["rows"]))
        self.publish(late, row(8))
        again = await self.connect(headers={"Last-Event-ID": last})
        await again.wait(1)
        self.publish(row(9))
        await again.wait(2)
        self.assertEqual([e.json()["path"] for e in again.events], ["/p/8", "/p/9"])

    async def test_cannot_vouch(self) -> None:
        """
        An id of another process (or a forgotten snapshot, or garbage)
        gets a gap (reason resume) and a hydrate.
        """
        await self.first()
        for last in ("0123456789ab-1-5", f"{self.hub.origin}-999-1", "garbage"):
            again = await self.connect(headers={"Last-Event-ID": last})
            gap = await again.wait_for("gap")
            self.assertEqual(gap.json()["reason"], "resume")
            self.assertEqual(gap.id, "")
            hydrate = await again.wait_for("hydrate")
            self.assertEqual(hydrate.json()["reason"], "resume")
            self.assertEqual(paths(hydrate.json()["rows"]), ["/p/1", "/p/2"])
            await again.close()

    async def test_bad_after(self) -> None:
        """A malformed ?after= is a 400 naming the parameter."""
        client = await self.connect(extra="&after=nonsense")
        self.assertEqual(client.status, 400)
        self.assertEqual(client.error()["error"]["detail"]["fields"][0]["field"], "after")


class SlowClientTests(StreamCase):
    """A client that does not read costs bounded memory, and gets a gap."""

    options: ClassVar[dict[str, Any]] = {"queue_limit": 50, "max_items": 20}

    def setUp(self) -> None:
        super().setUp()
        # Small kernel buffers on the server's side too (accepted sockets
        # inherit the listening socket's), so that they fill quickly.
        with socket.fromfd(self.port.fileno(), socket.AF_INET, socket.SOCK_STREAM) as listening:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    async def test_gap_and_bounded_memory(self) -> None:
        """
        The stream stops taking rows when the connection backs up; the
        hub's bounded queue then drops them for a gap; once the client reads
        again it gets the gap (with the count lost) and a new hydrate, and
        far fewer bytes than were published.
        """
        client = await self.connect(receive_buffer=4096)
        await client.wait_for("hydrate")
        client.pause()
        [stream] = self.live._streams
        published = 0
        while not stream.paused:
            for n in range(20):
                self.publish(row(published + n))
            published += 20
            await until(lambda: not self.live._ready, what="a delivery round")
            self.assertLess(published, 20000, "the stream never paused")
        # Thousands more while the client reads nothing.
        for _ in range(10):
            self.publish(*(row(published + n) for n in range(500)))
            published += 500
            await self.db.query("t", "SELECT 1")
            self.assertTrue(stream.paused)
            self.assertLessEqual(len(stream.subscription), 50)
        self.assertGreater(stream.subscription.lost, 0)
        size = len(json.dumps(row_data(row(1))))
        client.resume()
        gap = await client.wait_for("gap", within=30)
        self.assertGreater(gap.json()["lost"], 0)
        self.assertEqual(gap.json()["reason"], "overflow")
        await client.wait_for("hydrate", within=30)
        self.assertLess(client.received, published * size / 4)

    async def test_stalled_client_disconnected(self) -> None:
        """A client that reads nothing for the stall time-out is disconnected."""
        clock = Clock()
        self.live.clock = clock
        self.live.stall_timeout = 30.0
        client = await self.connect(receive_buffer=4096)
        clock.advance(0)
        await client.wait_for("hydrate")
        client.pause()
        [stream] = self.live._streams
        n = 0
        while not stream.paused:
            self.publish(*(row(n + i) for i in range(20)))
            n += 20
            clock.advance(1)
            await self.db.query("t", "SELECT 1")   # let the reactor write
        clock.advance(29)
        self.assertEqual(self.live.streams, 1)
        clock.advance(1)
        self.assertEqual(self.live.streams, 0)
        client.resume()
        await client.closed
        self.assertEqual(self.live.metrics_stalled.value(), 1)
        self.flushLoggedErrors()


class KeepAliveTests(StreamCase):
    """Comments keep an idle stream open."""

    async def test_every_15_seconds(self) -> None:
        """A keep-alive comment every 15 s of the injected clock, none before."""
        clock = Clock()
        self.live.clock = clock
        client = await self.connect()
        clock.advance(0)
        await client.wait_for("hydrate")
        clock.advance(14.9)
        await self.db.query("t", "SELECT 1")
        self.assertEqual(client.comments, [])
        clock.advance(0.1)
        await until(lambda: client.comments == ["keep-alive"], what="a keep-alive")
        clock.advance(15)
        await until(lambda: client.comments == ["keep-alive"] * 2, what="a second keep-alive")
        await client.close()
        await until(lambda: self.live.streams == 0, what="the stream closed")
        self.assertEqual(clock.getDelayedCalls(), [])


class RefusalTests(StreamCase):
    """Who may not stream gets a clear JSON error, and no stream."""

    async def test_unauthenticated(self) -> None:
        """No principal: 401."""
        client = await self.connect(user=None)
        self.assertEqual(client.status, 401)
        self.assertEqual(client.error()["error"]["code"], "unauthenticated")

    async def test_not_allowed_is_not_found(self) -> None:
        """A site the caller may not see answers 404 in the API's error shape."""
        client = await self.connect(user="bob", site=OTHER)
        self.assertEqual(client.status, 404)
        body = client.error()
        self.assertEqual(set(body), {"error", "request_id"})
        self.assertEqual(body["error"], {"code": "not_found", "message": "There is no such site.",
                                         "detail": None})
        self.assertEqual(client.response.headers.getRawHeaders(b"x-request-id"),
                         [body["request_id"].encode()])
        self.assertEqual(self.live.streams, 0)

    async def test_bad_site_id(self) -> None:
        """A missing or malformed site id is a 400 naming it."""
        for site in ("", "not-a-uuid"):
            client = await self.connect(site=site)
            self.assertEqual(client.status, 400)
            self.assertEqual(client.error()["error"]["detail"]["fields"][0]["field"],
                             "site_id")

    async def test_post(self) -> None:
        """Only GET."""
        agent = Agent(reactor)
        response = await agent.request(b"POST", self.url().encode())
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET"])
        await readBody(response)

    async def test_authorization_failure(self) -> None:
        """The store being away while authorizing: 503; a bug: 500; neither opens a stream."""
        self.may_view = lambda p, s: fail(StoreUnavailable("away"))
        client = await self.connect()
        self.assertEqual((client.status, client.error()["error"]["code"]),
                         (503, "store_unavailable"))
        self.may_view = lambda p, s: fail(ZeroDivisionError())
        client = await self.connect()
        self.assertEqual((client.status, client.error()["error"]["code"]),
                         (500, "internal_error"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.live.streams, 0)


class CapTests(StreamCase):
    """Streams are capped per user and per process."""

    options: ClassVar[dict[str, Any]] = {"max_streams": 3, "max_per_user": 2}

    async def test_caps(self) -> None:
        """Past either cap: 429 with the scope; a closed stream frees its place."""
        alice = [await self.connect("alice"), await self.connect("alice")]
        third = await self.connect("alice")
        self.assertEqual(third.status, 429)
        error = third.error()["error"]
        self.assertEqual((error["code"], error["detail"]), ("too_many_streams",
                                                            {"limit": 2, "scope": "user"}))
        self.assertEqual(third.response.headers.getRawHeaders(b"retry-after"), [b"30"])
        await self.connect("bob")
        carol = await self.connect("carol")
        self.assertEqual((carol.status, carol.error()["error"]["detail"]["scope"]),
                         (429, "process"))
        await alice[0].close()
        await until(lambda: self.live.streams == 2, what="the closed stream forgotten")
        self.assertEqual((await self.connect("carol")).status, 200)
        self.assertEqual(self.live.streams_of("alice"), 1)


class RevocationTests(StreamCase):
    """close_streams_of ends a principal's streams at once, and no one else's."""

    async def test_close_streams_of(self) -> None:
        """By user and site, then by session: an end event, then the response ends."""
        one = await self.connect("alice/s1")
        two = await self.connect("alice/s1", site=OTHER)
        bob = await self.connect("bob/s9")
        for client in (one, two, bob):
            await client.wait_for("hydrate")
        self.assertEqual(self.live.close_streams_of(("user", "alice"), site_id=SITE), 1)
        end = await one.wait_for("end")
        self.assertEqual(end.json(), {"reason": "revoked"})
        await one.closed
        self.assertEqual(self.live.close_streams_of(("session", "s1")), 1)
        await two.closed
        self.publish(row(1))
        self.assertEqual((await bob.wait_for("request")).json()["path"], "/p/1")
        self.assertEqual(self.live.close_streams_of(("session", "s1")), 0)
        self.assertEqual(self.live.streams, 1)


class StreamIdTests(TestCase):
    """Event ids parse back, and nothing else does."""

    def test_parse(self) -> None:
        """Round trip; refusals."""
        self.assertEqual(StreamId.parse(StreamId("ab12", 3, 99).text()), StreamId("ab12", 3, 99))
        for text in ("", "a-1", "a-1-2-3", "a-x-2", "-1-2", "a-1-" + "9" * 19, "é-1-2"):
            self.assertIsNone(StreamId.parse(text), text)


class CrossProcessTests(TestCase):
    """Two Veil processes on one database: a request proxied by one is on the other's stream."""

    timeout = 90

    async def test_request_through_the_other_process(self) -> None:
        """
        The stream of process two hydrates from the database, then shows a
        request that process one proxied (its row reaches two through the
        request log's announcement and the peer feed), once.
        """
        conninfo = empty_database(self)
        one = await start_veil(self, conninfo)
        two = await start_veil(self, conninfo)
        _, upstream = listen_origin(self)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            owner = conn.execute("INSERT INTO users (email) VALUES ('o@example.com')"
                                 " RETURNING id").fetchone()[0]
            site = conn.execute(
                "INSERT INTO sites (owner_id, domain, upstream, status, allow_plain_http)"
                " VALUES (%s, 'live.test', %s, 'active', true) RETURNING id",
                (owner, upstream)).fetchone()[0]
        await one.edge.sites.reload()
        live = LiveStream(two.hub, RequestLogQueries(two.db).latest,
                          lambda request: succeed("owner"),
                          lambda principal, site_id: succeed(site_id == site), reactor)
        self.addCleanup(live.close_all)
        port = reactor.listenTCP(0, Site(live), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = SSEClient(f"http://127.0.0.1:{port.getHost().port}/?site_id={site}")
        await client.open()
        self.addCleanup(client.close)
        self.assertEqual((await client.wait_for("hydrate")).json()["rows"], [])
        threads = client_threads(self, "test-sse-cross")
        proxied = one.edge.ports["http"].getHost().port
        [response], _ = await deferToThreadPool(reactor, threads, talk, proxied,
                                                get("/through/one?x=1", host="live.test"))
        self.assertEqual(response.status, 200)
        event = await client.wait_for("request")
        data = event.json()
        self.assertEqual((data["site_id"], data["host"], data["path"], data["query"],
                          data["status"]), (str(site), "live.test", "/through/one", "x=1", 200))
        self.assertEqual(data["request_id"], response.header(b"x-request-id").decode())
        self.assertEqual(StreamId.parse(event.id).origin, two.hub.origin)
        # Once: the next event is the next request, not the same one again.
        await deferToThreadPool(reactor, threads, talk, proxied,
                                get("/second", host="live.test"))
        self.assertEqual((await client.wait_for("request")).json()["path"], "/second")
        self.assertEqual(client.kinds(), ["hydrate", "request", "request"])

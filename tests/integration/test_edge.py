"""
End-to-end tests of the TLS edge inside a running Veil: on-demand
certificates from the internal CA and from a real ACME CA (Pebble),
checked by real TLS clients.
"""

from __future__ import annotations

import socket
import ssl
import uuid
from pathlib import Path

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from tests.integration.test_migrate import empty_database
from tests.support.origin import OriginFactory
from tests.integration.test_requestlog import count
from tests.support.pebble import free_port, pebble_for
from tests.support.waiting import until
from veil.config import load
from veil.service import VeilService


class ClientThreads:
    """
    Blocking test clients run on a thread pool of their own, so that the
    reactor's pool stays free for what Veil itself does there.
    """

    def __init__(self, testcase: TestCase) -> None:
        self._pool = ThreadPool(minthreads=0, maxthreads=25, name="test-tls-clients")
        self._pool.start()
        testcase.addCleanup(self._pool.stop)

    def __call__(self, fn, *args):
        return deferToThreadPool(reactor, self._pool, fn, *args)


def add_site(conninfo: str, domain: str, status: str = "active",
             upstream: str = "http://127.0.0.1:9") -> uuid.UUID:
    """Insert a site (and an owner) straight into the store, as the dashboard will."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        owner = conn.execute(
            "INSERT INTO users (email) VALUES (%s) RETURNING id",
            (f"owner-{uuid.uuid4().hex[:8]}@example.com",)).fetchone()[0]
        return conn.execute(
            "INSERT INTO sites (owner_id, domain, upstream, status) VALUES (%s, %s, %s, %s)"
            " RETURNING id", (owner, domain, upstream, status)).fetchone()[0]


def site_status(conninfo: str, site_id: uuid.UUID) -> tuple[str, str | None]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT status, status_detail FROM sites WHERE id = %s",
                            (site_id,)).fetchone()


def tls_get(port: int, name: str, cafile: str) -> tuple[dict, str, bytes]:
    """
    A real TLS client (Python's ssl, verifying chain and host name): one
    request; returns the peer certificate, the ALPN protocol and the reply.
    """
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := tls.recv(65536):
                reply += chunk
            return tls.getpeercert(), tls.selected_alpn_protocol(), reply


def tls_refused(port: int, name: str, cafile: str) -> str:
    """Handshake expecting failure; returns the error text."""
    try:
        tls_get(port, name, cafile)
    except (ssl.SSLError, ConnectionError) as e:
        return str(e)
    raise AssertionError(f"handshake for {name} unexpectedly succeeded")


def san(cert: dict) -> list[str]:
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]


async def start_veil(testcase: TestCase, conninfo: str, **env: str) -> VeilService:
    environ = {"VEIL_DATABASE_URL": conninfo, "VEIL_DASHBOARD_PORT": "0",
               "VEIL_EDGE_PORT": "0", "VEIL_HTTP_PORT": "0",
               "VEIL_DATA_DIR": str(Path(testcase.mktemp()).resolve())}
    environ.update(env)
    service = VeilService(load(None, environ), reactor, lambda status: None)
    service.privilegedStartService()
    service.startService()
    testcase.addCleanup(service.stopService)
    phase = await service.readiness.settled()
    testcase.assertEqual(phase, "running", service.readiness.detail)
    return service


async def until_rows(conninfo: str, wanted: int, within: float = 10.0) -> None:
    """Wait (bounded) until request_log holds C{wanted} rows."""
    await until(lambda: count(conninfo) >= wanted, within, f"{wanted} request_log rows")


def metric(service: VeilService, name: str, **labels: str) -> float:
    return service.metrics.counter(name, "").value(**labels)


class InternalCATests(TestCase):
    """With the internal CA, a verified site's first handshake gets a certificate at once."""

    timeout = 60

    async def asyncSetUp(self) -> None:
        self.run = ClientThreads(self)
        self.conninfo = empty_database(self)
        self.veil = await start_veil(self, self.conninfo)
        self.port = self.veil.edge.ports["edge"].getHost().port
        self.cafile = str(self.veil.edge.ca.root_path)

    def setUp(self):
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(self.asyncSetUp())

    async def test_first_handshake_issues_then_memory(self) -> None:
        """
        The first handshake for an active site issues a certificate for that
        exact name (verified against the internal root), the site goes live,
        the key is stored encrypted, and the next handshake is served from memory.
        """
        origin = OriginFactory(reactor)
        listening = reactor.listenTCP(0, origin, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        site = add_site(self.conninfo, "shop.test",
                        upstream=f"http://127.0.0.1:{listening.getHost().port}")
        await self.veil.edge.sites.reload()
        cert, alpn, reply = await self.run(tls_get, self.port, "shop.test", self.cafile)
        self.assertEqual(san(cert), ["shop.test"])
        self.assertEqual(alpn, "http/1.1")
        # The origin's answer, through the proxy, with the request id echoed.
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply[:200])
        self.assertIn(b'"target": "/"', reply)
        self.assertIn(b"x-forwarded-proto", reply.lower())
        self.assertIn(b"x-request-id", reply.lower())
        await until_rows(self.conninfo, 1)
        with psycopg.connect(self.conninfo) as conn:
            logged = conn.execute(
                "SELECT site_id, host, method, path, status FROM request_log").fetchall()
        self.assertEqual(logged, [(site, "shop.test", "GET", "/", 200)])
        self.assertEqual(site_status(self.conninfo, site)[0], "live")
        with psycopg.connect(self.conninfo) as conn:
            name, sealed, chain = conn.execute(
                "SELECT name, key_encrypted, chain_pem FROM certificates").fetchone()
        self.assertEqual(name, "shop.test")
        self.assertNotIn(b"PRIVATE KEY", bytes(sealed))
        self.assertTrue(chain.startswith("-----BEGIN CERTIFICATE-----"))

        await self.run(tls_get, self.port, "shop.test", self.cafile)
        self.assertEqual(metric(self.veil, "veil_certificate_lookups_total", source="memory"), 1)
        self.assertEqual(metric(self.veil, "veil_certificates_issued_total", kind="new"), 1)

    async def test_unknown_and_unverified_names_refused(self) -> None:
        """Names of no site, or of a site whose DNS is not verified, get an alert and no certificate."""
        add_site(self.conninfo, "pending.test", status="pending")
        await self.veil.edge.sites.reload()
        for name in ("nobody.test", "pending.test"):
            error = await self.run(tls_refused, self.port, name, self.cafile)
            self.assertIn("UNRECOGNIZED_NAME", error.upper().replace(" ", "_"))
        self.assertEqual(metric(self.veil, "veil_edge_rejected_total", reason="name_refused"), 2)
        with psycopg.connect(self.conninfo) as conn:
            self.assertEqual(conn.execute("SELECT count(*) FROM certificates").fetchone(), (0,))

    async def test_stored_certificate_survives_restart(self) -> None:
        """A second Veil on the same store serves the stored certificate without issuing."""
        add_site(self.conninfo, "keep.test")
        await self.veil.edge.sites.reload()
        first, _, _ = await self.run(tls_get, self.port, "keep.test", self.cafile)
        other = await start_veil(self, self.conninfo,
                                 VEIL_DATA_DIR=str(self.veil.config.data_dir))
        port = other.edge.ports["edge"].getHost().port
        second, _, _ = await self.run(tls_get, port, "keep.test", self.cafile)
        self.assertEqual(first["serialNumber"], second["serialNumber"])
        self.assertEqual(metric(other, "veil_certificates_issued_total", kind="new"), 0)
        self.assertEqual(metric(other, "veil_certificate_lookups_total", source="store"), 1)

    async def test_renewal_reaches_other_process(self) -> None:
        """
        A certificate renewed by one Veil replaces the one another Veil on the
        same store holds in memory (NOTIFY veil_certificates), and the old one
        is superseded.
        """
        add_site(self.conninfo, "swap.test")
        await self.veil.edge.sites.reload()
        first, _, _ = await self.run(tls_get, self.port, "swap.test", self.cafile)
        other = await start_veil(self, self.conninfo,
                                 VEIL_DATA_DIR=str(self.veil.config.data_dir))
        other_port = other.edge.ports["edge"].getHost().port
        held, _, _ = await self.run(tls_get, other_port, "swap.test", self.cafile)
        self.assertEqual(held["serialNumber"], first["serialNumber"])
        # Only the first process renews, so the second can only learn of it by NOTIFY.
        await next(w for w in other.workers if w.name == "certificate-renewal").stopService()

        # The CA's renewal information says: renew now.
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute("UPDATE certificates SET renew_after = now() - interval '1 second'")
        worker = next(w for w in self.veil.workers if w.name == "certificate-renewal")
        worker.run_now()
        deadline = reactor.seconds() + 15
        while True:
            now_served, _, _ = await self.run(tls_get, other_port, "swap.test", self.cafile)
            if now_served["serialNumber"] != first["serialNumber"]:
                break
            self.assertLess(reactor.seconds(), deadline, "the renewed certificate never arrived")
            await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(metric(self.veil, "veil_certificates_issued_total", kind="renewal"), 1)
        self.assertEqual(metric(other, "veil_certificates_issued_total", kind="renewal"), 0)
        with psycopg.connect(self.conninfo) as conn:
            statuses = sorted(r[0] for r in conn.execute("SELECT status FROM certificates"))
        self.assertEqual(statuses, ["superseded", "valid"])

    async def test_ip_decisions_enforced(self) -> None:
        """
        A ban on the client's address answers 403 with the request id, a
        throttle 429 with Retry-After, both logged as blocked; removing the
        decision lets requests through again.
        """
        origin = OriginFactory(reactor)
        listening = reactor.listenTCP(0, origin, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        add_site(self.conninfo, "guarded.test",
                 upstream=f"http://127.0.0.1:{listening.getHost().port}")
        await self.veil.edge.sites.reload()
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            ban = conn.execute("INSERT INTO decisions (target, type, reason, source) VALUES"
                               " ('127.0.0.0/8', 'ban', 'test', 'manual') RETURNING id"
                               ).fetchone()[0]
        await self.veil.edge.decisions.reload()
        _, _, reply = await self.run(tls_get, self.port, "guarded.test", self.cafile)
        self.assertTrue(reply.startswith(b"HTTP/1.1 403"), reply[:100])
        request_id = [line.split(b":", 1)[1].strip() for line in reply.split(b"\r\n")
                      if line.lower().startswith(b"x-request-id:")][0]
        self.assertIn(request_id, reply.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(origin.connections, 0)

        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute("UPDATE decisions SET type = 'throttle' WHERE id = %s", (ban,))
        await self.veil.edge.decisions.reload()
        _, _, reply = await self.run(tls_get, self.port, "guarded.test", self.cafile)
        self.assertTrue(reply.startswith(b"HTTP/1.1 429"), reply[:100])
        self.assertIn(b"retry-after:", reply.lower())

        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute("DELETE FROM decisions WHERE id = %s", (ban,))
        await self.veil.edge.decisions.reload()
        _, _, reply = await self.run(tls_get, self.port, "guarded.test", self.cafile)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply[:100])

        await until_rows(self.conninfo, 3)
        with psycopg.connect(self.conninfo) as conn:
            logged = conn.execute("SELECT status, blocked FROM request_log ORDER BY id").fetchall()
        self.assertEqual(logged, [(403, True), (429, True), (200, False)])

    async def test_concurrent_handshakes_one_issuance(self) -> None:
        """Twenty handshakes for one new name at once share a single issuance."""
        add_site(self.conninfo, "busy.test")
        await self.veil.edge.sites.reload()
        results = await DeferredList(
            [self.run(tls_get, self.port, "busy.test", self.cafile) for _ in range(20)],
            consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True] * 20)
        self.assertEqual(len({r[0]["serialNumber"] for _, r in results}), 1)
        self.assertEqual(metric(self.veil, "veil_certificates_issued_total", kind="new"), 1)

    async def test_malformed_hellos(self) -> None:
        """Plain HTTP and garbage on the TLS port are closed cleanly; Veil keeps serving."""
        add_site(self.conninfo, "ok.test")
        await self.veil.edge.sites.reload()

        def raw(data: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=15) as s:
                s.sendall(data)
                out = b""
                while chunk := s.recv(4096):
                    out += chunk
                return out

        self.assertIn(b"400", await self.run(raw, b"GET / HTTP/1.1\r\nHost: ok.test\r\n\r\n"))
        self.assertEqual(await self.run(raw, b"\x00\xff" * 100), b"")
        cert, _, _ = await self.run(tls_get, self.port, "ok.test", self.cafile)
        self.assertEqual(san(cert), ["ok.test"])
        self.assertEqual(metric(self.veil, "veil_edge_rejected_total", reason="plain_http"), 1)
        self.assertEqual(metric(self.veil, "veil_edge_rejected_total", reason="not_tls"), 1)


class AcmeTests(TestCase):
    """With an ACME CA (Pebble), certificates are ordered at the first handshake."""

    timeout = 120

    async def start(self, challenges: str = "tls-alpn-01,http-01", env: dict | None = None,
                    **pebble: object) -> None:
        self.run = ClientThreads(self)
        self.edge_port, self.http_port = free_port(), free_port()
        self.pebble = await pebble_for(self, http_port=self.http_port, tls_port=self.edge_port,
                                       **pebble)
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        wfe = workdir / "wfe-ca.pem"
        wfe.write_bytes(self.pebble.wfe_ca_pem)
        self.roots = workdir / "roots.pem"
        self.roots.write_bytes(self.pebble.roots_pem)
        self.conninfo = empty_database(self)
        self.veil = await start_veil(
            self, self.conninfo, VEIL_EDGE_PORT=str(self.edge_port),
            VEIL_HTTP_PORT=str(self.http_port), VEIL_TLS_MODE="acme",
            VEIL_ACME_DIRECTORY_URL=self.pebble.directory_url, VEIL_ACME_AGREE_TOS="true",
            VEIL_ACME_EMAIL="ops@example.com", VEIL_ACME_CA_BUNDLE=str(wfe),
            VEIL_ACME_CHALLENGES=challenges, **(env or {}))

    def orders(self) -> int:
        """How many orders Pebble received (from its own log)."""
        return self.pebble.full_log().count("POST /order-plz")

    async def issue_and_check(self, name: str) -> dict:
        site = add_site(self.conninfo, name)
        await self.veil.edge.sites.reload()
        cert, alpn, _ = await self.run(tls_get, self.edge_port, name, str(self.roots))
        self.assertEqual(san(cert), [name])
        self.assertEqual(alpn, "http/1.1")
        self.assertEqual(site_status(self.conninfo, site)[0], "live")
        return cert

    async def test_tls_alpn_01(self) -> None:
        """A first handshake is answered with a Pebble certificate validated by tls-alpn-01."""
        await self.start(challenges="tls-alpn-01")
        await self.issue_and_check("alpn.test")
        self.assertEqual(self.orders(), 1)

    async def test_http_01(self) -> None:
        """A first handshake is answered with a Pebble certificate validated by http-01 on the plain port."""
        await self.start(challenges="http-01")
        await self.issue_and_check("plain.test")
        self.assertEqual(self.orders(), 1)

    async def test_refused_name_causes_no_ca_traffic(self) -> None:
        """An unknown name gets an alert and Pebble sees no order."""
        await self.start()
        error = await self.run(tls_refused, self.edge_port, "stranger.test", str(self.roots))
        self.assertIn("UNRECOGNIZED_NAME", error.upper().replace(" ", "_"))
        self.assertEqual(self.orders(), 0)

    async def test_twenty_new_names_at_once(self) -> None:
        """Twenty different new names handshaking at the same time all get their certificates."""
        await self.start()
        names = [f"n{i}.test" for i in range(20)]
        for name in names:
            add_site(self.conninfo, name)
        await self.veil.edge.sites.reload()
        results = await DeferredList(
            [self.run(tls_get, self.edge_port, n, str(self.roots)) for n in names],
            consumeErrors=True)
        failures = [r for ok, r in results if not ok]
        self.assertEqual(failures, [])
        self.assertEqual(sorted(san(r[0])[0] for _, r in results), sorted(names))
        self.assertEqual(self.orders(), 20)

    async def test_one_name_twenty_times_one_order(self) -> None:
        """Twenty simultaneous handshakes for one new name make exactly one order."""
        await self.start()
        add_site(self.conninfo, "once.test")
        await self.veil.edge.sites.reload()
        results = await DeferredList(
            [self.run(tls_get, self.edge_port, "once.test", str(self.roots))
             for _ in range(20)], consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True] * 20)
        self.assertEqual(self.orders(), 1)

    async def test_bad_nonce_recovery(self) -> None:
        """With Pebble rejecting half of all nonces, issuance still succeeds."""
        await self.start(nonce_reject=50)
        await self.issue_and_check("nonce.test")

    async def test_ca_down_stored_certificates_still_served(self) -> None:
        """
        With the CA gone, a stored certificate is still served, and a new
        name fails visibly (site status error, with the reason) without a crash.
        """
        await self.start()
        first = await self.issue_and_check("before.test")
        await self.pebble.stop()
        again, _, _ = await self.run(tls_get, self.edge_port, "before.test", str(self.roots))
        self.assertEqual(again["serialNumber"], first["serialNumber"])
        site = add_site(self.conninfo, "after.test")
        await self.veil.edge.sites.reload()
        await self.run(tls_refused, self.edge_port, "after.test", str(self.roots))
        status, detail = site_status(self.conninfo, site)
        self.assertEqual(status, "error")
        self.assertTrue(detail)
        self.assertEqual(self.veil.readiness.phase, "running")

    async def test_renewal_of_short_lived_certificate(self) -> None:
        """
        A certificate past two thirds of its short life is renewed by the
        renewal worker, and the new one is served.
        """
        # Renewal is due after a tenth of a 30 s lifetime.
        await self.start(validity=30, env={"VEIL_TLS_RENEW_FRACTION": "0.1"})
        first = await self.issue_and_check("renew.test")
        worker = next(w for w in self.veil.workers if w.name == "certificate-renewal")
        deadline = reactor.seconds() + 20
        while metric(self.veil, "veil_certificates_issued_total", kind="renewal") == 0:
            self.assertLess(reactor.seconds(), deadline, worker.last_error)
            worker.run_now()
            await deferLater(reactor, 0.5, lambda: None)
        self.assertIsNone(worker.last_error)
        second, _, _ = await self.run(tls_get, self.edge_port, "renew.test", str(self.roots))
        self.assertNotEqual(first["serialNumber"], second["serialNumber"])
        self.assertEqual(metric(self.veil, "veil_certificates_issued_total", kind="renewal"), 1)


class RsaKeyTests(TestCase):
    """tls.key_type = rsa-2048 gives RSA certificates, generated off the reactor thread."""

    timeout = 60

    async def test_rsa_certificate(self) -> None:
        """The first handshake gets an RSA-2048 certificate for the name."""
        self.run = ClientThreads(self)
        conninfo = empty_database(self)
        veil = await start_veil(self, conninfo, VEIL_TLS_KEY_TYPE="rsa-2048")
        add_site(conninfo, "rsa.test")
        await veil.edge.sites.reload()
        port = veil.edge.ports["edge"].getHost().port
        cert, _, _ = await self.run(tls_get, port, "rsa.test", str(veil.edge.ca.root_path))
        self.assertEqual(san(cert), ["rsa.test"])
        with psycopg.connect(conninfo) as conn:
            (key_type,) = conn.execute("SELECT key_type FROM certificates").fetchone()
        self.assertEqual(key_type, "rsa-2048")
        from veil.edge.keys import certificate_info

        with psycopg.connect(conninfo) as conn:
            (chain,) = conn.execute("SELECT chain_pem FROM certificates").fetchone()
        self.assertEqual(certificate_info(chain.encode()).key_type, "rsa-2048")

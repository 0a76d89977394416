"""
HTTPS origins: a real TLS origin on loopback with a certificate from a test
CA.  A site whose C{origin_tls_verify} is true needs a certificate for its
own name from a trusted root; with verification off anything goes.
"""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet import reactor
from twisted.internet.ssl import CertificateOptions
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from tests.integration.test_edge import ClientThreads, start_veil, tls_get
from tests.integration.test_migrate import empty_database
from tests.integration.test_proxy import get, talk
from tests.support.origin import OriginFactory
from veil.metrics import Registry
from veil.proxy.server import ProxyFactory
from veil.proxy.upstream import OriginPool, SystemAndExtraRoots
from veil.store.sites import Site


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("Veil test origin CA"))
            .issuer_name(_name("Veil test origin CA")).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_leaf(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], *names: str
              ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(names[0]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def listen_tls_origin(testcase: TestCase, leaf: tuple) -> tuple[OriginFactory, int, list]:
    """A test origin speaking TLS with C{leaf}; returns it, its port and the SNI names seen."""
    key, cert = leaf
    options = CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(cert))
    names: list[bytes | None] = []
    options.getContext().set_tlsext_servername_callback(
        lambda conn: names.append(conn.get_servername()))
    origin = OriginFactory(reactor)
    port = reactor.listenSSL(0, origin, options, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    testcase.addCleanup(origin.cancel)
    return origin, port.getHost().port, names


def site(domain: str, upstream: str, verify: bool) -> Site:
    return Site(uuid.uuid4(), domain, upstream, "live", "block", 1, False, False, verify)


class HttpsOriginTests(TestCase):
    """The proxy verifies an https origin's certificate for the site's name, unless told not to."""

    timeout = 30

    def setUp(self) -> None:
        self.threads = ThreadPool(minthreads=0, maxthreads=4, name="test-origin-tls")
        self.threads.start()
        self.addCleanup(self.threads.stop)
        self.ca = make_ca()
        self.origin, oport, self.sni = listen_tls_origin(self, make_leaf(self.ca, "tls.test"))
        upstream = f"https://127.0.0.1:{oport}"
        self.sites = {s.domain: s for s in (
            site("tls.test", upstream, True),
            site("wrong.test", upstream, True),
            site("noverify.test", upstream, False),
        )}
        self.rows: list = []

    def proxy(self, roots: list[bytes] | None) -> int:
        pool = OriginPool(reactor, connect_timeout=2.0, response_timeout=5.0,
                          trust_root=None if roots is None else SystemAndExtraRoots(roots))
        self.addCleanup(pool.close)
        factory = ProxyFactory(reactor, self.sites.get, pool, self.rows.append, Registry(),
                               scheme="http")
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def get(self, port: int, host: str) -> tuple[int, bytes]:
        [r], _ = await deferToThreadPool(reactor, self.threads, talk, port, get("/echo", host))
        return r.status, r.body

    async def test_verified(self) -> None:
        """With the test CA trusted, a certificate for the site's name passes; SNI is the site's name."""
        port = self.proxy([pem(self.ca[1])])
        status, body = await self.get(port, "tls.test")
        self.assertEqual(status, 200, body)
        self.assertIn(b'"target": "/echo"', body)
        self.assertEqual(self.sni, [b"tls.test"])

    async def test_wrong_name(self) -> None:
        """A trusted certificate for another name is refused: 502 and the origin sees no request."""
        port = self.proxy([pem(self.ca[1])])
        status, body = await self.get(port, "wrong.test")
        self.assertEqual(status, 502)
        self.assertIn(b"Bad gateway", body)
        self.assertEqual(self.sni, [b"wrong.test"])
        self.assertEqual(self.origin.requests, [])

    async def test_untrusted(self) -> None:
        """Without the test CA among the trusted roots, the right name is not enough: 502."""
        port = self.proxy(None)
        status, _ = await self.get(port, "tls.test")
        self.assertEqual(status, 502)
        self.assertEqual(self.origin.requests, [])
        self.assertEqual([row.status for row in self.rows], [502])

    async def test_verification_off(self) -> None:
        """With origin_tls_verify false, an untrusted certificate for another name is accepted."""
        port = self.proxy(None)
        status, body = await self.get(port, "noverify.test")
        self.assertEqual(status, 200, body)
        self.assertEqual(self.sni, [b"noverify.test"])


class OriginCaBundleTests(TestCase):
    """edge.origin_ca_bundle adds trusted roots for https origins in a running Veil."""

    timeout = 60

    async def test_bundle(self) -> None:
        """
        A site whose https origin has a certificate from the configured
        bundle's CA is proxied through the TLS edge; another site on the
        same origin, whose name the certificate lacks, gets a 502.
        """
        ca = make_ca()
        _, oport, _ = listen_tls_origin(self, make_leaf(ca, "secure.test"))
        bundle = Path(self.mktemp())
        bundle.write_bytes(pem(ca[1]))
        conninfo = empty_database(self)
        veil = await start_veil(self, conninfo, VEIL_EDGE_ORIGIN_CA_BUNDLE=str(bundle))
        with psycopg.connect(conninfo, autocommit=True) as conn:
            owner = conn.execute("INSERT INTO users (email) VALUES ('o@example.com')"
                                 " RETURNING id").fetchone()[0]
            for domain in ("secure.test", "other.test"):
                conn.execute("INSERT INTO sites (owner_id, domain, upstream, status)"
                             " VALUES (%s, %s, %s, 'active')",
                             (owner, domain, f"https://127.0.0.1:{oport}"))
        await veil.edge.sites.reload()
        run = ClientThreads(self)
        port = veil.edge.ports["edge"].getHost().port
        cafile = str(veil.edge.ca.root_path)
        _, _, reply = await run(tls_get, port, "secure.test", cafile)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply[:300])
        self.assertIn(b"x-forwarded-proto", reply.lower())
        _, _, reply = await run(tls_get, port, "other.test", cafile)
        self.assertTrue(reply.startswith(b"HTTP/1.1 502"), reply[:300])


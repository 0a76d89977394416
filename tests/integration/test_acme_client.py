"""
Tests for L{veil.acme.client.AcmeClient} against a real Pebble.

Each test starts its own Pebble (see L{tests.support.pebble}) after its
challenge servers are listening on 127.0.0.1 port 0, and points Pebble's
C{httpPort} / C{tlsPort} at them. Pebble's fake DNS resolves every name to
127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import josepy
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.support.pebble import Pebble, free_port, pebble_for
from veil.acme.challenges import (
    ACME_IDENTIFIER_OID,
    HTTP01_PATH_PREFIX,
    MemoryResponder,
    key_authorization,
    tls_alpn01_certificate,
)
from veil.edge.contexts import ACME_TLS_1, select_only, build_challenge_tls
from veil.acme.interfaces import IChallengeResponder
from veil.acme.client import AcmeClient, AcmeProblem, AcmeUnavailable, IssuedCertificate
from veil.errors import IssuanceFailed

# A whole test (Pebble start, issuance, stop) takes about a second; this bounds hangs.
TIMEOUT = 60


def account_key() -> josepy.JWK:
    return josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


def certificate_key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


class TrackingFactory(WrappingFactory):
    """Wraps a server factory and can close every connection it accepted."""

    def __init__(self, wrapped: Factory) -> None:
        super().__init__(wrapped)
        self._gone: dict[Any, Deferred[None]] = {}
        self.connected: Deferred[None] = Deferred()

    def registerProtocol(self, p: Any) -> None:
        super().registerProtocol(p)
        self._gone[p] = Deferred()
        if not self.connected.called:
            self.connected.callback(None)

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        d = self._gone.pop(p, None)
        if d is not None:
            d.callback(None)

    def close_all(self) -> Deferred[Any]:
        waiting = list(self._gone.values())
        for p in list(self.protocols):
            p.transport.abortConnection()
        return DeferredList(waiting)


def listen(testcase: TestCase, factory: Factory) -> tuple[int, TrackingFactory]:
    """Listen on 127.0.0.1 port 0; the cleanup closes the port and every connection."""
    tracking = TrackingFactory(factory)
    port = reactor.listenTCP(0, tracking, interface="127.0.0.1")

    async def close() -> None:
        await port.stopListening()
        await tracking.close_all()

    testcase.addCleanup(lambda: Deferred.fromCoroutine(close()))
    return port.getHost().port, tracking


class ChallengeResource(Resource):
    """Answers C{GET /.well-known/acme-challenge/<token>} from a L{MemoryResponder}."""

    isLeaf = True

    def __init__(self, responder: MemoryResponder, wrong: bool = False) -> None:
        super().__init__()
        self._responder = responder
        self._wrong = wrong
        self.requests: list[str] = []

    def render_GET(self, request: Request) -> bytes:
        path = request.path.decode("ascii", "replace")
        self.requests.append(path)
        prefix = HTTP01_PATH_PREFIX
        answer = self._responder.http01(path[len(prefix):]) if path.startswith(prefix) else None
        if answer is None:
            request.setResponseCode(404)
            return b"not found"
        request.setHeader(b"Content-Type", b"application/octet-stream")
        return b"not-the-key-authorization" if self._wrong else answer.encode("ascii")


def serve_http01(testcase: TestCase, responder: MemoryResponder,
                 wrong: bool = False) -> tuple[int, ChallengeResource]:
    resource = ChallengeResource(responder, wrong)
    port, _ = listen(testcase, Site(resource))
    return port, resource


@implementer(IHandshakeListener)
class _CloseAfterHandshake(Protocol):
    """The application side of an acme-tls/1 connection: close once the handshake is done."""

    def handshakeCompleted(self) -> None:
        self.transport.loseConnection()



@implementer(IOpenSSLServerConnectionCreator)
class AlpnChallengeCreator:
    """
    TLS connections that present the RFC 8737 certificate for the SNI name.

    The default context only selects ALPN C{acme-tls/1}; its servername callback
    swaps in a context with the challenge certificate for the requested name.
    """

    def __init__(self, responder: MemoryResponder) -> None:
        self._responder = responder
        self.handshakes: list[tuple[str, bytes | None]] = []
        self._default = SSL.Context(SSL.TLS_SERVER_METHOD)
        self._default.set_min_proto_version(SSL.TLS1_2_VERSION)
        self._default.set_alpn_select_callback(select_only(ACME_TLS_1))
        self._default.set_tlsext_servername_callback(self._servername)

    def _servername(self, conn: SSL.Connection) -> None:
        raw = conn.get_servername()
        name = raw.decode("ascii") if raw else ""
        key_authz = self._responder.tls_alpn01(name)
        self.handshakes.append((name, None))
        if key_authz is None:
            return
        cert_pem, key_pem = tls_alpn01_certificate(name, key_authz, reactor)
        conn.set_context(build_challenge_tls(cert_pem, key_pem).context)

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        return SSL.Connection(self._default, None)


def serve_tls_alpn01(testcase: TestCase, responder: MemoryResponder
                     ) -> tuple[int, AlpnChallengeCreator]:
    creator = AlpnChallengeCreator(responder)
    factory = TLSMemoryBIOFactory(creator, False, Factory.forProtocol(_CloseAfterHandshake))
    port, _ = listen(testcase, factory)
    return port, creator


def assert_issued_for(testcase: TestCase, issued: IssuedCertificate, pebble: Pebble,
                      key_pem: bytes, names: list[str]) -> None:
    """The chain is for our key, names exactly C{names}, and verifies to Pebble's root."""
    chain = x509.load_pem_x509_certificates(issued.chain_pem)
    leaf = chain[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    testcase.assertEqual(sorted(san.get_values_for_type(x509.DNSName)), sorted(names))
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    key = serialization.load_pem_private_key(key_pem, password=None)
    testcase.assertEqual(leaf.public_key().public_bytes(*spki),
                         key.public_key().public_bytes(*spki))
    store = Store(x509.load_pem_x509_certificates(pebble.root_pem))
    now = datetime.now(timezone.utc)
    for name in names:
        verifier = PolicyBuilder().store(store).time(now).build_server_verifier(
            x509.DNSName(name))
        verified = verifier.verify(leaf, chain[1:])
        testcase.assertEqual(verified[-1].subject,
                             x509.load_pem_x509_certificate(pebble.root_pem).subject)
    testcase.assertEqual(issued.not_before, leaf.not_valid_before_utc)
    testcase.assertEqual(issued.not_after, leaf.not_valid_after_utc)


async def registered(pebble: Pebble, **options: Any) -> AcmeClient:
    client = AcmeClient(pebble.http, pebble.directory_url, account_key(), reactor, **options)
    await client.register("ops@example.com", agree_tos=True)
    return client


class IssuanceTests(TestCase):
    """AcmeClient obtains certificates from Pebble through http-01 and tls-alpn-01."""

    timeout = TIMEOUT

    async def test_http01(self) -> None:
        """
        With http-01, the answer is served from the responder, the chain's leaf
        names exactly the requested name, carries our key, verifies to Pebble's
        root, and the answer is withdrawn afterwards.
        """
        responder = MemoryResponder(supported_types=("http-01",))
        http_port, resource = serve_http01(self, responder)
        pebble = await pebble_for(self, http_port=http_port, validity=3600)
        client = await registered(pebble)
        key_pem = certificate_key_pem()

        issued = await client.issue(["www.example.test"], key_pem, responder)

        assert_issued_for(self, issued, pebble, key_pem, ["www.example.test"])
        self.assertEqual(issued.names, ("www.example.test",))
        self.assertTrue(issued.order_url.startswith("https://127.0.0.1:"))
        lifetime = (issued.not_after - issued.not_before).total_seconds()
        self.assertTrue(3590 <= lifetime <= 3600, lifetime)
        self.assertTrue(any(p.startswith(HTTP01_PATH_PREFIX) for p in resource.requests))
        self.assertEqual([(op, c.type) for op, c in responder.history],
                         [("add", "http-01"), ("remove", "http-01")])
        self.assertEqual(responder.active, [])

    async def test_tls_alpn01(self) -> None:
        """
        With tls-alpn-01 preferred, Pebble validates the RFC 8737 certificate
        served for the SNI name over ALPN acme-tls/1, and the chain is issued.
        """
        responder = MemoryResponder()
        tls_port, creator = serve_tls_alpn01(self, responder)
        pebble = await pebble_for(self, tls_port=tls_port)
        client = await registered(pebble)
        key_pem = certificate_key_pem()

        issued = await client.issue(["alpn.example.test"], key_pem, responder,
                                    preferred=("tls-alpn-01", "http-01"))

        assert_issued_for(self, issued, pebble, key_pem, ["alpn.example.test"])
        self.assertIn("alpn.example.test", [name for name, _ in creator.handshakes])
        self.assertEqual([(op, c.type) for op, c in responder.history],
                         [("add", "tls-alpn-01"), ("remove", "tls-alpn-01")])

    async def test_several_names(self) -> None:
        """
        An order for two names answers one challenge per authorization and
        yields one certificate naming both.
        """
        responder = MemoryResponder(supported_types=("http-01",))
        http_port, _ = serve_http01(self, responder)
        pebble = await pebble_for(self, http_port=http_port)
        client = await registered(pebble)
        key_pem = certificate_key_pem()

        issued = await client.issue(["a.example.test", "B.example.test."], key_pem, responder)

        assert_issued_for(self, issued, pebble, key_pem, ["a.example.test", "b.example.test"])
        self.assertEqual(sorted(c.name for op, c in responder.history if op == "add"),
                         ["a.example.test", "b.example.test"])
        self.assertEqual(responder.active, [])

    async def test_issue_looks_up_account(self) -> None:
        """
        A client that only has the account key (no account URL) finds the
        existing account by key and issues with it.
        """
        responder = MemoryResponder(supported_types=("http-01",))
        http_port, _ = serve_http01(self, responder)
        pebble = await pebble_for(self, http_port=http_port)
        first = await registered(pebble)
        again = AcmeClient(pebble.http, pebble.directory_url, first.account_key, reactor)

        issued = await again.issue(["lookup.example.test"], certificate_key_pem(), responder)

        self.assertEqual(again.account_url, first.account_url)
        self.assertEqual(issued.names, ("lookup.example.test",))


class AccountTests(TestCase):
    """Accounts are created once per key and found again; EAB is supported."""

    timeout = TIMEOUT

    async def test_register_twice(self) -> None:
        """Registering twice with the same key returns the same account URL."""
        pebble = await pebble_for(self)
        key = account_key()
        one = AcmeClient(pebble.http, pebble.directory_url, key, reactor)
        two = AcmeClient(pebble.http, pebble.directory_url, key, reactor)

        first = await one.register("ops@example.com", agree_tos=True)
        second = await two.register("ops@example.com", agree_tos=True)

        self.assertEqual(first, second)
        self.assertTrue(first.startswith("https://127.0.0.1:"))
        self.assertEqual(two.account_url, first)

    async def test_find_account(self) -> None:
        """
        find_account returns the URL of the key's existing account, and fails
        with the CA's accountDoesNotExist problem for an unknown key.
        """
        pebble = await pebble_for(self)
        client = await registered(pebble)
        other = AcmeClient(pebble.http, pebble.directory_url, client.account_key, reactor)
        self.assertEqual(await other.find_account(), client.account_url)

        stranger = AcmeClient(pebble.http, pebble.directory_url, account_key(), reactor)
        with self.assertRaises(AcmeProblem) as caught:
            await stranger.find_account()
        self.assertEqual(caught.exception.code, "accountDoesNotExist")
        self.assertIsNone(stranger.account_url)

    async def test_external_account_binding(self) -> None:
        """
        A CA that requires external account binding accepts a correct EAB,
        rejects a wrong HMAC key with its problem detail, and without EAB the
        client refuses up front with a message naming external account binding.
        """
        hmac_key = b"0123456789abcdef0123456789abcdef"
        pebble = await pebble_for(
            self, eab_keys={"kid-1": josepy.b64encode(hmac_key).decode("ascii")})

        client = AcmeClient(pebble.http, pebble.directory_url, account_key(), reactor)
        url = await client.register("ops@example.com", True, eab=("kid-1", hmac_key))
        self.assertTrue(url.startswith("https://127.0.0.1:"))

        wrong = AcmeClient(pebble.http, pebble.directory_url, account_key(), reactor)
        with self.assertRaises(AcmeProblem) as caught:
            await wrong.register("ops@example.com", True, eab=("kid-1", b"x" * 32))
        self.assertEqual(caught.exception.code, "unauthorized")
        self.assertTrue(caught.exception.detail)
        self.assertIn(caught.exception.detail, str(caught.exception))

        missing = AcmeClient(pebble.http, pebble.directory_url, account_key(), reactor)
        with self.assertRaises(IssuanceFailed) as caught_missing:
            await missing.register("ops@example.com", True)
        self.assertIn("external account binding", str(caught_missing.exception))


class NonceTests(TestCase):
    """The client retries badNonce with the CA's fresh nonce, a bounded number of times."""

    timeout = TIMEOUT

    async def test_bad_nonce_recovery(self) -> None:
        """
        When Pebble rejects half of all good nonces, registration and a full
        issuance still succeed, and the retries are logged.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        responder = MemoryResponder(supported_types=("http-01",))
        http_port, _ = serve_http01(self, responder)
        pebble = await pebble_for(self, http_port=http_port, nonce_reject=50)
        # About a dozen POSTs; 40 attempts each makes a spurious failure ~1e-11.
        client = await registered(pebble, bad_nonce_attempts=40)

        issued = await client.issue(["nonce.example.test"], certificate_key_pem(), responder)

        self.assertEqual(issued.names, ("nonce.example.test",))
        retries = [e for e in events if e.get("bad_nonce")]
        # Each POST is rejected with probability 1/2; at least ~12 were sent.
        self.assertGreater(len(retries), 0)

    async def test_bad_nonce_bounded(self) -> None:
        """
        When every nonce is rejected, a request is sent bad_nonce_attempts
        times and then fails with the CA's badNonce problem.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        pebble = await pebble_for(self, nonce_reject=100)
        client = AcmeClient(pebble.http, pebble.directory_url, account_key(), reactor,
                            bad_nonce_attempts=3)

        with self.assertRaises(AcmeProblem) as caught:
            await client.register("ops@example.com", True)

        self.assertEqual(caught.exception.code, "badNonce")
        self.assertEqual(caught.exception.status, 400)
        self.assertEqual(len([e for e in events if e.get("bad_nonce")]), 2)


class ProblemTests(TestCase):
    """The CA's problem documents become AcmeProblem (an IssuanceFailed) carrying its detail."""

    timeout = TIMEOUT

    async def test_rejected_name(self) -> None:
        """
        A name Pebble refuses at newOrder fails with AcmeProblem type malformed,
        HTTP 400, and Pebble's detail text in the message.
        """
        responder = MemoryResponder()
        pebble = await pebble_for(self)
        client = await registered(pebble)

        with self.assertRaises(AcmeProblem) as caught:
            await client.issue(["bad_name.example.test"], certificate_key_pem(), responder)

        problem = caught.exception
        self.assertIsInstance(problem, IssuanceFailed)
        self.assertEqual(problem.type, "urn:ietf:params:acme:error:malformed")
        self.assertEqual(problem.status, 400)
        self.assertIn("illegal character", problem.detail)
        self.assertIn(problem.detail, str(problem))
        self.assertEqual(responder.history, [])

    async def test_wrong_challenge_answer(self) -> None:
        """
        When the challenge server answers with the wrong key authorization, the
        authorization becomes invalid and issue fails with the challenge's
        unauthorized problem, naming the name, and the answer is withdrawn.
        """
        responder = MemoryResponder(supported_types=("http-01",))
        http_port, _ = serve_http01(self, responder, wrong=True)
        pebble = await pebble_for(self, http_port=http_port)
        client = await registered(pebble)

        with self.assertRaises(AcmeProblem) as caught:
            await client.issue(["wrong.example.test"], certificate_key_pem(), responder)

        problem = caught.exception
        self.assertEqual(problem.code, "unauthorized")
        self.assertIsNone(problem.status)
        self.assertTrue(problem.detail)
        self.assertIn("http-01 validation of wrong.example.test failed", str(problem))
        self.assertIn(problem.detail, str(problem))
        self.assertEqual(responder.active, [])
        self.assertEqual([op for op, _ in responder.history], ["add", "remove"])

    async def test_no_usable_challenge(self) -> None:
        """
        A wildcard name (Pebble offers only dns-01 for it) fails with
        IssuanceFailed naming the offered and the supported challenge types.
        """
        responder = MemoryResponder()
        pebble = await pebble_for(self)
        client = await registered(pebble)

        with self.assertRaises(IssuanceFailed) as caught:
            await client.issue(["*.example.test"], certificate_key_pem(), responder)

        self.assertIn("dns-01", str(caught.exception))
        self.assertIn("http-01", str(caught.exception))
        self.assertEqual(responder.history, [])


def unpooled_client() -> HTTPClient:
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


class UnavailableTests(TestCase):
    """A CA that is down or silent fails the operation promptly: AcmeUnavailable or a timeout."""

    timeout = TIMEOUT

    async def test_ca_down(self) -> None:
        """
        With nothing listening at the directory URL, register fails at once
        with AcmeUnavailable naming the URL and the refused connection.
        """
        url = f"https://127.0.0.1:{free_port()}/dir"
        client = AcmeClient(unpooled_client(), url, account_key(), reactor,
                            request_timeout=5.0)

        d = client.register("ops@example.com", True)
        d.addTimeout(10, reactor)  # a hang fails this test rather than the whole run
        with self.assertRaises(AcmeUnavailable) as caught:
            await d

        self.assertIsInstance(caught.exception, IssuanceFailed)
        self.assertIn(url, str(caught.exception))
        self.assertIn("ConnectionRefused", str(caught.exception))

    async def test_ca_silent(self) -> None:
        """
        A CA that accepts the connection but never answers fails the request
        with AcmeUnavailable once request_timeout has passed on the injected clock.
        """
        port, tracking = listen(self, Factory.forProtocol(Protocol))
        clock = Clock()
        url = f"https://127.0.0.1:{port}/dir"
        client = AcmeClient(unpooled_client(), url, account_key(), clock,
                            request_timeout=30.0)

        d = client.directory()
        await tracking.connected.addTimeout(10, reactor)
        self.assertNoResult(d)
        clock.advance(29)
        self.assertNoResult(d)
        clock.advance(1)
        d.addTimeout(10, reactor)
        with self.assertRaises(AcmeUnavailable) as caught:
            await d

        self.assertIn(f"GET {url}: no answer from the CA within 30 s", str(caught.exception))

    async def test_issue_timeout(self) -> None:
        """
        issue is bounded by its timeout as a whole: when the CA stalls, it
        fails with IssuanceFailed saying how long it waited and for what.
        """
        port, tracking = listen(self, Factory.forProtocol(Protocol))
        clock = Clock()
        client = AcmeClient(unpooled_client(), f"https://127.0.0.1:{port}/dir",
                            account_key(), clock, request_timeout=30.0)

        d = client.issue(["slow.example.test"], certificate_key_pem(), MemoryResponder(),
                         timeout=10.0)
        await tracking.connected.addTimeout(10, reactor)
        clock.advance(10)
        d.addTimeout(10, reactor)
        with self.assertRaises(IssuanceFailed) as caught:
            await d

        self.assertNotIsInstance(caught.exception, AcmeUnavailable)
        self.assertIn("issuance for slow.example.test did not finish within 10 s",
                      str(caught.exception))
        self.assertIn("looking up the ACME account", str(caught.exception))


class _ScriptedResponse:
    """Just enough of a treq response for the client: code, headers, content()."""

    def __init__(self, code: int, headers: Headers, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self._body = body

    def content(self) -> Deferred[bytes]:
        return succeed(self._body)


class ScriptedCA:
    """
    Stands in for the HTTPClient: answers each URL from a script of replies
    (the last one repeats) and records (clock time, method, path) per request.
    """

    base = "https://ca.test"

    def __init__(self, clock: Clock, script: dict[str, list[tuple[int, dict[str, str], Any]]]
                 ) -> None:
        self._clock = clock
        self._script = {k: list(v) for k, v in script.items()}
        self._nonces = 0
        self.requests: list[tuple[float, str, str]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[_ScriptedResponse]:
        path = url[len(self.base):]
        self.requests.append((round(self._clock.seconds(), 6), method, path))
        replies = self._script[path]
        code, headers, body = replies.pop(0) if len(replies) > 1 else replies[0]
        self._nonces += 1
        raw = Headers({"Replay-Nonce": [josepy.b64encode(b"nonce-%d" % self._nonces).decode()]})
        for k, v in headers.items():
            raw.setRawHeaders(k, [v])
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            if not raw.hasHeader("Content-Type"):
                raw.setRawHeaders("Content-Type", ["application/json"])
        return succeed(_ScriptedResponse(code, raw, body))


def self_signed_chain(key_pem: bytes, name: str) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(start).not_valid_after(start + timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def run_clock_until(clock: Clock, d: Deferred[Any], limit: int = 1000) -> None:
    """Advance C{clock} straight to each next delayed call until C{d} has a result."""
    for _ in range(limit):
        if d.called:
            return
        calls = clock.getDelayedCalls()
        if not calls:
            return
        clock.advance(max(0.0, min(c.getTime() for c in calls) - clock.seconds()))


class PollingScheduleTests(SynchronousTestCase):
    """
    Polling starts fast, backs off, and honours Retry-After; all on the injected clock.

    (No CA process: the HTTPClient is replaced by a scripted CA, so this class
    could live in tests/unit.)
    """

    def test_schedule(self) -> None:
        """
        The first authorization poll is 0.2 s after the challenge is answered;
        a Retry-After of 3 s is honoured; the next wait doubles that up to the
        5 s cap; the order is checked at once after validation; the certificate
        poll after finalize waits as finalize's Retry-After says, then twice that.
        """
        b = ScriptedCA.base
        key_pem = certificate_key_pem()
        order = {"status": "pending", "finalize": f"{b}/order/1/finalize",
                 "identifiers": [{"type": "dns", "value": "poll.test"}],
                 "authorizations": [f"{b}/authz/1"]}
        token = josepy.b64encode(b"t" * 32).decode()
        challenge = {"type": "http-01", "url": f"{b}/chall/1", "token": token,
                     "status": "pending"}
        authz = {"identifier": {"type": "dns", "value": "poll.test"},
                 "status": "pending", "challenges": [challenge]}
        pending_authz: tuple[int, dict[str, str], Any] = (200, {}, authz)
        clock = Clock()
        ca = ScriptedCA(clock, {
            "/dir": [(200, {}, {"newNonce": f"{b}/nonce", "newAccount": f"{b}/acct",
                                "newOrder": f"{b}/new-order"})],
            "/nonce": [(200, {}, b"")],
            "/acct": [(201, {"Location": f"{b}/acct/1"}, {"status": "valid"})],
            "/new-order": [(201, {"Location": f"{b}/order/1"}, order)],
            "/authz/1": [pending_authz,
                         (200, {"Retry-After": "3"}, authz),
                         pending_authz,
                         (200, {}, {**authz, "status": "valid"})],
            "/chall/1": [(200, {}, challenge)],
            "/order/1": [(200, {}, {**order, "status": "ready"}),
                         (200, {}, {**order, "status": "processing"}),
                         (200, {}, {**order, "status": "valid",
                                    "certificate": f"{b}/cert/1"})],
            "/order/1/finalize": [(200, {"Retry-After": "2"},
                                   {**order, "status": "processing"})],
            "/cert/1": [(200, {"Content-Type": "application/pem-certificate-chain"},
                         self_signed_chain(key_pem, "poll.test"))],
        })
        client = AcmeClient(ca, f"{b}/dir", account_key(), clock)  # type: ignore[arg-type]
        responder = MemoryResponder(supported_types=("http-01",))

        self.successResultOf(client.register(None, True))
        d = client.issue(["poll.test"], key_pem, responder)
        run_clock_until(clock, d)
        issued = self.successResultOf(d)

        self.assertEqual(issued.order_url, f"{b}/order/1")
        self.assertEqual(issued.not_after, datetime(2026, 4, 1, tzinfo=timezone.utc))
        posts = [(t, path) for t, method, path in ca.requests if method == "POST"]
        self.assertEqual(posts, [
            (0.0, "/acct"),
            (0.0, "/new-order"),
            (0.0, "/authz/1"),
            (0.0, "/chall/1"),
            (0.2, "/authz/1"),            # first poll: 0.2 s
            (3.2, "/authz/1"),            # Retry-After: 3
            (8.2, "/authz/1"),            # doubled to 6, capped at 5
            (8.2, "/order/1"),            # order checked at once: ready
            (8.2, "/order/1/finalize"),
            (10.2, "/order/1"),           # finalize said Retry-After: 2
            (14.2, "/order/1"),           # then twice the last wait
            (14.2, "/cert/1"),
        ])
        self.assertEqual(responder.active, [])
        self.assertEqual(clock.getDelayedCalls(), [])


class ChallengeCertificateTests(SynchronousTestCase):
    """The tls-alpn-01 certificate follows RFC 8737; MemoryResponder provides the interface."""

    def test_tls_alpn01_certificate(self) -> None:
        """
        The certificate names exactly the one name, carries the critical
        acmeIdentifier extension holding the DER OCTET STRING of
        SHA-256(key authorization), is self-signed with a P-256 key, and is
        valid around the clock's time.
        """
        clock = Clock()
        clock.advance(1_800_000_000)
        cert_pem, key_pem = tls_alpn01_certificate("alpn.example.test", "tok.thumb", clock)
        cert = x509.load_pem_x509_certificate(cert_pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["alpn.example.test"])
        ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
        self.assertTrue(ext.critical)
        self.assertEqual(ext.value.value,
                         b"\x04\x20" + hashlib.sha256(b"tok.thumb").digest())
        cert.verify_directly_issued_by(cert)
        key = serialization.load_pem_private_key(key_pem, password=None)
        self.assertIsInstance(key, ec.EllipticCurvePrivateKey)
        self.assertEqual(key.curve.name, "secp256r1")
        now = datetime.fromtimestamp(clock.seconds(), timezone.utc)
        self.assertTrue(cert.not_valid_before_utc < now < cert.not_valid_after_utc)
        self.assertLessEqual(cert.not_valid_after_utc - now, timedelta(days=1))

    def test_key_authorization(self) -> None:
        """The key authorization is the token, a dot, and the key's RFC 7638 thumbprint."""
        key = account_key()
        thumb = josepy.b64encode(
            key.public_key().thumbprint(hash_function=hashes.SHA256)).decode()
        self.assertEqual(key_authorization("abc", key), f"abc.{thumb}")

    def test_memory_responder(self) -> None:
        """MemoryResponder provides IChallengeResponder and answers only what was added."""
        responder = MemoryResponder()
        verifyObject(IChallengeResponder, responder)
        self.successResultOf(responder.add("http-01", "a.test", "tok", "tok.x"))
        self.successResultOf(responder.add("tls-alpn-01", "b.test", "tok2", "tok2.x"))
        self.assertEqual(responder.http01("tok"), "tok.x")
        self.assertIsNone(responder.http01("tok2"))
        self.assertEqual(responder.tls_alpn01("B.test."), "tok2.x")
        self.successResultOf(responder.remove("http-01", "a.test", "tok", "tok.x"))
        self.assertIsNone(responder.http01("tok"))

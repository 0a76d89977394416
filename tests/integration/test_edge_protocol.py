"""
Integration tests of L{veil.edge.protocol}: the read-ahead edge protocol on
a real listening port, driven by real TLS clients.

Three client stacks are used, so that the edge is not only tested against
the OpenSSL build that serves it:

  - Python's C{ssl} module (its own OpenSSL build), run in a thread: a
    stock client that verifies the chain and the host name;
  - Twisted's TLS client (C{optionsForClientTLS} with the internal CA's
    root as trust root), on the reactor;
  - a pyOpenSSL client on memory BIOs, driven by the reactor
    (L{MemoryTLSClient}), which controls exactly which bytes go on the
    wire and when, and keeps a copy of them.

The server side is a subclass of L{EdgeFactory} that only observes: it
hands every accepted protocol to the test and fires a Deferred when each
connection is lost, so that tests wait on events instead of sleeping.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, gatherResults, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from tests.support.waiting import until
from veil.acme.challenges import ACME_IDENTIFIER_OID, tls_alpn01_certificate
from veil.acme.internal_ca import InternalCA
from veil.edge.contexts import ServerTLS, build_challenge_tls, build_server_tls
from veil.edge.hello import ClientHello
from veil.edge.keys import generate_key
from veil.edge.protocol import (
    ALERT_DECODE_ERROR,
    ALERT_ILLEGAL_PARAMETER,
    ALERT_INTERNAL_ERROR,
    ALERT_PROTOCOL_VERSION,
    ALERT_RECORD_OVERFLOW,
    ALERT_UNEXPECTED_MESSAGE,
    ALERT_UNRECOGNIZED_NAME,
    EdgeFactory,
    EdgeProtocol,
)
from veil.errors import IssuanceRefused
from veil.metrics import Registry

#: The longest any single wait in these tests may take.
WAIT = 10.0

#: A TLS 1.3 "dummy" change_cipher_spec record (RFC 8446 section 5 and
#: appendix D.4): a peer may send it at any time after the first
#: ClientHello and the receiver must drop it.
DUMMY_CCS = b"\x14\x03\x03\x00\x01\x01"

ACME_TLS_1 = b"acme-tls/1"


def within(d: Deferred[Any], seconds: float = WAIT) -> Deferred[Any]:
    """Bound a wait: C{d}, failing with a timeout after C{seconds}."""
    return d.addTimeout(seconds, reactor)


# -- the server side ---------------------------------------------------------


class ObservedEdgeProtocol(EdgeProtocol):
    """
    The real L{EdgeProtocol}, plus what a test needs to watch it: the sizes
    of the chunks TCP delivered before TLS started, and Deferreds for "this
    many bytes have arrived" and "the connection is gone".
    """

    def __init__(self, factory: EdgeFactory, addr: Any) -> None:
        super().__init__(factory, addr)
        self.chunks: list[int] = []
        self.received = 0
        self.lost: Deferred[BaseException] = Deferred()
        self._byte_waiters: list[tuple[int, Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        if self.tls is None:
            self.chunks.append(len(data))
        self.received += len(data)
        super().dataReceived(data)
        waiting, self._byte_waiters = self._byte_waiters, []
        for count, d in waiting:
            if self.received >= count:
                d.callback(None)
            else:
                self._byte_waiters.append((count, d))

    def has_received(self, count: int) -> Deferred[None]:
        """A Deferred that fires once C{count} bytes in all have arrived."""
        if self.received >= count:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._byte_waiters.append((count, d))
        return d

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.lost.callback(reason.value)


class ObservedEdgeFactory(EdgeFactory):
    """An L{EdgeFactory} whose protocols the test can see, in accept order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: list[ObservedEdgeProtocol] = []
        self.accepted: DeferredQueue[ObservedEdgeProtocol] = DeferredQueue()

    def buildProtocol(self, addr: Any) -> ObservedEdgeProtocol:
        protocol = ObservedEdgeProtocol(self, addr)
        self.connections.append(protocol)
        self.accepted.put(protocol)
        return protocol


class HelloResource(Resource):
    """Answers every GET with C{hello <name>}."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"hello {self.name}".encode()


class Echo(Protocol):
    """Sends back whatever arrives."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


@implementer(IHandshakeListener)
class CloseAfterHandshake(Protocol):
    """What the edge runs behind a tls-alpn-01 handshake: nothing, then close."""

    def handshakeCompleted(self) -> None:
        self.transport.loseConnection()


@implementer(IOpenSSLServerConnectionCreator)
class RecordingTLS:
    """
    Wraps a L{ServerTLS} so that the test sees every byte the server's
    OpenSSL connection is given (the replayed hello included).
    """

    def __init__(self, inner: ServerTLS) -> None:
        self.inner = inner
        self.fed = bytearray()

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        recorder = self

        class Recording(SSL.Connection):
            def bio_write(self, buf: bytes) -> int:
                recorder.fed += buf
                return super().bio_write(buf)

        return Recording(self.inner.context, None)


class Certificates:
    """
    A fresh internal CA, and one L{ServerTLS} per name it has signed,
    built on first use (as the edge's memory cache would hold them).
    """

    def __init__(self, testcase: TestCase) -> None:
        self.ca = InternalCA.load_or_create(Path(testcase.mktemp()), reactor)
        self.cafile = str(self.ca.root_path)
        self._tls: dict[str, ServerTLS] = {}
        self._chains: dict[str, bytes] = {}

    def tls_for(self, name: str) -> ServerTLS:
        if name not in self._tls:
            key = generate_key()
            issued = self.ca.issue(name, key)
            self._chains[name] = issued.chain_pem
            self._tls[name] = build_server_tls(issued.chain_pem, key)
        return self._tls[name]

    def leaf(self, name: str) -> x509.Certificate:
        self.tls_for(name)
        return x509.load_pem_x509_certificate(self._chains[name])


def app_factory_for(hello: ClientHello, creator: Any) -> Factory:
    """
    The application behind TLS: a web site saying hello to the server
    name, except on tls-alpn-01 handshakes, which are closed at once.
    """
    if hello.alpn_protocols == (ACME_TLS_1,):
        return Factory.forProtocol(CloseAfterHandshake)
    return Site(HelloResource(hello.server_name or ""))


def echo_factory_for(hello: ClientHello, creator: Any) -> Factory:
    """The application behind TLS: an echo server."""
    return Factory.forProtocol(Echo)


class EdgeTestCase(TestCase):
    """Shared set-up: an edge on a real port, its metrics, its log events."""

    timeout = 30

    def setUp(self) -> None:
        self.certs = Certificates(self)
        self.metrics = Registry()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.asked: list[ClientHello] = []

    def listen(self, resolve: Callable[[ClientHello], Any],
               app: Callable[[ClientHello, Any], Factory] = app_factory_for,
               **options: Any) -> ObservedEdgeFactory:
        """
        Listen on 127.0.0.1, port 0, with C{resolve} (every hello it is
        asked about is kept in C{self.asked}).  At the end of the test,
        wait for every accepted connection to be gone, then stop listening.
        """

        def asking(hello: ClientHello) -> Any:
            self.asked.append(hello)
            return resolve(hello)

        factory = ObservedEdgeFactory(asking, app, reactor, self.metrics, **options)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: within(gatherResults([c.lost for c in factory.connections])))
        self.port = port.getHost().port
        self.factory = factory
        return factory

    def known(self, *names: str) -> Callable[[ClientHello], ServerTLS]:
        """A synchronous resolver that knows C{names} and refuses the rest."""

        def resolve(hello: ClientHello) -> ServerTLS:
            if hello.server_name not in names:
                raise IssuanceRefused(f"no site for {hello.server_name}")
            return self.certs.tls_for(hello.server_name)

        return resolve

    def rejected(self, reason: str) -> float:
        return self.metrics.counter("veil_edge_rejected_total", "").value(reason=reason)

    def rejections(self) -> dict[str, float]:
        """Every rejection counted so far, by reason, as the metrics page shows them."""
        found = re.findall(r'^veil_edge_rejected_total\{reason="([a-z_]+)"\} (\S+)$',
                           self.metrics.render(), re.MULTILINE)
        return {reason: float(value) for reason, value in found}

    def tls_started(self) -> float:
        return self.metrics.counter("veil_edge_tls_started_total", "").value()

    def warnings(self) -> list[str]:
        """The reasons of the edge's "closed before TLS" log events."""
        return [e["reason"] for e in self.events
                if (e.get("log_format") or "").startswith("Edge connection from")]

    def assertNothingLogged(self) -> None:
        """No error or failure was logged (and so flushed) by this test."""
        self.assertEqual(self.flushLoggedErrors(), [])

    async def memory_client(self, name: str | None, alpn: list[bytes] | None = None,
                            send_hello: Callable[[MemoryTLSClient, bytes], None] | None = None,
                            **options: Any) -> MemoryTLSClient:
        """Connect a L{MemoryTLSClient} to the edge."""
        client = MemoryTLSClient(client_connection(name, alpn, **options), send_hello)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=WAIT)
        await within(connectProtocol(endpoint, client))
        return client

    async def raw_client(self, data: bytes = b"") -> RawClient:
        """Connect a plain TCP client that sends C{data} at once."""
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=WAIT)
        return await within(connectProtocol(endpoint, RawClient(data)))


# -- clients -------------------------------------------------------------------


def client_connection(name: str | None, alpn: list[bytes] | None = None,
                      max_version: int | None = None) -> SSL.Connection:
    """
    A pyOpenSSL client connection on memory BIOs (no verification: the
    tests look at the certificate themselves).
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    conn = SSL.Connection(context, None)
    conn.set_connect_state()
    if name is not None:
        conn.set_tlsext_host_name(name.encode("ascii"))
    if alpn is not None:
        conn.set_alpn_protos(alpn)
    return conn


def client_hello(name: str | None, alpn: list[bytes] | None = None) -> bytes:
    """The ClientHello a pyOpenSSL client sends first, captured from its memory BIO."""
    conn = client_connection(name, alpn)
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    return conn.bio_read(65536)


class MemoryTLSClient(Protocol):
    """
    A pyOpenSSL TLS client on memory BIOs, driven by the reactor.

    It keeps every byte it writes (C{sent}) and receives (C{received}).
    C{handshake} fires when the handshake completes, or fails with the
    L{SSL.Error} (such as an alert) or the reason the connection was lost.
    C{closed} fires when the connection is gone.

    @ivar send_hello: how to put the ClientHello on the wire; by default,
        in one write.
    """

    def __init__(self, conn: SSL.Connection,
                 send_hello: Callable[[MemoryTLSClient, bytes], None] | None = None) -> None:
        self.conn = conn
        self.send_hello = send_hello
        self.sent = bytearray()
        self.received = bytearray()
        self.plaintext = bytearray()
        self.handshake: Deferred[None] = Deferred()
        self.closed: Deferred[BaseException] = Deferred()
        self._failed = False
        self._handshake_done = False
        self._plain_waiters: list[tuple[int, Deferred[bytes]]] = []

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            pass
        hello = self.conn.bio_read(65536)
        if self.send_hello is None:
            self.write_raw(hello)
        else:
            self.send_hello(self, hello)

    def write_raw(self, data: bytes) -> None:
        """Put C{data} on the wire as it is."""
        self.sent += data
        self.transport.write(data)

    def send(self, data: bytes) -> None:
        """Send application data (after the handshake)."""
        self.conn.sendall(data)
        self._flush()

    def plaintext_of(self, count: int) -> Deferred[bytes]:
        """A Deferred that fires with the application data once C{count} bytes have come."""
        d: Deferred[bytes] = Deferred()
        self._plain_waiters.append((count, d))
        self._wake()
        return d

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._failed:
            return
        self.conn.bio_write(data)
        outcome: Failure | None = None
        done_now = False
        if not self._handshake_done:
            try:
                self.conn.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error:
                self._failed = True
                outcome = Failure()
            else:
                self._handshake_done = done_now = True
        if self._handshake_done:
            while True:
                try:
                    self.plaintext += self.conn.recv(65536)
                except SSL.WantReadError:
                    break
                except SSL.ZeroReturnError:
                    # The server sent close_notify: answer it and close.
                    self.conn.shutdown()
                    self._flush()
                    self.transport.loseConnection()
                    break
        self._flush()
        # Callbacks last, so that a test resumed by them finds this
        # client in a consistent state.
        if outcome is not None:
            self.handshake.errback(outcome)
        elif done_now:
            self.handshake.callback(None)
        if self._handshake_done:
            self._wake()

    def _flush(self) -> None:
        while True:
            try:
                data = self.conn.bio_read(65536)
            except SSL.WantReadError:
                return
            self.write_raw(data)

    def _wake(self) -> None:
        waiting, self._plain_waiters = self._plain_waiters, []
        for count, d in waiting:
            if len(self.plaintext) >= count:
                d.callback(bytes(self.plaintext))
            else:
                self._plain_waiters.append((count, d))

    def connectionLost(self, reason: Failure) -> None:
        if not self.handshake.called:
            self.handshake.errback(reason)
        self.closed.callback(reason.value)


class RawClient(Protocol):
    """A plain TCP client: sends its bytes, keeps what comes back."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data
        self.received = bytearray()
        self.closed: Deferred[BaseException] = Deferred()

    def connectionMade(self) -> None:
        if self.data:
            self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(reason.value)


class EarlyWriter(Protocol):
    """
    A Twisted TLS client that writes as soon as it is connected, before
    the handshake has even started, and closes once the echo is back.
    """

    message = b"written before the handshake\n"

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[BaseException] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.message)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.message):
            self.alpn = self.transport.negotiatedProtocol
            self.peer = self.transport.getPeerCertificate().to_cryptography()
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(reason.value)


def stdlib_get(port: int, name: str, cafile: str,
               max_version: ssl.TLSVersion | None = None) -> dict[str, Any]:
    """
    Python's ssl client (runs in a thread): verify the chain against
    C{cafile} and the host name, offer ALPN http/1.1, send one request and
    read the answer to the end.
    """
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    if max_version is not None:
        context.maximum_version = max_version
    with (socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw,
          context.wrap_socket(raw, server_hostname=name) as tls):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := tls.recv(65536):
            reply += chunk
        return {"cert": tls.getpeercert(), "alpn": tls.selected_alpn_protocol(),
                "version": tls.version(), "reply": reply}


def stdlib_refused(port: int, name: str | None) -> ssl.SSLError:
    """
    Python's ssl client (runs in a thread), without verification, whose
    handshake is expected to fail; returns the error.  Without C{name} no
    server name is sent.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=name):
                pass
        except ssl.SSLError as e:
            return e
    raise AssertionError("the handshake succeeded")


def dns_names(cert: dict[str, Any]) -> list[str]:
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]


def body_of(reply: bytes) -> bytes:
    return reply.partition(b"\r\n\r\n")[2]


# -- the tests -------------------------------------------------------------------


class KnownNameTests(EdgeTestCase):
    """A name the resolver knows at once gets a verified TLS connection to the application."""

    async def test_stdlib_client_tls13(self) -> None:
        """
        A stock client (Python's ssl) verifies the chain against the
        internal root for exactly the name it asked for, negotiates
        http/1.1 by ALPN over TLS 1.3, and its request and the answer both
        go through.
        """
        self.listen(self.known("shop.test"))
        result = await within(deferToThread(
            stdlib_get, self.port, "shop.test", self.certs.cafile))
        self.assertEqual(dns_names(result["cert"]), ["shop.test"])
        self.assertEqual(result["alpn"], "http/1.1")
        self.assertEqual(result["version"], "TLSv1.3")
        self.assertTrue(result["reply"].startswith(b"HTTP/1.1 200 "), result["reply"])
        self.assertEqual(body_of(result["reply"]), b"hello shop.test")
        self.assertEqual([h.server_name for h in self.asked], ["shop.test"])
        self.assertEqual(self.asked[0].alpn_protocols, (b"http/1.1",))
        self.assertEqual(self.tls_started(), 1)
        self.assertEqual(self.rejections(), {})
        self.assertNothingLogged()

    async def test_stdlib_client_tls12(self) -> None:
        """The same holds for a client limited to TLS 1.2."""
        self.listen(self.known("shop.test"))
        result = await within(deferToThread(
            stdlib_get, self.port, "shop.test", self.certs.cafile, ssl.TLSVersion.TLSv1_2))
        self.assertEqual(result["version"], "TLSv1.2")
        self.assertEqual(result["alpn"], "http/1.1")
        self.assertEqual(body_of(result["reply"]), b"hello shop.test")
        self.assertNothingLogged()

    async def test_certificate_is_the_one_resolved(self) -> None:
        """
        The certificate on the wire is the one the resolver chose for that
        name, and two names on one port each get their own.
        """
        self.listen(self.known("a.test", "b.test"))
        for name in ("a.test", "b.test"):
            client = await self.memory_client(name, [b"http/1.1"])
            await within(client.handshake)
            peer = client.conn.get_peer_certificate(as_cryptography=True)
            self.assertEqual(peer, self.certs.leaf(name))
            self.assertEqual(client.conn.get_alpn_proto_negotiated(), b"http/1.1")
            client.transport.loseConnection()
            await within(client.closed)
        self.assertEqual([h.server_name for h in self.asked], ["a.test", "b.test"])
        self.assertNothingLogged()


class AsynchronousResolverTests(EdgeTestCase):
    """A resolver that answers later with a Deferred holds the handshake until it does."""

    async def test_handshake_waits_for_resolver(self) -> None:
        """
        The handshake waits for a resolver that answers later, then
        completes.  Bytes the client sent while the resolver worked (a TLS
        1.3 dummy change_cipher_spec record, read by the edge before the
        answer came) are not lost: the server's OpenSSL is given exactly
        the bytes the client sent, in order.  Application data then flows
        both ways.
        """
        recording: list[RecordingTLS] = []
        pending: list[Deferred[Any]] = []
        asked: Deferred[None] = Deferred()

        def resolve(hello: ClientHello) -> Deferred[Any]:
            recording.append(RecordingTLS(self.certs.tls_for(hello.server_name)))
            pending.append(Deferred())
            asked.callback(None)
            return pending[0]

        self.listen(resolve, echo_factory_for)
        client = await self.memory_client("slow.test", [b"http/1.1"])
        server = await within(self.factory.accepted.get())
        await within(asked)
        hello_size = len(client.sent)
        client.write_raw(DUMMY_CCS)
        await within(server.has_received(hello_size + len(DUMMY_CCS)))
        self.assertEqual(sum(server.chunks), hello_size + len(DUMMY_CCS))
        self.assertEqual(client.received, b"")
        reactor.callLater(0.2, pending[0].callback, recording[0])
        await within(client.handshake)

        client.send(b"ping")
        self.assertEqual(await within(client.plaintext_of(4)), b"ping")
        client.transport.loseConnection()
        await within(client.closed)
        await within(server.lost)
        self.assertEqual(bytes(recording[0].fed), bytes(client.sent))
        self.assertEqual(client.conn.get_peer_certificate(as_cryptography=True),
                         self.certs.leaf("slow.test"))
        self.assertEqual(self.tls_started(), 1)
        self.assertNothingLogged()

    async def test_early_application_data(self) -> None:
        """
        A Twisted TLS client (verifying against the internal root) that
        writes before the handshake has started gets its bytes echoed once
        a slow resolver has answered.
        """

        def resolve(hello: ClientHello) -> Deferred[Any]:
            answer: Deferred[Any] = Deferred()
            reactor.callLater(0.2, answer.callback, self.certs.tls_for(hello.server_name))
            return answer

        self.listen(resolve, echo_factory_for)
        options = optionsForClientTLS(
            "early.test", trustRoot=Certificate.loadPEM(self.certs.ca.root_pem),
            acceptableProtocols=[b"http/1.1"])
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.port))
        client = await within(connectProtocol(endpoint, EarlyWriter()))
        reason = await within(client.closed)
        self.assertEqual(bytes(client.received), EarlyWriter.message)
        self.assertEqual(client.alpn, b"http/1.1")
        self.assertEqual(client.peer, self.certs.leaf("early.test"))
        self.assertIsInstance(reason, ConnectionDone)
        self.assertNothingLogged()

    async def test_five_concurrent_names(self) -> None:
        """
        Five clients for five names, whose lookups are all pending at once
        (the resolver answers only when all five have asked), all complete
        their handshakes with the right certificate and get their answers.
        """
        names = [f"site{i}.test" for i in range(5)]
        pending: list[tuple[Deferred[Any], str]] = []

        def resolve(hello: ClientHello) -> Deferred[Any]:
            answer: Deferred[Any] = Deferred()
            pending.append((answer, hello.server_name))
            if len(pending) == len(names):
                # Slow, and only once everybody is waiting.
                reactor.callLater(0.2, answer_all)
            return answer

        def answer_all() -> None:
            for answer, name in pending:
                answer.callback(self.certs.tls_for(name))

        self.listen(resolve)
        results = await within(gatherResults([
            deferToThread(stdlib_get, self.port, name, self.certs.cafile) for name in names]),
            WAIT * 2)
        for name, result in zip(names, results):
            self.assertEqual(dns_names(result["cert"]), [name])
            self.assertEqual(result["alpn"], "http/1.1")
            self.assertEqual(body_of(result["reply"]), f"hello {name}".encode())
        self.assertEqual(sorted(h.server_name for h in self.asked), names)
        self.assertEqual(self.tls_started(), 5)
        self.assertNothingLogged()

    async def test_resolver_refuses_later(self) -> None:
        """
        A resolver whose Deferred fails later with IssuanceRefused: a stock
        client gets an unrecognized_name alert; the refusal is counted as
        name_refused and logged as a warning, not as an error.
        """

        def resolve(hello: ClientHello) -> Deferred[Any]:
            answer: Deferred[Any] = Deferred()
            reactor.callLater(0.1, answer.errback, IssuanceRefused("not a site"))
            return answer

        self.listen(resolve)
        error = await within(deferToThread(stdlib_refused, self.port, "nobody.test"))
        self.assertEqual(error.reason, "TLSV1_UNRECOGNIZED_NAME")
        await within(self.factory.connections[0].lost)
        self.assertEqual(self.rejected("name_refused"), 1)
        self.assertEqual(self.warnings(), ["name_refused"])
        self.assertEqual(self.tls_started(), 0)
        self.assertNothingLogged()

    async def test_disconnect_cancels_resolver(self) -> None:
        """
        A client that leaves while the resolver is still working: the
        resolver's Deferred is cancelled, and nothing is logged as an error
        or counted as a rejection.
        """
        asked: Deferred[None] = Deferred()
        cancelled: Deferred[str] = Deferred()

        def resolve(hello: ClientHello) -> Deferred[Any]:
            asked.callback(None)
            return Deferred(lambda d: cancelled.callback(hello.server_name))

        self.listen(resolve)
        client = await self.memory_client("gone.test", [b"http/1.1"])
        await within(asked)
        client.transport.loseConnection()
        self.assertEqual(await within(cancelled), "gone.test")
        await within(self.factory.connections[0].lost)
        await within(self.assertFailure(client.handshake, ConnectionDone))
        await within(client.closed)
        self.assertEqual(self.rejections(), {})
        self.assertEqual(self.tls_started(), 0)
        self.assertNothingLogged()


    async def test_resolver_too_slow(self) -> None:
        """
        A resolver that does not answer within the factory's
        resolve_timeout is cancelled; the client gets an internal_error
        alert and a close, counted as certificate_timeout, and nothing is
        logged as an error.
        """
        cancelled: Deferred[str] = Deferred()

        def resolve(hello: ClientHello) -> Deferred[Any]:
            return Deferred(lambda d: cancelled.callback(hello.server_name))

        self.listen(resolve, resolve_timeout=0.5)
        client = await self.memory_client("stuck.test", [b"http/1.1"])
        self.assertEqual(await within(cancelled), "stuck.test")
        await within(self.assertFailure(client.handshake, SSL.Error))
        await within(client.closed)
        self.assertEqual(bytes(client.received), ALERT_INTERNAL_ERROR)
        self.assertEqual(self.rejections(), {"certificate_timeout": 1})
        self.assertNothingLogged()


class RefusalTests(EdgeTestCase):
    """Names the edge will not serve end with a TLS alert, a close, a warning and a counter."""

    async def test_refused_name(self) -> None:
        """
        A synchronous resolver raising IssuanceRefused: the client gets
        exactly one fatal unrecognized_name alert and then the connection
        closes; veil_edge_rejected_total{reason="name_refused"} counts it.
        """
        self.listen(self.known("shop.test"))
        client = await self.memory_client("other.test", [b"http/1.1"])
        failure = await within(self.assertFailure(client.handshake, SSL.Error))
        self.assertIn("unrecognized name", str(failure))
        await within(client.closed)
        self.assertEqual(bytes(client.received), ALERT_UNRECOGNIZED_NAME)
        self.assertEqual(self.rejected("name_refused"), 1)
        self.assertEqual(self.rejections(), {"name_refused": 1})
        self.assertEqual(self.warnings(), ["name_refused"])
        self.assertNothingLogged()

    async def test_no_sni(self) -> None:
        """
        A client that sends no server name gets an unrecognized_name alert
        and a close, counted as no_sni; the resolver is not asked.
        """
        self.listen(self.known("shop.test"))
        error = await within(deferToThread(stdlib_refused, self.port, None))
        self.assertEqual(error.reason, "TLSV1_UNRECOGNIZED_NAME")
        client = await self.memory_client(None, [b"http/1.1"])
        await within(self.assertFailure(client.handshake, SSL.Error))
        await within(client.closed)
        self.assertEqual(bytes(client.received), ALERT_UNRECOGNIZED_NAME)
        self.assertEqual(self.rejections(), {"no_sni": 2})
        self.assertEqual(self.asked, [])
        self.assertNothingLogged()

    async def test_ip_literal_sni(self) -> None:
        """
        A server name that is an IP literal (which RFC 6066 forbids) gets
        an unrecognized_name alert and a close, counted as invalid_sni.
        """
        self.listen(self.known("shop.test"))
        client = await self.memory_client("127.0.0.1", [b"http/1.1"])
        await within(self.assertFailure(client.handshake, SSL.Error))
        await within(client.closed)
        self.assertEqual(bytes(client.received), ALERT_UNRECOGNIZED_NAME)
        self.assertEqual(self.rejections(), {"invalid_sni": 1})
        self.assertEqual(self.asked, [])
        self.assertNothingLogged()

    async def test_resolver_bug(self) -> None:
        """
        A resolver that raises something unexpected: the client gets an
        internal_error alert and a close, the edge counts resolver_error,
        and the exception is logged as a failure (once) instead of raising
        into the reactor.
        """

        def resolve(hello: ClientHello) -> ServerTLS:
            raise ZeroDivisionError("resolver bug")

        self.listen(resolve)
        client = await self.memory_client("shop.test", [b"http/1.1"])
        failure = await within(self.assertFailure(client.handshake, SSL.Error))
        self.assertIn("internal error", str(failure))
        await within(client.closed)
        self.assertEqual(bytes(client.received), ALERT_INTERNAL_ERROR)
        self.assertEqual(self.rejections(), {"resolver_error": 1})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertNothingLogged()

    async def test_application_setup_bug(self) -> None:
        """
        An application factory that raises when TLS is about to start
        (here after an asynchronous answer): the client gets an
        internal_error alert and a close instead of a connection left
        hanging, and the exception is logged as a failure, once.
        """

        def app(hello: ClientHello, creator: Any) -> Factory:
            raise ZeroDivisionError("router bug")

        self.listen(lambda hello: succeed(self.certs.tls_for("shop.test")), app)
        client = await self.memory_client("shop.test", [b"http/1.1"])
        await within(self.assertFailure(client.handshake, SSL.Error))
        await within(client.closed)
        self.assertEqual(bytes(client.received), ALERT_INTERNAL_ERROR)
        self.assertEqual(self.rejections(), {"tls_setup_error": 1})
        self.assertEqual(self.tls_started(), 0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertNothingLogged()


class BadInputTests(EdgeTestCase):
    """Whatever a client sends before a ClientHello, the edge closes cleanly and counts why."""

    async def test_plain_http(self) -> None:
        """
        Plain HTTP on the TLS port gets a well-formed plain-text 400 that
        points to https, then the connection closes; counted as plain_http.
        """
        self.listen(self.known("shop.test"))
        client = await self.raw_client(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        await within(client.closed)
        head, _, body = bytes(client.received).partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 400 Bad Request")
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        self.assertEqual(headers[b"Connection"], b"close")
        self.assertTrue(headers[b"Content-Type"].startswith(b"text/plain"))
        self.assertEqual(int(headers[b"Content-Length"]), len(body))
        self.assertIn(b"https://", body)
        self.assertEqual(self.rejections(), {"plain_http": 1})
        self.assertEqual(self.asked, [])
        self.assertNothingLogged()

    async def test_garbage(self) -> None:
        """Bytes that are not TLS are answered with a close and nothing else; counted as not_tls."""
        self.listen(self.known("shop.test"))
        client = await self.raw_client(b"\x00\xffgarbage" * 10)
        await within(client.closed)
        self.assertEqual(bytes(client.received), b"")
        self.assertEqual(self.rejections(), {"not_tls": 1})
        self.assertNothingLogged()

    async def test_truncated_hello(self) -> None:
        """
        A client that sends half a ClientHello and then closes: nothing is
        logged as an error; the edge counts it as truncated.
        """
        self.listen(self.known("shop.test"))
        hello = client_hello("shop.test", [b"http/1.1"])
        half = hello[:len(hello) // 2]
        client = await self.raw_client(half)
        server = await within(self.factory.accepted.get())
        await within(server.has_received(len(half)))
        client.transport.loseConnection()
        await within(client.closed)
        await within(server.lost)
        self.assertEqual(self.asked, [])
        self.assertEqual(self.tls_started(), 0)
        self.assertEqual(self.rejections(), {"truncated": 1})
        self.assertNothingLogged()

    async def test_connect_and_leave(self) -> None:
        """A client that connects and leaves without a byte is neither an error nor counted."""
        self.listen(self.known("shop.test"))
        client = await self.raw_client()
        server = await within(self.factory.accepted.get())
        client.transport.loseConnection()
        await within(server.lost)
        await within(client.closed)
        self.assertEqual(self.rejections(), {})
        self.assertNothingLogged()

    async def test_hello_too_large(self) -> None:
        """
        A ClientHello longer than the factory's max_hello (the handshake
        message, its record's header not counted) is refused with an
        illegal_parameter alert and a close as soon as its length is
        known; counted as too_large.
        """
        hello = client_hello("shop.test", [b"http/1.1"])
        self.listen(self.known("shop.test"), max_hello=len(hello) - 5 - 1)
        client = await self.raw_client(hello)
        await within(client.closed)
        self.assertEqual(bytes(client.received), ALERT_ILLEGAL_PARAMETER)
        self.assertEqual(self.rejections(), {"too_large": 1})
        self.assertEqual(self.asked, [])
        self.assertNothingLogged()

    async def test_silent_client(self) -> None:
        """
        A client that connects and sends nothing is closed by the edge
        after hello_timeout; counted as hello_timeout.
        """
        self.listen(self.known("shop.test"), hello_timeout=0.5)
        client = await self.raw_client()
        await within(client.closed)
        self.assertEqual(bytes(client.received), b"")
        self.assertEqual(self.rejections(), {"hello_timeout": 1})
        self.assertEqual(self.warnings(), ["hello_timeout"])
        self.assertNothingLogged()

    async def test_slow_partial_hello(self) -> None:
        """A client that sends part of a hello and then stalls is closed after hello_timeout."""
        self.listen(self.known("shop.test"), hello_timeout=0.5)
        client = await self.raw_client(client_hello("shop.test")[:100])
        await within(client.closed)
        self.assertEqual(self.rejections(), {"hello_timeout": 1})
        self.assertNothingLogged()


class SegmentationTests(EdgeTestCase):
    """The edge reassembles a ClientHello however TCP cuts it up."""

    async def test_one_byte_segments(self) -> None:
        """
        A real ClientHello (from pyOpenSSL's memory BIO; about 1.5 KB with
        the hybrid ML-KEM key share of its OpenSSL) sent one byte per TCP segment, each only after the edge
        has read the one before, is reassembled; the same client then
        completes the handshake over the socket and exchanges data.
        """

        async def byte_by_byte(client: MemoryTLSClient, hello: bytes) -> None:
            server = await within(self.factory.accepted.get())
            for i in range(len(hello)):
                client.write_raw(hello[i:i + 1])
                await within(server.has_received(i + 1))
            delivered.callback(server)

        delivered: Deferred[ObservedEdgeProtocol] = Deferred()

        def send_hello(client: MemoryTLSClient, hello: bytes) -> None:
            self.hello_size = len(hello)
            Deferred.fromCoroutine(byte_by_byte(client, hello)).addErrback(delivered.errback)

        self.listen(self.known("bytes.test"), echo_factory_for)
        client = await self.memory_client("bytes.test", [b"http/1.1"], send_hello)
        server = await within(delivered, WAIT * 2)
        await within(client.handshake)
        self.assertGreater(self.hello_size, 512)
        self.assertEqual(server.chunks, [1] * self.hello_size)
        client.send(b"after a slow hello")
        self.assertEqual(await within(client.plaintext_of(18)), b"after a slow hello")
        client.transport.loseConnection()
        await within(client.closed)
        self.assertNothingLogged()


class TlsAlpn01Tests(EdgeTestCase):
    """The edge serves a tls-alpn-01 challenge certificate to acme-tls/1 hellos."""

    def challenge_resolver(self, name: str) -> tuple[Callable[[ClientHello], Any], bytes, str]:
        key_authorization = "token-123.thumbprint-456"
        cert_pem, key_pem = tls_alpn01_certificate(name, key_authorization, reactor)
        challenge = build_challenge_tls(cert_pem, key_pem)

        def resolve(hello: ClientHello) -> Deferred[Any]:
            if hello.alpn_protocols == (ACME_TLS_1,):
                return succeed(challenge)
            return self.certs.tls_for(hello.server_name)

        return resolve, cert_pem, key_authorization

    async def test_acme_tls_1(self) -> None:
        """
        A hello offering only acme-tls/1 negotiates acme-tls/1 and sees the
        challenge certificate (the one name, the critical acmeIdentifier
        holding the SHA-256 of the key authorization); the edge then closes
        the connection.
        """
        resolve, cert_pem, key_authorization = self.challenge_resolver("acme.test")
        self.listen(resolve)
        client = await self.memory_client("acme.test", [ACME_TLS_1])
        await within(client.handshake)
        self.assertEqual(client.conn.get_alpn_proto_negotiated(), ACME_TLS_1)
        peer = client.conn.get_peer_certificate(as_cryptography=True)
        self.assertEqual(peer.public_bytes(serialization.Encoding.PEM), cert_pem)
        san = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["acme.test"])
        identifier = peer.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
        self.assertTrue(identifier.critical)
        self.assertEqual(identifier.value.value,
                         b"\x04\x20" + hashlib.sha256(key_authorization.encode()).digest())
        self.assertIsInstance(await within(client.closed), ConnectionDone)
        self.assertEqual(self.asked[0].alpn_protocols, (ACME_TLS_1,))
        self.assertNothingLogged()

    async def test_ordinary_client_same_name(self) -> None:
        """
        On the same port and name, an ordinary hello (http/1.1) gets the
        internal-CA certificate, not the challenge one.
        """
        resolve, _, _ = self.challenge_resolver("acme.test")
        self.listen(resolve)
        client = await self.memory_client("acme.test", [b"http/1.1", ACME_TLS_1])
        await within(client.handshake)
        self.assertEqual(client.conn.get_alpn_proto_negotiated(), b"http/1.1")
        self.assertEqual(client.conn.get_peer_certificate(as_cryptography=True),
                         self.certs.leaf("acme.test"))
        client.transport.loseConnection()
        await within(client.closed)
        self.assertNothingLogged()


def tls_record(kind: int, fragment: bytes) -> bytes:
    """One TLS record (version 0x0303) carrying C{fragment}."""
    return bytes([kind, 3, 3]) + len(fragment).to_bytes(2, "big") + fragment


class ThinEcho(Factory):
    """An echo application that runs on the edge's thin TLS layer, like the proxy."""

    protocol = Echo
    thin_tls = True


class MalformedHelloTests(EdgeTestCase):
    """
    A hello that starts like TLS but is refused gets the fatal alert of its
    reason (RFC 8446 section 6.2), as docs/runtime.md lists them, then the
    close.
    """

    async def test_alert_per_reason(self) -> None:
        """
        Malformed (a session id of 33 bytes): decode_error; a record
        version from before SSL 3: protocol_version; a record over 2^14
        bytes: record_overflow; a record of another type inside the hello,
        or another handshake message: unexpected_message.  Each is counted
        under its reason.
        """
        hello = client_hello("shop.test", [b"http/1.1"])
        message = hello[5:]
        bad_session = bytearray(hello)
        bad_session[5 + 4 + 2 + 32] = 33
        cases = [
            (bytes(bad_session), "malformed", ALERT_DECODE_ERROR),
            (b"\x16\x02\x00\x00\x05hello", "bad_record_version", ALERT_PROTOCOL_VERSION),
            (b"\x16\x03\x01\x40\x01" + bytes(64), "record_too_large", ALERT_RECORD_OVERFLOW),
            (tls_record(22, message[:100]) + tls_record(23, message[100:]),
             "non_handshake_record", ALERT_UNEXPECTED_MESSAGE),
            (tls_record(22, b"\x02\x00\x00\x26" + bytes(38)), "not_client_hello",
             ALERT_UNEXPECTED_MESSAGE),
        ]
        self.listen(self.known("shop.test"))
        for data, reason, alert in cases:
            client = await self.raw_client(data)
            await within(client.closed)
            self.assertEqual(bytes(client.received), alert, reason)
        self.assertEqual(self.rejections(), {reason: 1 for _, reason, _ in cases})
        self.assertEqual(self.asked, [])
        self.assertNothingLogged()

    async def test_too_fragmented(self) -> None:
        """
        A hello cut into one-byte records, whose headers outweigh the hello
        limit, gets illegal_parameter; the same hello in two records is
        read although its records take more bytes than the limit.
        """
        hello = client_hello("shop.test", [b"http/1.1"])
        message = hello[5:]
        self.listen(self.known("shop.test"), max_hello=len(message))
        client = await self.raw_client(
            b"".join(tls_record(22, message[i:i + 1]) for i in range(len(message))))
        await within(client.closed)
        self.assertEqual(bytes(client.received), ALERT_ILLEGAL_PARAMETER)
        self.assertEqual(self.rejections(), {"too_fragmented": 1})
        client = await self.raw_client(tls_record(22, message[:50]) + tls_record(22, message[50:]))
        await until(lambda: self.asked, WAIT, "the resolver asked about the hello")
        self.assertEqual([h.server_name for h in self.asked], ["shop.test"])
        client.transport.loseConnection()
        await within(client.closed)
        self.assertNothingLogged()

    async def test_one_warning_per_reason(self) -> None:
        """
        Twenty garbage connections and five plain-HTTP ones are all counted
        but logged once per reason (the warnings are rate-limited).
        """
        self.listen(self.known("shop.test"))
        for data in [b"\x00\xffgarbage"] * 20 + [b"GET / HTTP/1.1\r\n\r\n"] * 5:
            client = await self.raw_client(data)
            await within(client.closed)
        self.assertEqual(self.rejections(), {"not_tls": 20, "plain_http": 5})
        self.assertEqual(self.warnings(), ["not_tls", "plain_http"])
        self.assertNothingLogged()


class HandshakeTimeoutTests(EdgeTestCase):
    """
    Once TLS has started (the hello was complete and the certificate
    chosen), the handshake must complete within handshake_timeout.
    """

    async def stalled(self, app: Callable[[ClientHello, Any], Factory]) -> None:
        self.listen(self.known("shop.test"), app, handshake_timeout=0.5)
        client = await self.raw_client(client_hello("shop.test", [b"http/1.1"]))
        await within(client.closed)
        self.assertEqual(bytes(client.received[:3]), b"\x16\x03\x03")  # the server's flight
        self.assertEqual(self.tls_started(), 1)
        self.assertEqual(self.rejections(), {"handshake_timeout": 1})
        self.assertEqual(self.warnings(), ["handshake_timeout"])
        self.assertEqual(self.factory.deadlines.items, set())
        self.assertNothingLogged()

    async def test_stalled_after_hello(self) -> None:
        """
        A client that sends a complete ClientHello and then nothing is cut
        off after handshake_timeout (Twisted's TLS protocol behind it).
        """
        await self.stalled(app_factory_for)

    async def test_stalled_after_hello_thin_layer(self) -> None:
        """The same on the thin TLS layer the proxy runs on."""
        await self.stalled(lambda hello, creator: ThinEcho())

    async def test_completed_handshake_untimed(self) -> None:
        """
        A handshake that completes leaves no deadline behind, on either TLS
        layer: the connection is the application's from then on.
        """
        for app in (echo_factory_for, lambda hello, creator: ThinEcho()):
            self.listen(self.known("shop.test"), app, handshake_timeout=0.5)
            client = await self.memory_client("shop.test", [b"http/1.1"])
            await within(client.handshake)
            client.send(b"ping")
            self.assertEqual(await within(client.plaintext_of(4)), b"ping")
            server = self.factory.connections[-1]
            self.assertEqual(server.deadline, 0.0)
            self.assertEqual(self.factory.deadlines.items, set())
            client.transport.loseConnection()
            await within(client.closed)
        self.assertEqual(self.rejections(), {})
        self.assertNothingLogged()


def s_client(port: int, *options: str) -> tuple[int, str]:
    """C{openssl s_client} against the edge (run in a thread): exit status and output."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "shop.test",
         *options],
        input=b"", capture_output=True, timeout=WAIT, check=False)
    return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace")


class GroupTests(EdgeTestCase):
    """The edge negotiates X25519, P-256 or P-384 only, checked with openssl s_client."""

    def setUp(self) -> None:
        super().setUp()
        if shutil.which("openssl") is None:
            raise SkipTest("openssl (the command) is not installed")

    async def test_groups(self) -> None:
        """
        A client offering only X448 or only P-521 is refused with a
        handshake_failure alert, over TLS 1.3 and 1.2; over TLS 1.3 one
        offering X25519, P-256 or P-384 gets that group; over TLS 1.2 (whose
        client must also offer P-256, the ECDSA certificate's curve, as RFC
        8422 has it) the server's order decides and P-521 is never chosen.
        """
        self.listen(self.known("shop.test"))
        for version in ("-tls1_3", "-tls1_2"):
            for group in ("X448", "P-521"):
                status, output = await within(deferToThread(
                    s_client, self.port, version, "-groups", group))
                self.assertNotEqual(status, 0, output)
                self.assertIn("alert handshake failure", output, (version, group))
        for version, group, shown in [
            ("-tls1_3", "X25519", "X25519"), ("-tls1_3", "P-256", "ECDH, prime256v1"),
            ("-tls1_3", "P-384", "ECDH, secp384r1"), ("-tls1_2", "P-256:X25519", "X25519"),
            ("-tls1_2", "P-521:P-256", "ECDH, prime256v1"),
        ]:
            status, output = await within(deferToThread(
                s_client, self.port, version, "-groups", group))
            self.assertEqual(status, 0, output)
            self.assertIn(f"Server Temp Key: {shown},", output, (version, group))
        self.assertNothingLogged()

"""
L{veil.edge.tlslayer}: the thin TLS layer under the proxy, on a real edge
port, with real TLS clients (Python's C{ssl} in threads, and the
pyOpenSSL memory-BIO client of L{tests.integration.test_edge_protocol}).

Two applications run on it: small test protocols that exercise one part
of the transport each (echo, producers, closing), and the real reverse
proxy in front of the test origin, for what the proxy needs from TLS
(pipelining, streaming both ways with bounded memory, tunnels).
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from typing import Any

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.integration.test_edge_protocol import (
    WAIT,
    EdgeTestCase,
    MemoryTLSClient,
    within,
)
from tests.integration.test_proxy import assert_streams_bounded, get, site, talk
from tests.support.origin import client_threads, listen_origin
from veil.edge.hello import ClientHello
from veil.edge.tlslayer import AVAILABLE, TLSError, TLSLayer
from veil.metrics import Registry
from veil.proxy.server import ProxyFactory
from veil.proxy.upstream import OriginPool


class Recorder(Protocol):
    """Keeps what arrives, answers as its test says, and reports its end."""

    def __init__(self, factory: ThinFactory) -> None:
        self.f = factory
        self.received = bytearray()
        self.lost: Deferred[BaseException] = Deferred()

    def connectionMade(self) -> None:
        self.f.made.append(self)
        if self.f.greeting:
            self.transport.write(self.f.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.f.on_data(self, data)

    def connectionLost(self, reason: Failure) -> None:
        self.lost.callback(reason.value)


class ThinFactory(Factory):
    """A factory the edge runs on the thin layer (as it does the proxy's)."""

    thin_tls = True

    def __init__(self, on_data: Any = None, greeting: bytes = b"") -> None:
        self.made: list[Recorder] = []
        self.on_data = on_data or (lambda p, data: p.transport.write(data))
        self.greeting = greeting

    def buildProtocol(self, addr: Any) -> Recorder:
        return Recorder(self)


@implementer(IPushProducer)
class Flood:
    """Writes C{total} bytes of a known pattern while not paused."""

    def __init__(self, transport: Any, total: int) -> None:
        self.transport = transport
        self.left = total
        self.paused = 0
        self.digest = hashlib.sha256()
        self.running = True

    def pauseProducing(self) -> None:
        self.paused += 1
        self.running = False

    def resumeProducing(self) -> None:
        self.running = True
        while self.running and self.left:
            piece = bytes([self.left % 251]) * min(self.left, 16384)
            self.left -= len(piece)
            self.digest.update(piece)
            self.transport.write(piece)
        if not self.left and self.running:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def stopProducing(self) -> None:
        self.running = False


def stdlib_context(cafile: str, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


class ThinLayerTests(EdgeTestCase):
    """The thin layer carries, closes and fails connections like a TLS transport must."""

    def setUp(self) -> None:
        super().setUp()
        self.threads = client_threads(self, "test-tls-layer")

    def serve(self, app: ThinFactory, **options: Any) -> ThinFactory:
        self.listen(self.known("app.test"), lambda hello, creator: app, **options)
        return app

    def in_thread(self, f: Any, *args: Any) -> Deferred[Any]:
        return within(deferToThreadPool(reactor, self.threads, f, *args))

    def stdlib(self, version: ssl.TLSVersion | None = None) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        return stdlib_context(self.certs.cafile, version).wrap_socket(
            raw, server_hostname="app.test")

    def test_available(self) -> None:
        """The installed pyOpenSSL gives the layer what it needs (else it is never used)."""
        self.assertTrue(AVAILABLE)

    async def test_echo_tls13_and_tls12(self) -> None:
        """Records are decrypted for the application and its answers encrypted, in both versions."""
        app = self.serve(ThinFactory())

        def exchange(version: ssl.TLSVersion) -> tuple[bytes, str]:
            with self.stdlib(version) as tls:
                tls.sendall(b"hello")
                got = b""
                while len(got) < 5:
                    got += tls.recv(100)
                return got, tls.version()

        self.assertEqual(await self.in_thread(exchange, ssl.TLSVersion.TLSv1_3),
                         (b"hello", "TLSv1.3"))
        self.assertEqual(await self.in_thread(exchange, ssl.TLSVersion.TLSv1_2),
                         (b"hello", "TLSv1.2"))
        edge = self.factory.connections[0]
        self.assertIsInstance(edge.tls, TLSLayer)
        self.assertIs(app.made[0].transport, edge.tls)
        for made in app.made:
            await within(made.lost)

    async def test_many_records_one_delivery(self) -> None:
        """Records that arrive in one TCP segment reach the application in one call."""
        calls: list[int] = []
        app = self.serve(ThinFactory(lambda p, data: calls.append(len(data))))
        client = await self.memory_client("app.test")
        await within(client.handshake)
        records = b""
        for i in range(20):
            client.conn.send(b"r%02d" % i)
            records += client.conn.bio_read(65536)
        client.write_raw(records)
        await within(self.wait_for(lambda: sum(calls) == 60))
        self.assertEqual(calls, [60])
        self.assertEqual(bytes(app.made[0].received),
                         b"".join(b"r%02d" % i for i in range(20)))
        client.transport.loseConnection()
        await within(app.made[0].lost)

    async def test_write_sequence(self) -> None:
        """
        A sequence of small and large pieces (any bytes-like) arrives whole
        and in order: small ones are gathered, large ones encrypted where
        they are.
        """
        pieces = [b"head:", bytes(range(256)) * 40, b":", b"x" * 4095, memoryview(b"y" * 70000),
                  bytearray(b"z" * 5000), b"", b":tail"]

        def answer(p: Recorder, data: bytes) -> None:
            p.transport.writeSequence(pieces)
            p.transport.writeSequence([])
            p.transport.writeSequence(piece for piece in (b"!", b"x" * 5000))
            p.transport.writeSequence((b"<", b"y" * 5000))

        self.serve(ThinFactory(answer))
        client = await self.memory_client("app.test")
        await within(client.handshake)
        client.send(b"go")
        expected = (b"".join(bytes(piece) for piece in pieces) + b"!" + b"x" * 5000 + b"<"
                    + b"y" * 5000)
        self.assertEqual(await within(client.plaintext_of(len(expected))), expected)
        client.transport.loseConnection()

    async def test_write_before_handshake(self) -> None:
        """What the application writes before the handshake completes is sent once it has."""
        self.serve(ThinFactory(greeting=b"welcome"))
        client = await self.memory_client("app.test")
        self.assertEqual(await within(client.plaintext_of(7)), b"welcome")
        client.transport.loseConnection()

    async def test_back_pressure_and_close(self) -> None:
        """
        A producer is paused while the client does not read, every byte
        arrives intact, and C{loseConnection} ends with C{close_notify}:
        the client sees a clean end, the application a clean close.
        """
        floods: list[Flood] = []

        def start(p: Recorder, data: bytes) -> None:
            flood = Flood(p.transport, 8 * 1024 * 1024)
            floods.append(flood)
            p.transport.registerProducer(flood, True)
            flood.resumeProducing()

        app = self.serve(ThinFactory(start))
        tls = await self.in_thread(self.stdlib)
        self.addCleanup(tls.close)
        await self.in_thread(tls.sendall, b"go")
        await within(self.wait_for(lambda: floods and floods[0].paused))

        def read_all() -> tuple[int, str]:
            digest, total = hashlib.sha256(), 0
            while data := tls.recv(262144):  # b"" on close_notify
                digest.update(data)
                total += len(data)
            tls.close()
            return total, digest.hexdigest()

        total, digest = await self.in_thread(read_all)
        self.assertEqual((total, digest), (8 * 1024 * 1024, floods[0].digest.hexdigest()))
        self.assertGreater(floods[0].paused, 0)
        reason = await within(app.made[0].lost)
        self.assertIsInstance(reason, ConnectionDone)

    async def test_peer_close_notify(self) -> None:
        """The client's close_notify is answered, and the application sees a clean close."""
        app = self.serve(ThinFactory())
        client = await self.memory_client("app.test")
        await within(client.handshake)
        client.conn.shutdown()
        client._flush()
        reason = await within(app.made[0].lost)
        self.assertIsInstance(reason, ConnectionDone)
        await within(client.closed)
        self.assertTrue(client.conn.get_shutdown() & SSL.RECEIVED_SHUTDOWN)

    async def test_data_and_close_notify_in_one_segment(self) -> None:
        """
        A record of data and the close_notify after it, in one TCP segment:
        the data reaches the application, then the close is answered (the
        layer reads on after a record while ciphertext is left).
        """
        calls: list[bytes] = []
        app = self.serve(ThinFactory(lambda p, data: calls.append(data)))
        client = await self.memory_client("app.test")
        await within(client.handshake)
        client.conn.send(b"last words")
        client.conn.shutdown()
        client.write_raw(client.conn.bio_read(65536))
        reason = await within(app.made[0].lost)
        self.assertEqual(calls, [b"last words"])
        self.assertIsInstance(reason, ConnectionDone)
        await within(client.closed)
        self.assertTrue(client.conn.get_shutdown() & SSL.RECEIVED_SHUTDOWN)

    async def test_linger_is_bounded(self) -> None:
        """
        A peer that neither answers the close_notify nor closes is cut
        off once the linger time is over.
        """

        def close(p: Recorder, data: bytes) -> None:
            p.transport.write(b"bye")
            p.transport.loseConnection()

        app = self.serve(ThinFactory(close), linger=0.5)
        release = threading.Event()

        def silent_client() -> None:
            with self.stdlib() as tls:
                tls.sendall(b"x")
                release.wait(WAIT)  # holds the socket, reads nothing

        held = self.in_thread(silent_client)
        await self.wait_for(lambda: app.made)
        reason = await within(app.made[0].lost)
        release.set()
        await held
        self.assertIsInstance(reason, ConnectionLost)
        self.assertNotIsInstance(reason, ConnectionDone)

    async def test_garbage_after_handshake(self) -> None:
        """A record that does not decrypt ends the connection with a TLS error."""
        app = self.serve(ThinFactory())
        client = await self.memory_client("app.test")
        await within(client.handshake)
        client.write_raw(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        reason = await within(app.made[0].lost)
        self.assertIsInstance(reason, TLSError)
        await within(client.closed)
        # The client heard why: the server's alert.
        [alert] = self.flushLoggedErrors(SSL.Error)
        self.assertIn("bad record mac", str(alert.value))

    async def test_handshake_failure(self) -> None:
        """A client with no cipher suite in common is refused; the application hears of it."""
        app = self.serve(ThinFactory())
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        context.set_cipher_list(b"AES128-SHA")  # RSA key exchange: not offered by the edge
        conn = SSL.Connection(context, None)
        conn.set_connect_state()
        conn.set_tlsext_host_name(b"app.test")
        client = MemoryTLSClient(conn)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=WAIT)
        await within(connectProtocol(endpoint, client))
        refused = await within(client.handshake).addErrback(lambda f: f.value)
        self.assertIsInstance(refused, SSL.Error)
        self.assertIn("handshake failure", str(refused))
        await self.wait_for(lambda: app.made)
        reason = await within(app.made[0].lost)
        self.assertIsInstance(reason, TLSError)
        self.assertIn("handshake failed", str(reason))

    async def test_switched_off(self) -> None:
        """With the layer switched off, the same application runs on TLSMemoryBIOProtocol."""
        self.serve(ThinFactory(), thin_tls=False)

        def exchange() -> bytes:
            with self.stdlib() as tls:
                tls.sendall(b"ping")
                return tls.recv(100)

        self.assertEqual(await self.in_thread(exchange), b"ping")
        self.assertIsInstance(self.factory.connections[0].tls, TLSMemoryBIOProtocol)

    def wait_for(self, condition: Any) -> Deferred[None]:
        from tests.support.waiting import until

        return Deferred.fromCoroutine(until(condition, within=WAIT))


class ProxyOverTLSTests(EdgeTestCase):
    """The reverse proxy behind the edge, on the thin layer: what it needs from TLS."""

    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        self.threads = client_threads(self, "test-proxy-tls")
        self.origin, upstream = listen_origin(self)
        sites = {"app.test": site("app.test", upstream)}
        pool = OriginPool(reactor, connect_timeout=2.0, response_timeout=5.0)
        self.addCleanup(pool.close)
        self.rows: list = []
        self.proxy = ProxyFactory(reactor, sites.get, pool, self.rows.append, Registry())
        self.listen(self.known("app.test"), self._app)
        self.context = stdlib_context(self.certs.cafile)

    def _app(self, hello: ClientHello, creator: Any) -> Factory:
        return self.proxy.for_sni(hello.server_name)

    def wrap(self, raw: socket.socket) -> ssl.SSLSocket:
        return self.context.wrap_socket(raw, server_hostname="app.test")

    def talk(self, *sends: bytes, **kw: Any) -> Deferred[Any]:
        return within(deferToThreadPool(reactor, self.threads, talk, self.port, *sends,
                                        wrap=self.wrap, **kw), 40)

    async def test_pipelined_keep_alive(self) -> None:
        """Requests written at once over TLS are answered in order on one connection."""
        responses, closed = await self.talk(get("/echo?1") + get("/size/10") + get("/echo?3"),
                                            responses=3)
        self.assertEqual([r.status for r in responses], [200, 200, 200])
        self.assertEqual(responses[0].json()["target"], "/echo?1")
        self.assertEqual(responses[1].body, b"x" * 10)
        self.assertEqual(responses[2].json()["target"], "/echo?3")
        self.assertFalse(closed)
        self.assertIsInstance(self.factory.connections[0].tls, TLSLayer)

    async def test_connection_close(self) -> None:
        """C{Connection: close} gets its response, then a clean TLS close."""
        [r], closed = await self.talk(get("/echo", extra="Connection: close\r\n"))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header(b"connection"), b"close")
        self.assertTrue(closed)

    async def test_large_bodies_bounded_memory(self) -> None:
        """1 GiB up and 1 GiB down (with a length, then chunked) through TLS, in bounded memory."""
        await assert_streams_bounded(self, 1024 * 1024 * 1024, 64 * 1024)

    test_large_bodies_bounded_memory.timeout = 120  # type: ignore[attr-defined]  # 3 GiB through TLS

    async def test_websocket_tunnel(self) -> None:
        """An upgrade over TLS turns into a byte tunnel both ways."""

        def client() -> bytes:
            with self.wrap(socket.create_connection(("127.0.0.1", self.port),
                                                    timeout=WAIT)) as s:
                s.sendall(get("/ws", extra="Connection: Upgrade\r\nUpgrade: websocket\r\n")
                          + b"early")
                got = b""
                while b"early" not in got:
                    got += s.recv(1000)
                s.sendall(b"ping")
                while not got.endswith(b"ping"):
                    got += s.recv(1000)
                return got

        out = await within(deferToThreadPool(reactor, self.threads, client))
        self.assertTrue(out.startswith(b"HTTP/1.1 101 "), out)
        self.assertTrue(out.endswith(b"\r\n\r\nearlyping"), out)

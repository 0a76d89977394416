"""
Tests for L{veil.edge.apps}: what runs inside TLS after the handshake.

HTTP applications are driven with raw requests over a L{StringTransport}
(the TLS layer below them is not needed to check routing).  The
C{tls-alpn-01} protocol is also run behind a real TLS server over
L{iosim}, because its whole point is the handshake.
"""

from __future__ import annotations

from datetime import datetime, timezone

import attrs
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from zope.interface import implementer

from tests.unit.test_plain import Connection, Response, make_site, request
from veil.acme.challenges import tls_alpn01_certificate
from veil.edge.apps import AppRouter, CloseAfterHandshake
from veil.edge.contexts import build_challenge_tls
from veil.edge.hello import ACME_TLS_ALPN, ClientHello
from veil.store.sites import Site

SHOP = "shop.test"
DASHBOARD = "dash.test"


def hello(server_name: str | None, alpn: tuple[bytes, ...] = (b"http/1.1",)) -> ClientHello:
    """A ClientHello as the edge parsed it."""
    return ClientHello(legacy_version=0x0303, random=b"\x00" * 32, session_id=b"",
                       cipher_suites=(0x1301,), compression_methods=(0,),
                       extensions=(0, 16), server_name=server_name, alpn_protocols=alpn)


class TinyDashboard(Resource):
    """A stand-in dashboard: C{/} and C{/health}, recording the paths it renders."""

    def __init__(self) -> None:
        super().__init__()
        self.rendered: list[bytes] = []
        self.putChild(b"", self)
        self.putChild(b"health", Health(self.rendered))

    def render_GET(self, request: IRequest) -> bytes:
        self.rendered.append(request.path)
        return b"dashboard"


class Health(Resource):
    """The stand-in dashboard's C{/health}."""

    isLeaf = True

    def __init__(self, rendered: list[bytes]) -> None:
        super().__init__()
        self.rendered = rendered

    def render_GET(self, request: IRequest) -> bytes:
        self.rendered.append(request.path)
        return b"healthy"


class RouterCase(SynchronousTestCase):
    """Helpers: an L{AppRouter} over a one-site table and a tiny dashboard."""

    def setUp(self) -> None:
        self.sites: dict[str, Site] = {SHOP: make_site(SHOP, status="ssl_provisioning")}
        self.dashboard = TinyDashboard()
        self.clock = Clock()
        self.router = AppRouter(self.sites.get, self.dashboard, DASHBOARD, clock=self.clock)

    def exchange(self, sni: str | None, raw: bytes) -> Response:
        factory = self.router.factory_for(hello(sni), object())
        self.assertIsInstance(factory, server.Site)
        connection = Connection.to(factory)
        connection.send(raw)
        return connection.response()


class DashboardTests(RouterCase):
    """The dashboard host is served by the dashboard resource, on one site."""

    def test_served(self) -> None:
        """Requests for the dashboard host reach the dashboard resource, at any path."""
        response = self.exchange(DASHBOARD, request(host=b"dash.test"))
        self.assertEqual((response.code, response.body), (200, b"dashboard"))
        response = self.exchange(DASHBOARD, request(target=b"/health", host=b"dash.test"))
        self.assertEqual((response.code, response.body), (200, b"healthy"))
        self.assertEqual(response.header(b"server"), b"Veil")
        self.assertEqual(response.header(b"x-content-type-options"), b"nosniff")

    def test_built_once(self) -> None:
        """Every dashboard connection gets the same site object."""
        first = self.router.factory_for(hello(DASHBOARD), object())
        self.assertIs(self.router.factory_for(hello(DASHBOARD), object()), first)
        self.assertFalse(first.displayTracebacks)

    def test_host_case_and_port(self) -> None:
        """A Host differing only in case, a port or a trailing dot matches the SNI name."""
        for host in (b"DASH.Test", b"dash.test:443", b"dash.test.:8443"):
            response = self.exchange(DASHBOARD, request(host=host))
            self.assertEqual(response.code, 200, host)

    def test_fronting_refused(self) -> None:
        """A Host other than the SNI name is a 421 and never reaches the dashboard."""
        for host in (b"shop.test", b"other.example", b"dash.test.evil"):
            response = self.exchange(DASHBOARD, request(host=host))
            self.assertEqual(response.code, 421, host)
            self.assertEqual(response.header(b"server"), b"Veil")
        self.assertEqual(self.dashboard.rendered, [])

    def test_absolute_form(self) -> None:
        """
        An absolute-form target is checked by its authority (which wins over
        Host) and reaches the dashboard in origin form.
        """
        response = self.exchange(DASHBOARD, request(target=b"https://dash.test/health",
                                                    host=b"dash.test"))
        self.assertEqual((response.code, response.body), (200, b"healthy"))
        self.assertEqual(self.dashboard.rendered, [b"/health"])
        response = self.exchange(DASHBOARD, request(target=b"https://shop.test/",
                                                    host=b"dash.test"))
        self.assertEqual(response.code, 421)

    def test_missing_host(self) -> None:
        """A request without a Host (or with two) is a 400."""
        self.assertEqual(self.exchange(DASHBOARD, request(host=None)).code, 400)
        two = request(host=b"dash.test", headers=(b"Host: dash.test",))
        self.assertEqual(self.exchange(DASHBOARD, two).code, 400)
        self.assertEqual(self.dashboard.rendered, [])

    def test_no_dashboard_host(self) -> None:
        """Without a dashboard host, no name reaches the dashboard."""
        router = AppRouter(self.sites.get, self.dashboard, None, clock=self.clock)
        connection = Connection.to(router.factory_for(hello(DASHBOARD), object()))
        connection.send(request(host=b"dash.test"))
        self.assertEqual(connection.response().code, 421)


class PlaceholderTests(RouterCase):
    """A site's host gets an honest 503 until the reverse proxy exists."""

    def test_placeholder(self) -> None:
        """
        Any request for a site is a 503 naming the site, with Retry-After: 60
        and the site's status in X-Veil-Status.
        """
        for method in (b"GET", b"POST", b"DELETE"):
            response = self.exchange(SHOP, request(method, b"/cart?id=1"))
            self.assertEqual(response.code, 503, method)
            self.assertEqual(response.body, b"Veil: site shop.test is not proxied yet.\n")
            self.assertEqual(response.header(b"content-type"), b"text/plain; charset=utf-8")
            self.assertEqual(response.header(b"retry-after"), b"60")
            self.assertEqual(response.header(b"x-veil-status"), b"ssl_provisioning")
            self.assertEqual(response.header(b"server"), b"Veil")
            self.assertEqual(response.header(b"x-content-type-options"), b"nosniff")

    def test_fronting_refused(self) -> None:
        """A Host other than the SNI name, even another site or the dashboard, is a 421."""
        self.sites["other.test"] = make_site("other.test")
        for host in (b"other.test", b"dash.test"):
            response = self.exchange(SHOP, request(host=host))
            self.assertEqual(response.code, 421, host)
        self.assertEqual(self.dashboard.rendered, [])

    def test_host_case_and_port(self) -> None:
        """Upper case and a port in the Host still match the site."""
        self.assertEqual(self.exchange(SHOP, request(host=b"SHOP.TEST:443")).code, 503)

    def test_current_status(self) -> None:
        """X-Veil-Status shows the site's status at request time."""
        factory = self.router.factory_for(hello(SHOP), object())
        self.sites[SHOP] = attrs.evolve(self.sites[SHOP], status="live")
        connection = Connection.to(factory)
        connection.send(request())
        self.assertEqual(connection.response().header(b"x-veil-status"), b"live")

    def test_site_removed(self) -> None:
        """A site removed after the handshake is a 421 on that connection."""
        factory = self.router.factory_for(hello(SHOP), object())
        del self.sites[SHOP]
        connection = Connection.to(factory)
        connection.send(request())
        self.assertEqual(connection.response().code, 421)


class UnknownNameTests(RouterCase):
    """Names that are neither the dashboard nor a site get 421 for everything."""

    def test_unknown_name(self) -> None:
        """An unknown SNI name is a 421 whatever the Host, even a known site's."""
        for host in (b"stranger.test", b"shop.test", b"dash.test"):
            response = self.exchange("stranger.test", request(host=host))
            self.assertEqual(response.code, 421, host)
            self.assertEqual(response.header(b"server"), b"Veil")
        self.assertEqual(self.dashboard.rendered, [])

    def test_no_name(self) -> None:
        """A hello without a server name (the edge refuses those) is a 421 too."""
        self.assertEqual(self.exchange(None, request()).code, 421)


class AcmeTlsAlpnTests(RouterCase):
    """A tls-alpn-01 validation connection is closed as soon as the handshake completes."""

    def build(self, sni: str = SHOP) -> tuple[Protocol, StringTransport]:
        factory = self.router.factory_for(hello(sni, alpn=(ACME_TLS_ALPN,)), object())
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_closes_after_handshake(self) -> None:
        """
        The protocol waits for the handshake (closing in connectionMade
        would abort it), then closes cleanly, not by abort, writing nothing.
        """
        protocol, transport = self.build()
        self.assertIsInstance(protocol, CloseAfterHandshake)
        self.assertTrue(IHandshakeListener.providedBy(protocol))
        self.assertFalse(transport.disconnecting)
        protocol.handshakeCompleted()
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        self.assertEqual(transport.value(), b"")

    def test_any_name(self) -> None:
        """acme-tls/1 wins over the name: the dashboard's and unknown names too."""
        for sni in (DASHBOARD, SHOP, "not-yet-a-site.test"):
            protocol, _ = self.build(sni)
            self.assertIsInstance(protocol, CloseAfterHandshake, sni)

    def test_only_exact_alpn(self) -> None:
        """A client offering acme-tls/1 among other protocols gets the normal application."""
        factory = self.router.factory_for(hello(SHOP, alpn=(ACME_TLS_ALPN, b"http/1.1")),
                                          object())
        self.assertIsInstance(factory, server.Site)

    def test_stalled_handshake_aborted(self) -> None:
        """A handshake still not complete after the timeout is aborted."""
        _, transport = self.build()
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)

    def test_timer_cancelled(self) -> None:
        """Completing the handshake, or losing the connection, cancels the timer."""
        protocol, _ = self.build()
        protocol.handshakeCompleted()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        protocol, _ = self.build()
        protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])


@implementer(IOpenSSLClientConnectionCreator)
@attrs.frozen
class AcmeValidator:
    """
    A client like a CA validating tls-alpn-01: SNI, ALPN acme-tls/1 only,
    and no chain verification (the certificate is self-signed, with a
    critical extension OpenSSL does not know).
    """

    name: str

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_alpn_protos([ACME_TLS_ALPN])
        connection = SSL.Connection(context, None)
        connection.set_tlsext_host_name(self.name.encode("ascii"))
        connection.set_connect_state()
        return connection


@implementer(IHandshakeListener)
class Observer(Protocol):
    """Records the handshake's outcome and how the connection ended."""

    completed = False
    protocol: bytes | None = None
    certificate: x509.Certificate | None = None
    lost: Failure | None = None
    received = b""

    def handshakeCompleted(self) -> None:
        self.completed = True
        self.protocol = self.transport.negotiatedProtocol
        self.certificate = self.transport.getPeerCertificate().to_cryptography()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason


class ObserverFactory(Factory):
    """Builds L{Observer}s and keeps them (TLS forgets its application on close)."""

    def __init__(self) -> None:
        self.built: list[Observer] = []

    def buildProtocol(self, addr: object) -> Observer:
        observer = Observer()
        observer.factory = self
        self.built.append(observer)
        return observer


class AcmeTlsAlpnHandshakeTests(SynchronousTestCase):
    """Behind a real TLS server, the validator sees a whole handshake, then close_notify."""

    def test_handshake_then_close(self) -> None:
        """
        The validator completes the handshake with acme-tls/1 and the
        challenge certificate for the name, then the server closes the
        connection cleanly without sending application data.
        """
        clock = Clock()
        clock.advance(datetime.now(timezone.utc).timestamp())
        cert_pem, key_pem = tls_alpn01_certificate(SHOP, "token.thumbprint", clock)
        router = AppRouter({SHOP: make_site(SHOP)}.get, Resource(), DASHBOARD, clock=clock)
        creator = build_challenge_tls(cert_pem, key_pem)
        app = router.factory_for(hello(SHOP, alpn=(ACME_TLS_ALPN,)), creator)
        server_factory = TLSMemoryBIOFactory(creator, False, app, clock)
        observers = ObserverFactory()
        client_factory = TLSMemoryBIOFactory(AcmeValidator(SHOP), True, observers, clock)
        _, _, pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
            greet=False, clock=clock)
        pump.flush()
        [observer] = observers.built
        self.assertTrue(observer.completed)
        self.assertEqual(observer.protocol, ACME_TLS_ALPN)
        names = observer.certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        self.assertEqual(names, [SHOP])
        self.assertEqual(observer.received, b"")
        self.assertTrue(observer.lost.check(ConnectionDone), observer.lost)
        self.assertEqual(clock.getDelayedCalls(), [])

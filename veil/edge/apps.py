"""
What runs inside TLS once the edge has chosen a certificate.

L{AppRouter.factory_for} is the edge's C{app_factory_for}: from the
ClientHello it picks the protocol factory for the decrypted stream.

  - ALPN offering exactly C{acme-tls/1}: a CA validating C{tls-alpn-01}.
    The handshake is all it needs, so the connection is closed as soon as
    the handshake completes (the TLS layer sends C{close_notify}).  This
    is checked first: the CA may be validating the dashboard's own name.
  - The dashboard host: the dashboard's resource, in one site built once.
  - A site's host: until the reverse proxy exists, an honest placeholder
    that answers every request with 503.
  - Any other name (the resolver refuses those, so it should not happen):
    421 to every request.

Inside TLS every request must be for the name the client asked for in
SNI; any other C{Host} gets 421 (a guard against domain fronting).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from veil.edge.hello import ACME_TLS_ALPN, ClientHello
from veil.edge.plain import WebSite, misdirected, respond
from veil.store.sites import Site

#: The C{Retry-After} of the placeholder's 503.
PLACEHOLDER_RETRY_AFTER = b"60"


@implementer(IHandshakeListener)
class CloseAfterHandshake(Protocol):
    """
    A C{tls-alpn-01} validation connection: the CA only needs the
    handshake, so close as soon as it completes (TLS sends C{close_notify}).
    A handshake that has not completed within the factory's C{timeout} is
    aborted.

    Not in C{connectionMade}: L{TLSMemoryBIOProtocol} connects the
    application before the handshake has begun, and a C{loseConnection}
    then aborts the connection, so the CA would never see the certificate.
    """

    factory: ChallengeFactory
    _timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        clock = self.factory.clock
        if clock is not None:
            self._timer = clock.callLater(self.factory.timeout, self._too_slow)

    def handshakeCompleted(self) -> None:
        self._cancel_timer()
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()

    def _too_slow(self) -> None:
        self._timer = None
        self.transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class ChallengeFactory(Factory):
    """
    Builds L{CloseAfterHandshake} protocols.

    @ivar clock: bounds the handshake when given.
    @ivar timeout: the bound, in seconds.
    """

    protocol = CloseAfterHandshake

    def __init__(self, clock: IReactorTime | None, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout


class _Placeholder(Resource):
    """Answers every request for a site with 503 until the proxy exists."""

    isLeaf = True

    def __init__(self, name: str, sites: Callable[[str], Site | None]) -> None:
        super().__init__()
        self._name = name
        self._sites = sites

    def render(self, request: IRequest) -> int:
        site = self._sites(self._name)
        if site is None:
            # Removed since the handshake.
            return misdirected(request)
        return respond(request, http.SERVICE_UNAVAILABLE,
                       f"Veil: site {self._name} is not proxied yet.\n".encode(),
                       headers={b"retry-after": PLACEHOLDER_RETRY_AFTER,
                                b"cache-control": b"no-store",
                                b"x-veil-status": site.status.encode("utf-8")})


class _Misdirected(Resource):
    """Answers every request with 421."""

    isLeaf = True

    def render(self, request: IRequest) -> int:
        return misdirected(request)


class AppRouter:
    """
    Chooses the application behind each TLS connection.

    @param sites: the site for a host name (lower-case), or L{None}.
    @param dashboard: the dashboard's root resource.
    @param dashboard_host: the dashboard's host name, or L{None} when the
        dashboard is not served on the edge.
    @param clock: drives the HTTP idle timeouts (the global reactor when
        L{None}, as twisted.web does) and bounds C{tls-alpn-01} handshakes
        (unbounded when L{None}).
    @param timeout: the HTTP idle timeout and the C{tls-alpn-01} handshake
        bound, in seconds.
    """

    def __init__(self, sites: Callable[[str], Site | None], dashboard: IResource,
                 dashboard_host: str | None, *, clock: IReactorTime | None = None,
                 timeout: float = 60.0) -> None:
        self._sites = sites
        self._dashboard_host = dashboard_host
        self._clock = clock
        self._timeout = timeout
        self._dashboard = (None if dashboard_host is None else
                           WebSite(dashboard, host=dashboard_host, timeout=timeout, clock=clock))
        if self._dashboard is not None and hasattr(dashboard, "request_factory"):
            # The dashboard's own requests: bodies bounded as on its port.
            self._dashboard.requestFactory = dashboard.request_factory
        self._misdirected = WebSite(_Misdirected(), timeout=timeout, clock=clock)
        self._acme = ChallengeFactory(clock, timeout)
        #: The reverse proxy, once Veil has started (see L{veil.edge.service}).
        self.proxy: Any = None

    def factory_for(self, hello: ClientHello, creator: Any) -> Factory:
        """
        The protocol factory for a connection whose ClientHello is C{hello}
        (C{creator} is the chosen TLS connection creator, unused here).
        """
        if hello.alpn_protocols == (ACME_TLS_ALPN,):
            return self._acme
        name = hello.server_name
        if name is None:
            return self._misdirected
        if name == self._dashboard_host and self._dashboard is not None:
            return self._dashboard
        if self._sites(name) is not None:
            if self.proxy is not None:
                return self.proxy.for_sni(name)
            return WebSite(_Placeholder(name, self._sites), host=name,
                           timeout=self._timeout, clock=self._clock)
        return self._misdirected

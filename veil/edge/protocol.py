"""
The edge's TCP protocol: read the ClientHello, pick the certificate, then TLS.

pyOpenSSL's SNI callback is synchronous, so it cannot wait for a certificate
to be issued.  L{EdgeProtocol} therefore reads the ClientHello itself
(bounded in size and time), parses the server name and ALPN, asks the
resolver for a context (at once from memory, or later from the store or a
CA), and only then builds a L{TLSMemoryBIOProtocol} on the same transport
and replays the bytes it has read.  It stays the transport's protocol and
forwards every later event to the TLS protocol.

Garbage, plain HTTP, a missing or invalid server name, a malformed or
oversized hello, and names Veil will not serve end the connection cleanly,
with a counter (C{veil_edge_rejected_total} by reason) and a warning that
is rate-limited per reason (one a minute, with the count of those held
back).  Where the peer speaks TLS it gets the fatal alert of
L{ALERT_FOR_HELLO} or of the refusal; plain HTTP gets a plain-text 400;
other bytes, and a peer that fell silent or left, get nothing but the
close.  Nothing raises into the reactor.

Time is bounded at each step: the hello must be complete within
C{hello_timeout} of the connection, the certificate chosen within
C{resolve_timeout}, and the handshake complete within C{handshake_timeout}
of TLS starting (the peer then has the server's first flight).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError as ResolveTimedOut
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from veil.deadlines import Deadlines
from veil.edge import tlslayer
from veil.edge.hello import ClientHello, HelloError, HelloReader
from veil.edge.tlslayer import TLSLayer
from veil.errors import IssuanceFailed, IssuanceRefused, VeilError
from veil.logs import Throttle, redact_ip
from veil.metrics import Registry
from veil.tcp import no_delay

_log = Logger()

#: A fatal TLS alert record (TLS 1.2 framing, which every version accepts
#: before the handshake): level 2 (fatal), description as given.
def _alert(description: int) -> bytes:
    return bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description])


ALERT_UNEXPECTED_MESSAGE = _alert(10)
ALERT_RECORD_OVERFLOW = _alert(22)
ALERT_HANDSHAKE_FAILURE = _alert(40)
ALERT_ILLEGAL_PARAMETER = _alert(47)
ALERT_DECODE_ERROR = _alert(50)
ALERT_PROTOCOL_VERSION = _alert(70)
ALERT_INTERNAL_ERROR = _alert(80)
ALERT_UNRECOGNIZED_NAME = _alert(112)

#: The alert a hello refused by L{HelloReader} gets (RFC 8446 section 6.2),
#: by reason; the other reasons are not TLS (C{not_tls}, C{sslv2},
#: C{plain_http}, which gets a plain-text 400) or have no peer left to
#: tell (C{truncated}, C{empty}).
ALERT_FOR_HELLO = {
    "malformed": ALERT_DECODE_ERROR,
    "bad_record_version": ALERT_PROTOCOL_VERSION,
    "record_too_large": ALERT_RECORD_OVERFLOW,
    "non_handshake_record": ALERT_UNEXPECTED_MESSAGE,
    "not_client_hello": ALERT_UNEXPECTED_MESSAGE,
    "too_large": ALERT_ILLEGAL_PARAMETER,
    "too_fragmented": ALERT_ILLEGAL_PARAMETER,
}

#: Seconds between two warnings for the same kind of rejected connection.
WARN_EVERY = 60.0

_PLAIN_HTTP_BODY = b"This port speaks HTTPS; use an https:// URL.\r\n\r\n"
_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % len(_PLAIN_HTTP_BODY)
) + _PLAIN_HTTP_BODY

#: resolve(hello) -> a connection creator, or a Deferred of one.
Resolver = Callable[[ClientHello], Any]
#: app_factory(hello, creator) -> the protocol factory to run inside TLS.
AppFactoryFor = Callable[[ClientHello, Any], Factory]


class EdgeFactory(Factory):
    """Builds an L{EdgeProtocol} for every accepted connection."""

    noisy = False

    def __init__(self, resolve: Resolver, app_factory_for: AppFactoryFor,
                 clock: IReactorTime, metrics: Registry, hello_timeout: float = 10.0,
                 max_hello: int = 16384, resolve_timeout: float = 90.0,
                 thin_tls: bool | None = None, linger: float = tlslayer.LINGER,
                 handshake_timeout: float = 10.0) -> None:
        self.resolve = resolve
        self.app_factory_for = app_factory_for
        self.clock = clock
        self.hello_timeout = hello_timeout
        self.handshake_timeout = handshake_timeout
        #: Hello and handshake time-outs and close_notify lingers, on one timer.
        self.deadlines = Deadlines(
            clock, Deadlines.tick_for(hello_timeout, handshake_timeout, linger))
        #: One warning per kind of rejection and minute.
        self.warnings = Throttle(clock, WARN_EVERY)
        self.max_hello = max_hello
        self.resolve_timeout = resolve_timeout
        #: Run the applications that allow it on L{TLSLayer}.
        self.thin_tls = tlslayer.AVAILABLE if thin_tls is None else thin_tls
        #: Seconds a thin-layer peer has to answer our close_notify.
        self.linger = linger
        self.rejected = metrics.counter(
            "veil_edge_rejected_total", "Edge connections closed before TLS, by reason")
        self.handshakes = metrics.counter(
            "veil_edge_tls_started_total", "Edge connections handed to TLS")

    def buildProtocol(self, addr: IAddress) -> EdgeProtocol:
        return EdgeProtocol(self, addr)


class EdgeProtocol(Protocol):
    """
    One edge connection: read-ahead, then a transparent pipe to TLS.

    @ivar tls: the TLS protocol once the certificate is chosen.
    """

    def __init__(self, factory: EdgeFactory, addr: IAddress) -> None:
        self.factory = factory
        self.addr = addr
        self.tls: TLSMemoryBIOProtocol | TLSLayer | None = None
        self._reader = HelloReader(max_size=factory.max_hello)
        #: While the hello is awaited: when it is too late (see L{Deadlines}).
        self.deadline = 0.0
        self._resolving: Deferred[Any] | None = None
        self._late = bytearray()
        self._paused = False
        self._closed = False

    # -- before TLS ----------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        factory = self.factory
        self.deadline = factory.clock.seconds() + factory.hello_timeout
        factory.deadlines.add(self)

    def dataReceived(self, data: bytes) -> None:
        tls = self.tls
        if tls is not None:
            tls.dataReceived(data)
            if self.deadline and self._handshake_done():
                self._cancel_timer()
            return
        if self._resolving is not None:
            # The transport keeps reading while the certificate is chosen:
            # a paused TCP transport does not notice that the client has
            # gone, so the lookup could not be cancelled.  A TLS client
            # sends little or nothing before the server's first flight;
            # keep it for the replay, and only stop reading (leaving the
            # rest in the kernel) if it is more than a hello's worth.
            self._late += data
            if len(self._late) > self.factory.max_hello and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
            return
        if self._closed:
            return
        try:
            hello = self._reader.feed(data)
        except HelloError as e:
            self._reject(e.reason, e.detail, alert=ALERT_FOR_HELLO.get(e.reason),
                         http=e.looks_like_http)
            return
        if hello is None:
            return
        self._cancel_timer()
        if hello.server_name is None:
            reason = "invalid_sni" if hello.server_name_invalid else "no_sni"
            self._reject(reason, "", alert=ALERT_UNRECOGNIZED_NAME)
            return
        self._choose(hello)

    def _choose(self, hello: ClientHello) -> None:
        try:
            chosen = self.factory.resolve(hello)
        except Exception:
            chosen = Failure()
        if not isinstance(chosen, (Deferred, Failure)):
            self._start_tls(hello, chosen)
            return
        d = chosen if isinstance(chosen, Deferred) else Deferred()
        if isinstance(chosen, Failure):
            d.errback(chosen)
        d.addTimeout(self.factory.resolve_timeout, self.factory.clock)
        self._resolving = d
        d.addCallbacks(lambda creator: self._resolved(hello, creator),
                       lambda f: self._not_resolved(hello, f))

    def _resolved(self, hello: ClientHello, creator: Any) -> None:
        self._resolving = None
        if self._closed:
            return
        self._start_tls(hello, creator)
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def _not_resolved(self, hello: ClientHello, failure: Failure) -> None:
        self._resolving = None
        if failure.check(CancelledError) and self._closed:
            return
        name = hello.server_name
        if failure.check(IssuanceRefused):
            self._reject("name_refused", f"{name}: {failure.value}", alert=ALERT_UNRECOGNIZED_NAME)
        elif failure.check(IssuanceFailed):
            self._reject("issuance_failed", f"{name}: {failure.value}", alert=ALERT_INTERNAL_ERROR)
        elif failure.check(CancelledError, ResolveTimedOut):
            self._reject("certificate_timeout", f"{name}", alert=ALERT_INTERNAL_ERROR)
        elif failure.check(VeilError):
            # Expected trouble, such as the database being unreachable.
            self._reject("unavailable", f"{name}: {failure.value}", alert=ALERT_INTERNAL_ERROR)
        else:
            _log.failure("Choosing a certificate for {name} failed", failure, name=name)
            self._reject("resolver_error", f"{name}", alert=ALERT_INTERNAL_ERROR)

    def _start_tls(self, hello: ClientHello, creator: Any) -> None:
        replay = self._reader.buffered + bytes(self._late)
        self._late.clear()
        try:
            app_factory = self.factory.app_factory_for(hello, creator)
            if self.factory.thin_tls and getattr(app_factory, "thin_tls", False):
                # The proxy: the thin layer, which starts with the replay.
                thin = TLSLayer(self.transport, creator.serverConnectionForTLS(None),
                                app_factory.buildProtocol(self.addr), self.factory.deadlines,
                                linger=self.factory.linger, peer=self.addr)
                self.tls = thin
                self.factory.handshakes.inc()
                self._time_handshake()
                thin.start(replay)
                return
            tls_factory = TLSMemoryBIOFactory(creator, False, app_factory,
                                              clock=self.factory.clock)
            tls = tls_factory.buildProtocol(self.addr)
            tls.makeConnection(self.transport)
        except Exception:
            # A bug in the resolver's creator or the application factory;
            # when the creator came from a Deferred, raising here would
            # leave the error in that Deferred and the connection open.
            _log.failure("Starting TLS for {name} failed", name=hello.server_name)
            self._reject("tls_setup_error", f"{hello.server_name}", alert=ALERT_INTERNAL_ERROR)
            return
        self.tls = tls
        self.factory.handshakes.inc()
        self._time_handshake()
        tls.dataReceived(replay)
        if self.deadline and self._handshake_done():
            self._cancel_timer()

    def _time_handshake(self) -> None:
        factory = self.factory
        self.deadline = factory.clock.seconds() + factory.handshake_timeout
        factory.deadlines.add(self)

    def _handshake_done(self) -> bool:
        """Whether the TLS handshake is complete (the peer's Finished has come)."""
        tls = self.tls
        if isinstance(tls, TLSLayer):
            return tls.handshake_done
        return tls is not None and tls.getHandle().get_peer_finished() is not None

    def expired(self) -> None:
        """
        The hello, or after it the handshake, did not complete in time (the
        factory's L{Deadlines} says so).
        """
        factory = self.factory
        factory.deadlines.discard(self)
        if self.tls is None:
            self._reject("hello_timeout", f"{len(self._reader.buffered)} bytes in"
                         f" {factory.hello_timeout:g} s")
        elif not self._closed:
            self._closed = True
            self._count("handshake_timeout", f"after {factory.handshake_timeout:g} s",
                        when="during the TLS handshake")
            self.transport.abortConnection()

    def _reject(self, reason: str, detail: str, alert: bytes | None = None,
                http: bool = False) -> None:
        self._cancel_timer()
        if self._closed:
            return
        self._closed = True
        self._count(reason, detail)
        if http:
            self.transport.write(_PLAIN_HTTP_ANSWER)
        elif alert is not None:
            self.transport.write(alert)
        self.transport.loseConnection()

    def _count(self, reason: str, detail: str, when: str = "before TLS") -> None:
        factory = self.factory
        factory.rejected.inc(reason=reason)
        factory.warnings.emit(
            _log.warn, reason,
            "Edge connection from {client} closed {when}: {reason} {detail}{suppressed_text}",
            client=redact_ip(getattr(self.addr, "host", "")), when=when, reason=reason,
            detail=detail)

    def _cancel_timer(self) -> None:
        if self.deadline:
            self.deadline = 0.0
            self.factory.deadlines.discard(self)

    # -- always --------------------------------------------------------------

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_timer()
        if self.tls is None and self._resolving is None and not self._closed:
            # The client left during the hello.  Leaving before sending
            # anything (a port check) is not worth a warning.
            try:
                self._reader.finish()
            except HelloError as e:
                if e.reason != "empty":
                    self._count(e.reason, e.detail)
        self._closed = True
        if self._resolving is not None:
            resolving, self._resolving = self._resolving, None
            resolving.cancel()
        if self.tls is not None:
            self.tls.connectionLost(reason)

"""
Origin connections: an HTTP/1.1 client protocol (L{OriginConnection}) and
per-origin pools of idle keep-alive connections (L{OriginPool}).

A pool keeps, per origin (scheme, host, port, verification), a LIFO list
of idle connections (the most recently used is the most likely to be
alive), at most C{max_per_origin} connections open or opening, and a queue
of waiters, each with its own Deferred.  Idle connections older than
C{idle_timeout} are closed by a sweep that runs while any is idle (so a
connection may live up to a quarter of C{idle_timeout} longer); one the
origin closes leaves the idle list at once.

The exchange using a connection (the proxy's, see L{veil.proxy.server})
is its I{listener}: it receives C{origin_interim}, C{origin_head},
C{origin_body}, C{origin_done}, C{origin_upgraded} and C{origin_failed},
and C{origin_flush} after every read that delivered part of a response
without completing it (so that a listener may gather what one read
delivers into one write).

A response head larger than C{MAX_HEAD} bytes or with more than
C{MAX_HEADERS} header fields is an invalid response: the connection is
dropped and the exchange fails (the client gets a 502).

HTTPS origins: the connection sends the I{site's} name in SNI and, when the
site's C{origin_tls_verify} is true, requires a certificate valid for that
name (as a CDN's "full (strict)" mode does: the origin serves the site's own
certificate, whatever address the upstream names), from a root the pool
trusts: the system's, plus C{extra_roots} (C{edge.origin_ca_bundle}).  With
verification off the certificate is not checked at all.
"""

from __future__ import annotations

import array
import fcntl
import termios
from collections import deque
from collections.abc import Callable
from itertools import chain
from typing import Any, NamedTuple
from typing import Protocol as TypingProtocol

import httptools
from OpenSSL import SSL, crypto
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, gatherResults
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from veil.deadlines import Deadlines
from veil.logs import Throttle
from veil.tcp import TCPConnector, no_delay

_log = Logger()

#: Looked up once (they are used once per request that reuses a connection).
_ioctl = fcntl.ioctl
_FIONREAD = termios.FIONREAD

#: Failure kinds reported to a listener.
CONNECT, TIMEOUT, LOST, INVALID = "connect", "timeout", "lost", "invalid"

#: Bounds of an origin's response head (status line and header fields).
MAX_HEAD = 32 * 1024
MAX_HEADERS = 100
#: Bytes received while a head is incomplete before giving up on it, even
#: when llhttp is still buffering one endless header line.
_MAX_HEAD_BYTES = 2 * MAX_HEAD + 65536


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the origin's response head is over the limits."""


class _Stray(Exception):
    """Raised from a parser callback: bytes follow a complete response."""


class PoolFull(Exception):
    """No connection to the origin became free in time: all C{size} are busy."""

    def __init__(self, key: OriginKey, size: int) -> None:
        super().__init__(f"all {size} connections to {key.host}:{key.port} are busy")
        self.key = key
        self.size = size


class Listener(TypingProtocol):
    body_done: bool
    upgrade: bytes | None

    def origin_interim(self, status: int, reason: bytes, headers: list) -> None: ...
    def origin_head(self, status: int, reason: bytes, headers: list, length: int,
                    chunked: bool) -> None: ...
    def origin_body(self, data: bytes) -> None: ...
    def origin_flush(self) -> None: ...
    def origin_done(self) -> None: ...
    def origin_upgraded(self, conn: OriginConnection, rest: bytes) -> None: ...
    def origin_failed(self, kind: str, conn: OriginConnection | None) -> None: ...
    def send_stalled(self) -> float: ...
    def send_timed_out(self) -> None: ...


class OriginKey(NamedTuple):
    """
    Which connections are interchangeable (a tuple: it is hashed twice per
    request, and a tuple hashes in C).

    @ivar tls_name: for C{https}, the name sent in SNI and verified (the
        site's domain); C{""} for C{http}.
    """

    scheme: str
    host: str
    port: int
    verify: bool
    tls_name: str = ""


def parse_upstream(upstream: str, verify: bool = True, tls_name: str = "") -> OriginKey:
    """
    An origin key from a site's C{http(s)://host[:port]} upstream; an
    C{https} origin's certificate is checked for C{tls_name} (the upstream's
    host when empty).
    """
    scheme, sep, rest = upstream.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"unsupported upstream {upstream!r}")
    authority = rest.split("/", 1)[0]
    if authority.startswith("["):
        host, _, tail = authority[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = authority.partition(":")
    port = int(port_text) if port_text else (443 if scheme == "https" else 80)
    if not host or not 0 < port < 65536:
        raise ValueError(f"unsupported upstream {upstream!r}")
    host = host.lower()
    if scheme == "http":
        tls_name = ""
    elif not tls_name:
        tls_name = host
    return OriginKey(scheme, host, port, verify, tls_name)


@implementer(IOpenSSLTrustRoot)
class SystemAndExtraRoots:
    """The platform's trusted roots plus some of Veil's own (private origin CAs)."""

    def __init__(self, pems: list[bytes]) -> None:
        self._certs = [crypto.load_certificate(crypto.FILETYPE_PEM, pem) for pem in pems]

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.set_default_verify_paths()
        store = context.get_cert_store()
        for cert in self._certs:
            store.add_cert(cert)


@implementer(IOpenSSLClientConnectionCreator)
class _NoVerify:
    """TLS to an origin whose certificate is not checked (SNI still sent)."""

    def __init__(self, hostname: str) -> None:
        self._name = None if isIPAddress(hostname) or isIPv6Address(hostname) else \
            hostname.encode("idna")
        self._ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self._ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        self._ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._ctx, None)
        if self._name is not None:
            conn.set_tlsext_host_name(self._name)
        conn.set_app_data(tlsProtocol)
        return conn


@implementer(IPushProducer)
class OriginConnection(Protocol):
    """
    One HTTP/1.1 connection to an origin, carrying one exchange at a time.

    A connection goes back to the pool only when its response ended exactly
    at a message boundary (see L{_ended_exactly}); once there, it is handed out
    again only if nothing has arrived from the origin meanwhile (L{quiet}).

    @ivar reused: whether it has served a request before this one.
    """

    # Slots: attribute access stays fast however many there are (see
    # veil.proxy.server.ProxyProtocol).
    __slots__ = (
        "_chunked", "_counted_out", "_data", "_done", "_fd", "_got", "_head_len", "_head_only",
        "_headers", "_in_head", "_interim", "_keep", "_length", "_parser", "_reason",
        "_responded", "_seen", "_status", "_tls", "closed", "deadline", "idle_since", "key",
        "last_headers", "listener", "paused", "pool", "reused", "tunnel",
    )

    def __init__(self, pool: OriginPool, key: OriginKey) -> None:
        self.pool = pool
        self.key = key
        self.reused = False
        self._counted_out = False
        self.listener: Listener | None = None
        self.idle_since = 0.0
        self.closed = False
        self.paused = False
        self.tunnel: Any = None
        self._parser = httptools.HttpResponseParser(self)
        #: When the response head is due (clock seconds), or 0.0 (watched
        #: by the pool's L{Deadlines}).
        self.deadline = 0.0
        #: The socket, to look for unread bytes (-1: not a socket); TLS over it.
        self._fd = -1
        self._tls = False
        self._head_only = False
        self._responded = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._length = -1
        self._chunked = False
        self._status = 0
        #: The current response is complete (the exchange is told once the
        #: read that completed it has been looked at).
        self._done = False
        #: A 1xx response came before the final one.
        self._interim = False
        #: The complete response leaves the connection open.
        self._keep = False
        #: Bytes of the current response received so far, and the length of
        #: its head when that is known (it began at the start of a read and
        #: ended in it), to tell whether it ended exactly (see dataReceived).
        self._got = 0
        self._head_len = 0
        self._data = b""
        self._in_head = True
        self._seen = 0
        self.last_headers: list[tuple[bytes, bytes]] = []

    # -- used by the exchange ------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        no_delay(transport)
        # TLS runs over the TCP transport underneath; either has the socket.
        inner = getattr(transport, "transport", None)
        try:
            self._fd = (inner if inner is not None else transport).fileno()
        except (AttributeError, OSError):
            self._fd = -1
        self._tls = self._fd >= 0 and self.key.scheme == "https"

    def send(self, listener: Listener, data: list[bytes], head_only: bool,
             complete: bool = True) -> None:
        """
        Start an exchange: C{data} is the request head and buffered body.
        Unless the request is C{complete}, the response timeout starts only
        at L{request_sent} (a long upload is not a slow origin).
        """
        self.listener = listener
        self._head_only = head_only
        self._responded = False
        if complete:
            self.request_sent()
        self.transport.writeSequence(data)

    def request_sent(self) -> None:
        """The whole request is written: the response head is now due."""
        if not self.deadline and self.listener is not None:
            pool = self.pool
            self.deadline = pool.clock.seconds() + pool.response_timeout
            pool.heads.add(self)

    def abort(self) -> None:
        """Drop the connection (the exchange failed on the client side)."""
        self.listener = None
        self._cancel_timer()
        self.transport.abortConnection()

    def quiet(self) -> bool:
        """
        Whether nothing from the origin waits unread in the socket: bytes an
        idle connection receives are never a response to a request not yet
        sent, so a connection with any is not used again.
        """
        if self._fd < 0:
            return not self.closed
        avail = self.pool._avail
        try:
            _ioctl(self._fd, _FIONREAD, avail, True)
        except OSError:
            return False
        return not avail[0]

    # -- IPushProducer, for the client transport ------------------------------

    def pauseProducing(self) -> None:
        # The client takes no more for now: it has its listener's
        # send_stalled() seconds to go on (this connection's timer, free
        # once the response head is in).
        self.paused = True
        self.transport.pauseProducing()
        listener = self.listener
        if listener is not None and not self.deadline:
            pool = self.pool
            self.deadline = pool.clock.seconds() + listener.send_stalled()
            pool.heads.add(self)

    def resumeProducing(self) -> None:
        self.paused = False
        self.transport.resumeProducing()
        if self.deadline:
            self._cancel_timer()  # (a send stall's: paused only once the head is in)

    def stopProducing(self) -> None:
        self.abort()

    # -- protocol -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        listener = self.listener
        if listener is None:
            # Bytes while idle: the origin is confused; never reuse it.
            self.transport.abortConnection()
            return
        self._responded = True
        try:
            self._got += len(data)
            if self._in_head:
                self._seen += len(data)
                if self._seen > _MAX_HEAD_BYTES:
                    raise _HeadTooLarge()
                self._data = data
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if (self._status == 101 and self.listener is listener
                    and listener.upgrade is not None):
                self._cancel_timer()
                self.listener = None
                self.pool.detach(self)
                listener.origin_upgraded(self, data[upgrade.args[0]:])
            else:
                self._fail(INVALID)
            return
        except (httptools.HttpParserError, _HeadTooLarge) as e:
            if self._done:
                # What follows a complete response is not a response to
                # anything: the response stands, the connection does not.
                self._finish(False)
                return
            if isinstance(e, _HeadTooLarge) or isinstance(e.__context__, _HeadTooLarge):
                self.pool.warn("head", self.key,
                               "Response heads from {origin} over the limits (32 KiB, 100 "
                               "fields): answered 502{suppressed_text}")
            else:
                self.pool.warn("invalid", self.key,
                               "Invalid responses from {origin} ({error}): answered 502"
                               "{suppressed_text}", error=str(e))
            self._fail(INVALID)
            return
        if self._done:
            if not self._keep:
                self._finish(False)
            elif self._length > 0 and not self._chunked:
                # Its length is known: every byte received was its head or body.
                self._finish(self._head_len > 3 and self._got == self._head_len + self._length)
            else:
                self._finish(self._ended_exactly(data))
        elif self.listener is listener:
            listener.origin_flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self._cancel_timer()
        self._parser = None  # it holds bound methods of this protocol: a cycle
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.transport.loseConnection()
            return
        listener = self.listener
        if listener is None:
            self.pool._lost(self)
            return
        if self._done or (self._status >= 200 and not self._chunked and self._length < 0
                          and not self._head_only):
            # Complete (the close came in the same read), or delimited by
            # the close: complete now.
            self._finish(False)
            return
        self._fail(LOST)

    # -- httptools callbacks -------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called per header: as little as possible here (the size and the
        # framing are read once the head is complete; the bytes a head
        # may take are bounded in dataReceived).
        headers = self._headers
        headers.append((name, value))
        if len(headers) > MAX_HEADERS:
            raise _HeadTooLarge()

    def on_headers_complete(self) -> None:
        if self._done:
            # Another head after a complete response: stop parsing it.
            raise _Stray()
        status = self._status = self._parser.get_status_code()
        headers, reason = self._headers, self._reason or b"Unknown"
        self._headers, self._reason = [], b""
        self._in_head = False
        for name, value in headers:
            n = len(name)
            if n == 14 or n == 17:
                lower = name.lower()
                if lower == b"content-length":
                    self._length = int(value)
                elif lower == b"transfer-encoding":
                    self._chunked = True
        if self._got > MAX_HEAD - MAX_HEADERS:
            # Counted only when the bytes of this exchange could hold more:
            # each field takes at least its name, its value and three bytes
            # (":", CR LF), so the sum below, which counts four, exceeds the
            # head's bytes by less than MAX_HEADERS.
            size = len(reason) + 4 * len(headers) + sum(map(len, chain.from_iterable(headers)))
            if size > MAX_HEAD:
                raise _HeadTooLarge()
        if status == 101:
            self.last_headers = headers
            return
        if status < 200:
            self._interim = True
            self._length, self._chunked = -1, False
            self.listener.origin_interim(status, reason, headers)
            return
        self._cancel_timer()
        data = self._data
        if self._seen == len(data):
            # The head began with this read (llhttp wants CRLF line ends).
            self._head_len = data.find(b"\r\n\r\n") + 4
        head_only = self._head_only
        length = 0 if head_only or status == 204 or status == 304 else self._length
        self.listener.origin_head(status, reason, headers, length, self._chunked)
        if head_only:
            # No body follows, whatever the head says: the response is over.
            self._done = True

    def on_body(self, data: bytes) -> None:
        listener = self.listener
        if listener is not None and not self._done:
            listener.origin_body(data)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._seen = 0
        status = self._status
        if status >= 200:
            self._done = True
            # Whether the connection may serve again: a final response of a
            # length of its own (not to a HEAD, which is done at its head;
            # not a 204 or 304; no 1xx before it), not ending the
            # connection.  Asked now: the parser forgets once it moves on.
            self._keep = (not self._interim and not self._head_only and status != 204
                          and status != 304 and self._parser.should_keep_alive())

    # -- internals -------------------------------------------------------------

    def _ended_exactly(self, data: bytes) -> bool:
        """
        Whether the response that C{data} completed, with an empty or
        chunked body, ended exactly at its end: nothing after it in the same
        read.  (A complete head after it stops the parser at once, see
        L{on_headers_complete}; what else could follow is told here.  A
        response with a length is told by counting, see L{dataReceived}.)
        """
        # An empty or chunked body: it ends with the CR LF CR LF of its head
        # or of its last chunk (or trailers), after another byte.  Anything
        # else after it would either end otherwise, or be a complete head.
        return (len(data) >= 5 and data[-4:] == b"\r\n\r\n" and data[-5] != 10
                and data[-5] != 13)

    def _finish(self, reusable: bool) -> None:
        listener = self.listener
        self.listener = None
        if self.deadline:
            self._cancel_timer()
        self._in_head = True
        self._seen = 0
        self._status, self._length, self._chunked = 0, -1, False
        self._done = self._interim = self._keep = False
        self._got = self._head_len = 0
        self.reused = True
        if listener is not None and not listener.body_done:
            # Answered before the whole request body was sent: the origin
            # may still expect the rest, so this connection is never reused.
            self.transport.abortConnection()
            listener.origin_done()
            return
        if reusable and self._tls:
            # The TLS layer may have more records of the same read to
            # deliver (bytes after this response): the connection goes back
            # once it is done with them.
            self.pool.release_later(self)
        else:
            # Back to the pool first, so that the next exchange finds it idle.
            self.pool.release(self, reusable)
        if listener is not None:
            listener.origin_done()

    def _fail(self, kind: str) -> None:
        listener = self.listener
        self.listener = None
        self._cancel_timer()
        if not self.closed:
            self.transport.abortConnection()
        self.pool._lost(self)
        if listener is not None:
            listener.origin_failed(kind, self)

    def expired(self) -> None:
        """
        The response head is overdue, or the client has taken none of the
        response for too long (the pool's L{Deadlines} says so).
        """
        self.pool.heads.discard(self)
        listener = self.listener
        if self.paused and self._status >= 200 and listener is not None:
            self.listener = None
            listener.send_timed_out()
            return
        self._fail(TIMEOUT)

    def _cancel_timer(self) -> None:
        if self.deadline:
            self.deadline = 0.0
            self.pool.heads.discard(self)

    @property
    def responded(self) -> bool:
        """Whether any byte of a response arrived for the current exchange."""
        return self._responded


class _Slot:
    __slots__ = ("count", "endpoint", "factory", "idle", "waiters")

    def __init__(self, endpoint: Any, factory: Factory) -> None:
        self.idle: list[OriginConnection] = []
        self.count = 0
        self.waiters: deque[Deferred[OriginConnection]] = deque()
        self.endpoint = endpoint
        self.factory = factory


class _ConnFactory(Factory):
    # One origin connection is no event for the log.
    noisy = False

    def __init__(self, pool: OriginPool, key: OriginKey) -> None:
        self.pool, self.key = pool, key

    def buildProtocol(self, addr: Any) -> OriginConnection:
        return OriginConnection(self.pool, self.key)


class OriginPool:
    """
    Keep-alive connections to origins, bounded per origin.

    @param reactor: connects (TCP, name resolution) and keeps time.
    @param max_per_origin: connections open or opening per origin at most;
        a request finding them all busy waits up to C{connect_timeout} for
        one, then fails with L{PoolFull}.
    @param guard: called with the address and port of every connection
        about to be made, after name resolution; a reason (text) refuses it
        (see L{veil.proxy.origins.OriginPolicy.refusal}).
    """

    def __init__(self, reactor: Any, *, max_per_origin: int = 256, idle_timeout: float = 60.0,
                 connect_timeout: float = 5.0, response_timeout: float = 60.0,
                 trust_root: IOpenSSLTrustRoot | None = None,
                 guard: Callable[[str, int], str | None] | None = None) -> None:
        self.reactor = self.clock = reactor
        self._tcp = TCPConnector(reactor, guard)
        self.max_per_origin = max_per_origin
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.trust_root = trust_root
        self._slots: dict[OriginKey, _Slot] = {}
        self._keys: dict[tuple[str, bool, str], OriginKey] = {}
        #: Connections waiting for a response head, with a deadline each.
        self.heads = Deadlines(reactor, Deadlines.tick_for(response_timeout))
        self._sweeper: Any = None
        self._closing = False
        #: Connections going back to the pool at the next turn (TLS).
        self._later: dict[OriginConnection, Any] = {}
        #: Scratch space for L{OriginConnection.quiet}.
        self._avail = array.array("i", [0])
        self._throttle = Throttle(reactor, 60.0)

    def key_for(self, upstream: str, verify: bool, tls_name: str = "") -> OriginKey:
        """The (cached) key of a site's upstream; C{tls_name} is the site's domain."""
        cache_key = (upstream, verify, tls_name)
        key = self._keys.get(cache_key)
        if key is None:
            if len(self._keys) > 100_000:
                self._keys.clear()
            key = self._keys[cache_key] = parse_upstream(upstream, verify, tls_name)
        return key

    def idle(self, key: OriginKey) -> OriginConnection | None:
        """An idle connection to C{key}'s origin, taken at once, if there is one."""
        slot = self._slots.get(key)
        if slot is None or not slot.idle:
            return None
        # The common case of _take_idle, inline (once per request).
        conn = slot.idle[-1]
        fd = conn._fd
        if fd >= 0:
            avail = self._avail
            try:
                _ioctl(fd, _FIONREAD, avail, True)
            except OSError:
                avail[0] = 1
            if avail[0]:
                return self._take_idle(slot)
        elif conn.closed:
            return self._take_idle(slot)
        slot.idle.pop()
        conn.reused = True
        if conn.paused:
            conn.resumeProducing()
        return conn

    def acquire(self, key: OriginKey, fresh: bool = False) -> Deferred[OriginConnection]:
        """
        A connection to C{key}'s origin: an idle one (unless C{fresh}), a
        new one, or, at the bound, the next one released (L{PoolFull} when
        none is within C{connect_timeout}).
        """
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(self._endpoint(key), _ConnFactory(self, key))
        if not fresh and slot.idle:
            conn = self._take_idle(slot)
            if conn is not None:
                return _succeed(conn)
        if slot.count < self.max_per_origin:
            return self._connect(key, slot)
        waiter: Deferred[OriginConnection] = Deferred(lambda d: _forget(slot.waiters, d))
        slot.waiters.append(waiter)
        size = self.max_per_origin

        def full(result: object, timeout: float) -> None:
            raise PoolFull(key, size)
        waiter.addTimeout(self.connect_timeout, self.clock, onTimeoutCancel=full)
        return waiter

    def release(self, conn: OriginConnection, reusable: bool) -> None:
        """Take back a connection whose exchange has finished."""
        slot = self._slots.get(conn.key)
        if conn.paused:
            conn.resumeProducing()
        if slot is None or not reusable or conn.closed or self._closing:
            if not conn.closed:
                conn.transport.loseConnection()
            return
        while slot.waiters:
            waiter = slot.waiters.popleft()
            if not waiter.called:
                if not conn.quiet():
                    slot.waiters.appendleft(waiter)
                    self._discard(conn)
                    return
                conn.reused = True
                waiter.callback(conn)
                return
        conn.idle_since = self.clock.seconds()
        slot.idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.clock.callLater(self.idle_timeout / 4, self._sweep)

    def release_later(self, conn: OriginConnection) -> None:
        """L{release} at the next turn of the reactor, once the current read is over."""
        self._later[conn] = self.clock.callLater(0, self._release_now, conn)

    def _release_now(self, conn: OriginConnection) -> None:
        del self._later[conn]
        self.release(conn, True)

    def detach(self, conn: OriginConnection) -> None:
        """C{conn} leaves the pool for good (a tunnel): it no longer counts against the bound."""
        self._lost(conn)

    def close(self) -> Deferred[None]:
        """Close every idle connection; later releases close too."""
        self._closing = True
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        self.heads.stop()
        lost = []
        later, self._later = self._later, {}
        for conn, call in later.items():
            call.cancel()
            conn.transport.loseConnection()
        for slot in self._slots.values():
            for conn in slot.idle:
                done: Deferred[None] = Deferred()
                conn.connectionLost = _then(conn.connectionLost, done)
                conn.transport.loseConnection()
                lost.append(done)
            slot.idle.clear()
        return gatherResults(lost).addCallback(lambda _: None)

    def warn(self, kind: str, key: OriginKey, text: str, **fields: Any) -> None:
        """A warning about an origin, at most one a minute per origin and kind."""
        self._throttle.emit(_log.warn, (kind, key), text, origin=f"{key.host}:{key.port}",
                            **fields)

    # -- internals -------------------------------------------------------------

    def _take_idle(self, slot: _Slot) -> OriginConnection | None:
        idle = slot.idle
        while idle:
            conn = idle.pop()
            if conn.quiet():
                conn.reused = True
                if conn.paused:
                    conn.resumeProducing()
                return conn
            self._discard(conn)
        return None

    def _discard(self, conn: OriginConnection) -> None:
        """The origin sent bytes nobody asked for: drop the connection."""
        conn.transport.abortConnection()
        self._lost(conn)

    def _endpoint(self, key: OriginKey) -> Any:
        timeout = max(1, int(self.connect_timeout + 0.999))
        tcp = self._tcp
        if isIPAddress(key.host):
            endpoint: Any = TCP4ClientEndpoint(tcp, key.host, key.port, timeout=timeout)
        elif isIPv6Address(key.host):
            endpoint = TCP6ClientEndpoint(tcp, key.host, key.port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(tcp, key.host, key.port, timeout=timeout)
        if key.scheme == "https":
            creator = (optionsForClientTLS(key.tls_name, trustRoot=self.trust_root)
                       if key.verify else _NoVerify(key.tls_name))
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint

    def _connect(self, key: OriginKey, slot: _Slot) -> Deferred[OriginConnection]:
        slot.count += 1
        d = slot.endpoint.connect(slot.factory)
        d.addTimeout(self.connect_timeout, self.clock)

        def failed(f: Failure) -> Failure:
            slot.count -= 1
            self._wake(key, slot)
            return f
        return d.addErrback(failed)

    def _lost(self, conn: OriginConnection) -> None:
        """A connection closed or failed: forget it and make room."""
        slot = self._slots.get(conn.key)
        if slot is None or conn._counted_out:
            return
        conn._counted_out = True
        slot.count -= 1
        try:
            slot.idle.remove(conn)
        except ValueError:
            pass
        self._wake(conn.key, slot)

    def _wake(self, key: OriginKey, slot: _Slot) -> None:
        while slot.waiters and slot.count < self.max_per_origin:
            waiter = slot.waiters.popleft()
            if not waiter.called:
                self._connect(key, slot).chainDeferred(waiter)

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = self.clock.seconds() - self.idle_timeout
        remaining = False
        for slot in self._slots.values():
            while slot.idle and slot.idle[0].idle_since <= deadline:
                conn = slot.idle.pop(0)
                conn.transport.loseConnection()
            remaining = remaining or bool(slot.idle)
        if remaining:
            self._sweeper = self.clock.callLater(self.idle_timeout / 4, self._sweep)


def _succeed(conn: OriginConnection) -> Deferred[OriginConnection]:
    d: Deferred[OriginConnection] = Deferred()
    d.callback(conn)
    return d


def _forget(waiters: deque, d: Deferred) -> None:
    try:
        waiters.remove(d)
    except ValueError:
        pass


def _then(lost: Any, done: Deferred[None]) -> Any:
    def connectionLost(reason: Failure = connectionDone) -> None:
        try:
            lost(reason)
        finally:
            if not done.called:
                done.callback(None)
    return connectionLost


__all__ = [
    "CONNECT",
    "INVALID",
    "LOST",
    "TIMEOUT",
    "CancelledError",
    "OriginConnection",
    "OriginKey",
    "OriginPool",
    "PoolFull",
    "TimeoutError",
    "parse_upstream",
]

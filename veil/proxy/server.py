"""
The reverse proxy's client side: HTTP/1.1 parsed with httptools (llhttp).

One L{ProxyProtocol} per client connection.  Each request becomes an
L{Exchange}; exchanges queue in arrival order (pipelining) and only the one
at the head talks to an origin, so responses go out in order.

Request bodies: the first C{inspect_body_limit(site)} bytes of a body (all
of a smaller one) are held before an origin connection is taken, so a
client that trickles its body holds no origin connection meanwhile, and
the WAF can read them (the factory's C{inspect_body} hook, the I{body
decision point}: a L{Verdict} answers instead of forwarding).  The bytes
held across all connections are bounded by a L{BodyBudget}: when it is
spent, connections that would hold more stop reading, and a request whose
turn it is goes on with what it holds.  A pipelined request holds its
part too, then waits (reading paused) for its turn.  The rest of a larger
body streams with back-pressure: the protocol is the origin transport's
producer; while a response body flows back, the origin connection is the
client transport's.  A body larger than its site's C{max_body_size} is a
413.

C{Expect: 100-continue}: while Veil holds the body it answers the C{100
Continue} itself; otherwise the origin's is relayed.  An C{Upgrade:
websocket} request without a body is forwarded; on C{101} both sides
become a raw byte tunnel.

For TLS connections build the protocol from C{factory.for_sni(name)}: every
request's C{Host} must then be C{name} (else 421).  The factory itself
(C{sni} L{None}) routes by C{Host} alone.  The plain-HTTP port builds its
protocols with L{ProxyFactory.build_plain}: scheme C{http}, and a I{route}
step per request that may answer it locally instead (see
L{veil.edge.plain.PlainHTTP.route}).  All of them share the factory's origin
pool, log, maintenance switch, body budget and connection set.

Each client address may have at most C{client_requests} requests holding
(or waiting for) an origin connection at once (429 beyond), so that a few
clients cannot take every connection of an origin's pool.

Timeouts, on one timer per connection: C{header_timeout} for a request
head; for a request body, C{body_timeout} without a byte and a minimum
average rate (C{body_min_rate} bytes a second after C{body_grace} seconds),
not counting the time Veil itself stopped reading (then 408, or an abort
once the response has started; the origin connection is dropped);
C{idle_timeout} between requests; and, on the origin connection's timer,
C{send_timeout} while the client takes none of a response.  L{ProxyFactory.drain} winds every connection down for
shut-down.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import attrs
import httptools
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from veil.deadlines import Deadlines
from veil.edge.plain import normalize_host, split_target
from veil.logs import Throttle, redact_ip
from veil.metrics import Registry
from veil.proxy import pages
from veil.proxy.budget import BodyBudget
from veil.proxy.headers import (
    CONNECTION,
    CONTENT_LENGTH,
    CONTENT_TYPE,
    EXPECT,
    HOST,
    REQUEST_ID,
    TRANSFER_ENCODING,
    UPGRADE,
    USER_AGENT,
    VIA,
    RequestIds,
    classify,
    connection_tokens,
    request_head,
    request_kinds,
    response_head,
)
from veil.proxy.upstream import LOST, TIMEOUT, OriginConnection, OriginPool, PoolFull
from veil.store.requestlog import LogRow
from veil.store.sites import Site
from veil.tcp import Refused

_log = Logger()

MAX_URL = 8 * 1024
MAX_HEAD = 32 * 1024
MAX_HEADERS = 100
MAX_QUEUE = 32
#: Statuses whose sites are proxied; any other shows the setup page.
LIVE_STATUSES = frozenset({"live", "active", "ssl_provisioning"})
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
_NO_BODY_STATUS = (204, 304)
#: Why a client connection is not read: the origin takes no more of the
#: body; a pipelined request holds what it may; too many requests are
#: queued; the body budget is spent.  All but the last are Veil's doing,
#: and do not count against the client's body time-outs.
_PAUSE_ORIGIN, _PAUSE_HOLD, _PAUSE_QUEUE, _PAUSE_BUDGET = 1, 2, 4, 8
_EXCUSED = _PAUSE_ORIGIN | _PAUSE_HOLD | _PAUSE_QUEUE
_CHUNKED_END = b"0\r\n\r\n"
_NO_NAMES: frozenset[bytes] = frozenset()
_UNBOUNDED = 1 << 62
#: Body bytes held before an origin connection is taken, unless told otherwise
#: (the WAF's default inspection limit, C{waf.inspect_body_limit}).
DEFAULT_BODY_LIMIT = 64 * 1024
_HTML = b"text/html; charset=utf-8"
#: Seconds L{veil.edge.service.Edge.stop} lets connections finish their exchanges.
DRAIN_TIMEOUT = 10.0
#: Seconds a closing connection reads and drops what its client still sends.
LINGER = 2.0
#: The methods a 405 says Veil forwards (TRACE only for the sites that allow it).
_ALLOW = b"Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"
#: Bytes of a request's start kept to check its request line (see _line_ok).
_LINE_MAX = MAX_URL + 64
#: C{#}, which starts a fragment, never sent in a request target.  As a
#: byte value: C{b"#" in target} first tries the bytes as an integer,
#: raising and clearing a TypeError (1,800 instructions) on every request.
_HASH_SIGN = ord("#")

#: A page the proxy answers itself: status, body, extra header lines and,
#: optionally, a content type (HTML by default).
Page = tuple


@attrs.frozen
class Verdict:
    """
    What the WAF decided: answer C{status} instead of proxying: 403 (an
    attack, or an IP decision), 429 (throttled), 415 (a body in a content
    encoding the WAF cannot read), 503 (a body the proxy could not hold
    for inspection: the body budget is spent).
    """

    status: int
    retry_after: int | None = None
    reason: str = ""


class Judgement(NamedTuple):
    """
    What the WAF concluded about a request that is not plainly benign, for
    its request-log row (L{Exchange.judged}; benign requests have none and
    cost the log nothing).  Whether the request was refused is the
    exchange's own C{blocked}.
    """

    classification: str
    classifier: str
    confidence: float | None = None
    attack_type: str | None = None
    rule_ids: tuple[int, ...] | None = None
    anomaly_score: int | None = None
    excerpt: str | None = None


class _Reject(Exception):
    """Raised from a parser callback to refuse a request with C{status}."""

    def __init__(self, status: int) -> None:
        self.status = status


class ProxyFactory(Factory):
    """
    Builds L{ProxyProtocol}s that share one origin pool, site table and log.

    @param sites: the site for a lower-case host name, or L{None}.
    @param log: called once per request with its L{LogRow}.
    @param inspect: the WAF hook, called with each L{Exchange} once its head
        is parsed and routed to a live site; a L{Verdict} blocks it.
    @param inspect_body: the WAF's body hook, called once per request with a
        body, when the body's start is held (see L{Exchange.body_prefix})
        and before an origin connection is taken; a L{Verdict} blocks it.
    @param inspect_body_limit: the body bytes to hold for a site's request
        (the WAF's inspection limit): the whole of a smaller body.
    @param body_budget: bytes of request bodies held at most, across all
        connections (see L{BodyBudget}).
    @param trust_request_id: keep a client's C{X-Request-Id} (behind a
        trusted front) instead of generating one.
    @param body_timeout: seconds a request body may go without a byte.
    @param body_min_rate: bytes a second a request body must average, once
        C{body_grace} seconds have passed (0: no minimum).
    @param client_requests: requests one client address may have holding or
        waiting for origin connections at once (429 beyond).
    @param send_timeout: seconds a client may take none of a response.
    @param via: this Veil's pseudonym in C{Via} (see L{veil.proxy.setup.via_name}).

    @ivar maintenance: the cluster-wide maintenance switch: while true,
        every site answers the 503 maintenance page.
    @ivar connections: the live client connections (L{drain} needs them).
    """

    def __init__(self, reactor: Any, sites: Callable[[str], Site | None], origins: OriginPool,
                 log: Callable[[LogRow], None], metrics: Registry, *, scheme: str = "https",
                 sni: str | None = None, inspect: Callable[[Exchange], Verdict | None] | None = None,
                 inspect_body: Callable[[Exchange], Verdict | None] | None = None,
                 inspect_body_limit: Callable[[Site], int] = lambda site: DEFAULT_BODY_LIMIT,
                 body_budget: int = 64 * 1024 * 1024, trust_request_id: bool = False,
                 header_timeout: float = 15.0, body_timeout: float = 30.0,
                 body_min_rate: float = 1024.0, body_grace: float = 10.0,
                 idle_timeout: float = 60.0, send_timeout: float = 60.0,
                 client_requests: int = 128, retry_after: int = 120,
                 via: str | None = None) -> None:
        self.clock = reactor
        self.sites = sites
        self.origins = origins
        self.log = log
        self.scheme = scheme
        self.proto = scheme.encode("ascii")
        self.sni = sni
        self.inspect = inspect
        self.inspect_body = inspect_body
        self.inspect_body_limit = inspect_body_limit
        self.budget = BodyBudget(body_budget, _PAUSE_BUDGET)
        self.trust_request_id = trust_request_id
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.body_min_rate = body_min_rate
        self.body_grace = body_grace
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.client_requests = client_requests
        #: Per client address: [requests holding or waiting for an origin
        #: connection, connections].
        self.loads: dict[str, list[int]] = {}
        self.retry_after = b"%d" % retry_after
        self.request_id = RequestIds()
        #: This Veil's pseudonym in C{Via} (the same on all its processes,
        #: see L{veil.proxy.setup.via_name}): a request that already
        #: carries it has come back (508).
        self.via = (via or f"veil-{os.urandom(4).hex()}").encode("ascii")
        self._via_lower = self.via.lower()
        self.via_line = b"Via: 1.1 " + self.via + b"\r\n"
        self._throttle = Throttle(reactor, 60.0)
        self.requests = metrics.counter("veil_proxy_requests_total", "Requests proxied or answered")
        self.rejected = metrics.counter("veil_proxy_rejected_total",
                                        "Requests refused, by status (or reason)")
        self.origin_errors = metrics.counter("veil_proxy_origin_errors_total",
                                             "Origin failures, by kind")
        self.pool_full = metrics.counter(
            "veil_proxy_origin_pool_full_total",
            "Requests answered 503 because every connection to their origin was busy")
        self.maintenance = False
        #: The live client connections, whose time-outs it watches.
        self.deadlines = Deadlines(reactor, Deadlines.tick_for(
            header_timeout, body_timeout, idle_timeout, body_grace))
        self.connections: set[ProxyProtocol] = self.deadlines.items  # type: ignore[assignment]
        self.draining = False
        self._drained: list[Deferred[None]] = []
        self._drain_timer: Any = None

    def buildProtocol(self, addr: Any) -> ProxyProtocol:
        p = ProxyProtocol(self, self.sni)
        p.factory = self
        return p

    def loops(self, via: bytes) -> bool:
        """Whether a C{Via} value names this Veil (C{protocol pseudonym [comment]}, listed)."""
        mine = self._via_lower
        for entry in via.split(b","):
            parts = entry.split(None, 2)
            if len(parts) >= 2 and parts[1].lower() == mine:
                return True
        return False

    def warn(self, kind: str, key: object, text: str, **fields: Any) -> None:
        """A warning about an origin or a site: at most one a minute per C{kind} and C{key}."""
        self._throttle.emit(_log.warn, (kind, key), text, **fields)

    def refused(self, kind: str, text: str, client_ip: str, **fields: Any) -> None:
        """
        Log a refused request: at most one line a minute per C{kind}, with
        the number held back; the client's network only, never its address.
        """
        self._throttle.emit(_log.warn, kind, text, network=redact_ip(client_ip), **fields)

    def for_sni(self, name: str) -> Factory:
        """A factory for TLS connections whose SNI name is C{name} (lower-case)."""
        return _SNIFactory(self, name)

    def build_plain(self, addr: Any, route: Callable[[Exchange, Site | None], bool]
                    ) -> ProxyProtocol:
        """
        A protocol for a plain-HTTP connection: scheme C{http}, and
        C{route(exchange, site)} called for every request once its host is
        known; when it returns true it has set the exchange's C{page} or
        C{local} answer, and the request is not proxied.
        """
        p = ProxyProtocol(self, None, b"http", route)
        p.factory = self
        return p

    # -- shutting down -------------------------------------------------------------

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Wind every client connection down: idle ones close at once; the
        others finish the exchanges they have (the last response says
        C{Connection: close}) and then close.  A request whose head arrives
        meanwhile is still answered, with C{Connection: close}.  Fires when
        every connection is gone; at C{timeout} seconds the remaining ones
        are aborted.
        """
        self.draining = True
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        for p in list(self.connections):
            p.drain()
        if self.connections and self._drain_timer is None:
            self._drain_timer = self.clock.callLater(timeout, self._drain_expired)
        self._check_drained()
        return d

    def _drain_expired(self) -> None:
        self._drain_timer = None
        if self.connections:
            _log.info("Drain timed out: aborting {count} connections",
                      count=len(self.connections))
        for p in list(self.connections):
            p.transport.abortConnection()

    def _gone(self, p: ProxyProtocol) -> None:
        self.deadlines.discard(p)
        if self.draining:
            self._check_drained()

    def _check_drained(self) -> None:
        if self.connections or not self._drained:
            return
        timer, self._drain_timer = self._drain_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        waiters, self._drained = self._drained, []
        for d in waiters:
            d.callback(None)


class _SNIFactory(Factory):
    #: The edge may run these connections on its thin TLS layer
    #: (L{veil.edge.tlslayer}): the proxy uses only what that layer offers.
    thin_tls = True

    def __init__(self, proxy: ProxyFactory, name: str) -> None:
        self._proxy, self._name = proxy, name

    def buildProtocol(self, addr: Any) -> ProxyProtocol:
        p = ProxyProtocol(self._proxy, self._name)
        p.factory = self._proxy
        return p


@implementer(IPushProducer)
class ProxyProtocol(Protocol):
    """One client connection: parses requests and runs their exchanges in order."""

    # Slots: attribute access stays fast however many there are (an
    # instance dictionary past 30 keys loses CPython's inline values).
    __slots__ = (
        "_body_at", "_body_base", "_body_chunk", "_body_ex", "_body_timer", "_chunk", "_due",
        "_ended", "_excused_at", "_head_size", "_headers", "_in_head", "_line", "_line_chunk",
        "_lingering", "_parser", "_paused", "_rate_at", "_reading", "_reject", "_seen",
        "_start", "_start_chunk", "_stopped", "_url", "client_ip", "client_ip_b", "deadline",
        "f", "gone", "load", "proto", "queue", "route", "sni", "tunnel",
    )

    def __init__(self, factory: ProxyFactory, sni: str | None, proto: bytes | None = None,
                 route: Callable[[Exchange, Site | None], bool] | None = None) -> None:
        self.f = factory
        self.sni = sni
        self.proto = factory.proto if proto is None else proto
        self.route = route
        self.queue: deque[Exchange] = deque()
        self.client_ip = ""
        self.client_ip_b = b""
        self.tunnel: OriginConnection | None = None
        self.gone = False
        self._parser = httptools.HttpRequestParser(self)
        self._reading: Exchange | None = None
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        # Where the request being parsed starts, to check its request line
        # (see _line_ok): the current read; the request's bytes from its
        # start (the request line, once complete), or None when that is not
        # known, and then the read it started in; the request that ended
        # in this read, if one did; for a request that starts after another
        # in the same read (see _follows): its offset and read; and the
        # request whose body this read began in, and its length then.
        self._chunk = b""
        self._line: bytes | None = None
        self._line_chunk = b""
        self._ended: Exchange | None = None
        self._start = -1
        self._start_chunk = b""
        self._body_ex: Exchange | None = None
        self._body_base = 0
        self._body_chunk = b""
        self._head_size = 0
        self._in_head = False
        self._reject = 400
        self._stopped = False
        self._paused = 0
        #: When the connection times out (clock seconds), or 0.0 for never
        #: (watched by the factory's L{Deadlines}).
        self.deadline = 0.0
        self._seen = 0
        #: When the header, idle or body timer is due (0.0: none); the
        #: deadline is the earlier of it and a send stall's.
        self._due = 0.0
        #: The last byte of the body being read, when its minimum rate
        #: starts to count, and since when Veil has not read on purpose.
        self._body_at = 0.0
        self._rate_at = 0.0
        self._excused_at = 0.0
        self._body_timer = False
        #: Closing: the response is out, what the client still sends is dropped.
        self._lingering = False
        #: [requests holding or waiting for an origin connection,
        #: connections] of this client's address (the factory's C{loads}).
        self.load = [0, 1]

    # -- connection --------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.client_ip = getattr(peer, "host", "") or ""
        self.client_ip_b = self.client_ip.encode("ascii", "replace")
        loads = self.f.loads
        load = loads.get(self.client_ip)
        if load is None:
            load = loads[self.client_ip] = [0, 0]
        load[1] += 1
        self.load = load
        self.f.deadlines.add(self)
        self._arm(self.f.idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        if self._stopped:
            if self.queue and self.queue[-1].upgrade is not None:
                self.queue[-1].tunnel_early(data)
            return
        try:
            if self._in_head:
                self._seen += len(data)
                if self._seen > 2 * MAX_HEAD + 65536:
                    raise _Reject(431)
                line = self._line
                if line is not None and len(line) < _LINE_MAX and b"\n" not in line:
                    self._line = line + data[:_LINE_MAX]  # a request line in pieces
            elif self._reading is None:
                # Between requests: the next one starts here.
                self._line = data
            else:
                # In a body: how much of it came before this read.
                reading = self._body_ex = self._reading
                self._body_base = reading.bytes_in
                self._body_chunk = data
            self._chunk = data
            self._ended = None
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgrade(data[e.args[0]:])
        except _Reject as e:
            self._refuse(e.status)
        except httptools.HttpParserCallbackError as e:
            ctx = e.__context__
            if isinstance(ctx, _Reject):
                self._refuse(ctx.status)
            else:
                _log.failure("Proxy request handling failed",
                             Failure(ctx) if isinstance(ctx, BaseException) else None)
                self._refuse(400)
        except httptools.HttpParserError as e:
            self.f.refused("malformed", "Refused malformed requests ({error}): answered 400"
                           "{suppressed_text}", self.client_ip, error=str(e))
            self._refuse(400)
        except Exception:  # noqa: BLE001 - a bug: never raise into the reactor
            _log.failure("Proxy request handling failed")
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        self._stopped = True
        self._disarm()
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.tunnel = None
            tunnel.transport.loseConnection()
        while self.queue:
            self.queue.popleft().client_lost()
        f = self.f
        f.budget.forget(self)
        load = self.load
        load[1] -= 1
        if load[1] <= 0:
            f.loads.pop(self.client_ip, None)
        f._gone(self)
        # The parser holds bound methods of this protocol: a cycle that
        # only the garbage collector would break (once per connection).
        self._parser = None

    def drain(self) -> None:
        """Shutting down: close now if idle, else once the exchanges in hand are done."""
        if self.gone:
            return
        if not self.queue and not self._in_head and self.tunnel is None:
            self._stopped = True
            self._disarm()
            self.transport.loseConnection()

    # -- IPushProducer (for the origin transport taking a request body) ---------

    def pauseProducing(self) -> None:
        self.pause(_PAUSE_ORIGIN)

    def resumeProducing(self) -> None:
        self.unpause(_PAUSE_ORIGIN)

    def stopProducing(self) -> None:
        # The origin transport is gone: its exchange hears of it
        # (origin_failed, or it dropped the connection itself) and answers.
        self.unpause(_PAUSE_ORIGIN)

    def pause(self, bit: int) -> None:
        paused = self._paused
        if not paused:
            self.transport.pauseProducing()
        if bit & _EXCUSED and not paused & _EXCUSED and self._reading is not None:
            self._excused_at = self.f.clock.seconds()
        self._paused = paused | bit

    def unpause(self, bit: int) -> None:
        paused = self._paused
        if paused & bit:
            paused = self._paused = paused & ~bit
            if not paused & _EXCUSED and self._excused_at:
                # Veil read nothing meanwhile: the body's clocks did not run.
                stopped = self.f.clock.seconds() - self._excused_at
                self._excused_at = 0.0
                self._body_at += stopped
                self._rate_at += stopped
            if not paused and not self.gone:
                self.transport.resumeProducing()

    # -- httptools callbacks -------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._seen = 0
        self._head_size = 0
        self._url = []
        if self._headers:
            self._headers = []  # the previous request's trailers
        if self._ended is not None:
            self._follows(self._ended)
        if not self.queue:
            self._arm(self.f.header_timeout)

    def on_url(self, part: bytes) -> None:
        self._url.append(part)
        self._head_size += len(part)
        if self._head_size > MAX_URL:
            raise _Reject(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD or len(headers) > MAX_HEADERS:
            raise _Reject(431)

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        method, url = parser.get_method(), b"".join(self._url)
        ex = Exchange(self, method, url, self._headers)
        # Trailer fields after a chunked body go to a list of their own,
        # dropped: never into the head that is forwarded.
        self._headers = []
        self._reading = ex
        # The request line had single spaces (llhttp does not check):
        # METHOD SP target SP HTTP/1.x.
        # With one space after the method, the target starts right after it;
        # with one after the target, "HTTP/" starts one further.
        m = len(method)
        try:
            line = self._line
            odd = line[m + len(url) + 2] != 72 or line[m + 1] == 32
        except (TypeError, IndexError):  # not known (None), or not all here
            odd = True
        if odd and not self._line_ok(method, url):
            raise _Reject(400)
        version = parser.get_http_version()
        if version == "1.0":
            ex.http10 = True
        elif version != "1.1":
            raise _Reject(400)
        ex.keep_alive = parser.should_keep_alive()
        ex.prepare(parser.should_upgrade())
        queue = self.queue
        queue.append(ex)
        if len(queue) == 1:
            self._disarm()
            ex.start()
        elif len(queue) > MAX_QUEUE:
            self.pause(_PAUSE_QUEUE)
        if not ex.body_done and not self._stopped:
            # A body follows: until it ends the timer watches it.
            f = self.f
            self._body_at = now = f.clock.seconds()
            self._rate_at = now + f.body_grace
            self._body_timer = True
            self._arm(min(f.body_timeout, f.body_grace))

    def on_body(self, data: bytes) -> None:
        self._body_at = self.f.clock.seconds()
        self._reading.request_body(data)

    def on_message_complete(self) -> None:
        ex, self._reading = self._reading, None
        self._ended = ex
        if ex is not None:
            ex.request_end()
        if self._body_timer:
            # The body is in: back to no timer (an exchange is running) or idle.
            self._body_timer = False
            if self.queue or self._stopped:
                self._disarm()
            else:
                self._arm(self.f.idle_timeout)

    # -- what the exchanges call ------------------------------------------------

    def finished(self, ex: Exchange) -> None:
        """The head exchange has answered: log it and start the next."""
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        if self.gone:
            return
        if not ex.keep_alive or (self.f.draining and not queue and not self._in_head):
            self._stopped = True
            self._disarm()
            self._close(not ex.body_done or self._in_head)
            return
        if len(queue) <= MAX_QUEUE:
            self.unpause(_PAUSE_QUEUE)
        if queue:
            queue[0].start()
        elif not self._in_head and self.tunnel is None:
            self._arm(self.f.idle_timeout if self._reading is None else self.f.body_timeout)
            self._body_timer = self._reading is not None

    # -- internals -----------------------------------------------------------------

    def _close(self, unread: bool) -> None:
        """
        Close once what is written has gone.  When the client may still be
        sending (C{unread}: a body not read, a refused request), a close
        with input unread makes the kernel send a reset, which can destroy
        the response before the client reads it: so, on TCP, send the FIN
        after the response, read and drop what comes, and close when the
        client does or after L{LINGER} seconds.
        """
        transport = self.transport
        if unread and isinstance(transport, tcp.Connection):
            self._lingering = True
            if self._paused:
                self._paused = 0
                transport.resumeProducing()
            transport.loseWriteConnection()
            self._arm(LINGER)
        else:
            transport.loseConnection()

    def _refuse(self, status: int) -> None:
        """Malformed input: answer C{status} after what is queued, then close."""
        self._stopped = True
        self._in_head = False
        self.f.rejected.inc(status=str(status))
        ex, self._reading = self._reading, None
        if ex is not None and ex in self.queue:
            ex.broken(status)
            return
        ex = Exchange(self, b"", b"".join(self._url)[:MAX_URL], self._headers)
        ex.http10 = False
        ex.refuse(status)
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.start()

    def _follows(self, prev: Exchange) -> None:
        """
        A request starts in the read where C{prev} ended: find where, from
        how C{prev} was framed, for L{_line_ok}.
        """
        chunk = self._chunk
        end = -1
        if not prev.chunked_in:
            if self._body_ex is prev and self._body_chunk is chunk:
                # This read began in its body.
                end = prev.bytes_in - self._body_base
            else:
                if self._line is chunk:
                    start = 0
                elif self._start_chunk is chunk:
                    start = self._start
                else:
                    start = -1  # its head began in an earlier read
                if start >= 0:
                    # Its head and body are in this read (llhttp wants CRLF line ends).
                    while chunk[start] == 13 or chunk[start] == 10:
                        start += 1
                    head_end = chunk.find(b"\r\n\r\n", start)
                    if head_end >= 0:
                        end = head_end + 4 + prev.bytes_in
        self._start = end
        self._start_chunk = chunk
        self._line = None if end < 0 else chunk[end:end + _LINE_MAX]
        self._line_chunk = chunk

    def _line_ok(self, method: bytes, url: bytes) -> bool:
        """
        Whether the request line had single spaces, which llhttp does not
        check: C{METHOD SP target SP HTTP/1.x}.
        """
        line = self._line
        if line is None:
            # Where it started is not known (after a chunked request in the
            # same read): look for it as it should be in that read.
            chunk = self._line_chunk
            if chunk is not self._chunk:
                chunk = chunk[-_LINE_MAX:] + self._chunk[:_LINE_MAX]
            return method + b" " + url + b" HTTP/" in chunk
        start = 0
        if line[0] == 13 or line[0] == 10:
            start = len(line) - len(line.lstrip(b"\r\n"))  # blank lines first
        m = start + len(method)
        u = m + 1 + len(url)
        try:
            return line[m] == 32 and line[m + 1] != 32 and line[u] == 32 and line[u + 1] != 32
        except IndexError:
            return False

    def _upgrade(self, rest: bytes) -> None:
        # llhttp stops at an upgrade request: nothing after it is parsed.
        self._stopped = True
        ex = self.queue[-1] if self.queue else None
        if ex is None:
            self.transport.loseConnection()
            return
        if ex.upgrade is not None and rest:
            ex.tunnel_early(rest)

    def _arm(self, seconds: float) -> None:
        """The header, idle or body timer: due in C{seconds}."""
        self._due = self.deadline = self.f.clock.seconds() + seconds

    def _disarm(self) -> None:
        self._due = self.deadline = 0.0

    def expired(self) -> None:
        """The deadline has passed (the factory's L{Deadlines} says so)."""
        f = self.f
        now = f.clock.seconds()
        if self._lingering:
            if now >= self._due - 0.001:
                self.transport.loseConnection()
            else:
                self.deadline = self._due
            return
        due = self._due
        if due and now >= due - 0.001 and not self._stopped:
            ex = self._reading
            if ex is not None:
                due = self._body_due(ex, now)
                if due <= now + 0.001:
                    self._body_expired(ex)
                    return
                self._due = due
            elif not self.queue or self._in_head:
                f.rejected.inc(status="timeout")
                self._stopped = True
                self.transport.loseConnection()
                return
            else:
                self._due = 0.0
        self.deadline = self._due

    def _body_due(self, ex: Exchange, now: float) -> float:
        """When the body being read times out: no byte for body_timeout, or below the rate."""
        f = self.f
        if self._paused & _EXCUSED:
            # Not read on purpose: not counted (see unpause); look again later.
            return now + f.body_timeout
        due = self._body_at + f.body_timeout
        if f.body_min_rate > 0:
            slowest = self._rate_at + ex.bytes_in / f.body_min_rate
            due = min(due, slowest)
        return due

    def _body_expired(self, ex: Exchange) -> None:
        f = self.f
        f.refused("slow-body", "Cut off request bodies that stalled or came slower than "
                  "{rate:g} bytes/s: answered 408{suppressed_text}", self.client_ip,
                  rate=f.body_min_rate)
        if ex in self.queue:
            self._refuse(408)
        else:
            # Already answered (a page): just stop reading.
            f.rejected.inc(status="timeout")
            self._stopped = True
            self._reading = None
            self.transport.loseConnection()


class Exchange:
    """
    One request and its response.

    What the WAF hooks may read: C{method}, C{target}, C{host}, C{site},
    C{headers} (as received), C{client_ip}, C{request_id}, C{user_agent};
    and, at the body decision point (the factory's C{inspect_body}, once
    the body's first C{body_limit} bytes are held, or all of it when it is
    shorter, and before any origin connection is taken), L{body_prefix}
    and L{body_complete}.  C{body_done} is false at head time when a body
    follows.

    What they may set: C{judged} (a L{Judgement} for the log row),
    C{inspection} (anything the head hook leaves for the body hook), and,
    at head time, L{cap_body}.
    """

    __slots__ = (
        "blocked",
        "body_done",
        "body_limit",
        "bytes_in",
        "bytes_out",
        "charged",
        "chunked_in",
        "chunked_out",
        "client_ip",
        "conn",
        "early",
        "ended",
        "expect",
        "headers",
        "hold_paused",
        "host",
        "http10",
        "inspection",
        "judged",
        "keep_alive",
        "key",
        "length_in",
        "loaded",
        "local",
        "max_body",
        "method",
        "named",
        "origin_ms",
        "origin_ts",
        "out",
        "p",
        "page",
        "pending",
        "pending_size",
        "producer_wanted",
        "producing",
        "raw_host",
        "request_id",
        "retried",
        "rid",
        "sent",
        "site",
        "start_ts",
        "started",
        "status",
        "streaming",
        "target",
        "upgrade",
        "user_agent",
        "waiting",
    )

    def __init__(self, p: ProxyProtocol, method: bytes, target: bytes,
                 headers: list[tuple[bytes, bytes]]) -> None:
        self.p = p
        self.method = method
        self.target = target
        self.headers = headers
        self.client_ip = p.client_ip
        self.host: str | None = None
        self.raw_host = b""
        self.site: Site | None = None
        self.keep_alive = True
        self.http10 = False
        self.start_ts = p.f.clock.seconds()
        self.request_id = ""
        self.rid = b""
        self.bytes_in = self.bytes_out = self.pending_size = self.charged = 0
        self.status: int | None = None
        self.conn: OriginConnection | None = None
        #: Body bytes held, not yet forwarded (None: none so far).
        self.pending: list[bytes] | None = None
        self.body_done = self.chunked_in = self.chunked_out = self.started = False
        self.ended = self.blocked = self.retried = self.streaming = self.producing = False
        self.producer_wanted = self.waiting = self.loaded = self.hold_paused = False
        self.out: list[bytes] = []
        self.length_in = -1
        #: Body bytes to hold before an origin connection is taken; -1 once
        #: decided (and for a request without a body).
        self.body_limit = -1
        self.page: Page | None = None
        self.local: Callable[[], Deferred[Page]] | None = None
        self.upgrade: bytes | None = None
        self.origin_ts = 0.0
        self.origin_ms: float | None = None
        self.user_agent: str | None = None
        self.early: list[bytes] | None = None
        self.sent: list[bytes] | None = None
        self.key: Any = None
        self.named: frozenset[bytes] = _NO_NAMES
        #: Expect: 100-continue: 0 not asked, 1 asked, 2 answered by Veil.
        self.expect = 0
        #: What the WAF's head hook leaves for its body hook (None: nothing).
        self.inspection: Any = None
        #: The WAF's conclusion for the log row (None: benign, or not inspected).
        self.judged: Judgement | None = None

    # -- what the WAF reads ----------------------------------------------------------

    @property
    def body_prefix(self) -> bytes:
        """
        The request body held so far (decoded from chunked framing): at the
        body decision point, its first C{body_limit} bytes or more (or all
        of it when it is shorter, or when the body budget ran out first:
        see L{body_complete}).  Empty once forwarded.
        """
        pending = self.pending
        if not pending:
            return b""
        if len(pending) > 1:
            pending[:] = [b"".join(pending)]
        return pending[0]

    @property
    def body_complete(self) -> bool:
        """Whether L{body_prefix} is the whole body."""
        return self.body_done

    # -- routing -------------------------------------------------------------------

    def prepare(self, upgrade: bool) -> None:
        """Validate the head and decide: a page, or the site's origin."""
        f = self.p.f
        kinds = request_kinds
        host_value = None
        te = None
        conn_values = None
        upgrade_value = None
        request_id = None
        expect = None
        loop = False
        typed = False
        for name, value in self.headers:
            kind = kinds.get(name)
            if kind is None:
                kind = classify(name)
            if not kind:
                continue
            if kind == HOST:
                if host_value is not None:
                    raise _Reject(400)
                host_value = value
            elif kind == CONTENT_LENGTH:
                self.length_in = int(value)
            elif kind == TRANSFER_ENCODING:
                if te is not None:
                    raise _Reject(400)
                te = value
            elif kind == CONNECTION:
                conn_values = [value] if conn_values is None else [*conn_values, value]
            elif kind == USER_AGENT:
                self.user_agent = value[:512].decode("utf-8", "replace")
            elif kind == UPGRADE:
                upgrade_value = value
            elif kind == REQUEST_ID:
                if f.trust_request_id and 0 < len(value) <= 128:
                    request_id = value.decode("ascii", "replace")
            elif kind == VIA:
                if f.loops(value):
                    loop = True
            elif kind == EXPECT:
                expect = value
            elif kind == CONTENT_TYPE:
                # Parsers disagree on which of two types counts (the WAF
                # reads the first, many frameworks the last): refused.
                if typed:
                    raise _Reject(400)
                typed = True
        self.request_id = request_id or f.request_id()
        self.rid = self.request_id.encode("ascii", "replace")
        if te is not None:
            if te.strip().lower() != b"chunked" or self.length_in >= 0:
                raise _Reject(400)
            self.chunked_in = True
        has_body = self.chunked_in or self.length_in > 0
        if has_body:
            # Checked once the site is known; until then, no bound.
            self.max_body = _UNBOUNDED
            if expect is not None and expect.lower() == b"100-continue":
                self.expect = 1
        else:
            self.body_done = True
        if conn_values is not None:
            self.named = connection_tokens(conn_values)
        if self.method == b"CONNECT" or host_value is None:
            raise _Reject(400)
        target = self.target
        split = split_target(target)
        if split is None or _HASH_SIGN in target:
            raise _Reject(400)
        authority, self.target = split
        if authority is None:
            host = normalize_host(host_value)
            self.raw_host = host_value
        else:
            # RFC 9112 3.2.2: the target's authority replaces Host (which
            # must still be valid), and its scheme must be the connection's.
            if target[:target.index(b":")].lower() != self.p.proto:
                raise _Reject(400)
            host = (normalize_host(authority) if normalize_host(host_value) is not None
                    else None)
            self.raw_host = authority
        if host is None:
            raise _Reject(400)
        self.host = host
        if upgrade and upgrade_value is not None:
            if has_body:
                # Its body would become the start of the tunnel.
                raise _Reject(400)
            if b"websocket" in connection_tokens((upgrade_value,)):
                self.upgrade = b"websocket"
            else:
                # Not tunnelled (an h2c tunnel would carry requests nobody
                # inspects): answered as a plain request, then the close,
                # since the parser stops at an upgrade.
                self.keep_alive = False
        sni = self.p.sni
        if sni is not None and host != sni:
            self.page = (421, pages.MISDIRECTED, b"")
            return
        if loop:
            f.refused("loop", "Refused looping requests (this Veil's Via came back): "
                              "answered 508{suppressed_text}", self.p.client_ip)
            self.page = (508, pages.LOOP, b"")
            return
        site = self.site = f.sites(host)
        route = self.p.route
        if route is not None and route(self, site):
            return
        if site is None:
            self.page = (404, pages.NOT_FOUND, b"")
        elif site.maintenance or f.maintenance:
            self.page = (503, pages.maintenance(site.domain), b"Retry-After: " + f.retry_after
                         + b"\r\n")
        elif site.status not in LIVE_STATUSES:
            self.page = (503, pages.setup(site.domain, site.status), b"Retry-After: 60\r\n")
        elif self.method == b"TRACE" and not site.allow_trace:
            self.page = (405, pages.METHOD_NOT_ALLOWED, _ALLOW)
        elif has_body and self.length_in > site.max_body_size:
            f.refused("too-large", "Refused request bodies over their site's limit: "
                      "answered 413{suppressed_text}", self.client_ip)
            f.rejected.inc(status="413")
            self.refuse(413)
        else:
            if has_body:
                self.max_body = site.max_body_size
                self.body_limit = max(0, f.inspect_body_limit(site))
            if f.inspect is not None:
                verdict = f.inspect(self)
                if verdict is not None:
                    self.verdict(verdict)

    def refuse(self, status: int) -> None:
        """Answer a malformed request with C{status} and close."""
        self.keep_alive = False
        if not self.request_id:
            self.request_id = self.p.f.request_id()
            self.rid = self.request_id.encode("ascii")
        body = {408: pages.REQUEST_TIMEOUT, 413: pages.TOO_LARGE, 414: pages.URI_TOO_LONG,
                431: pages.HEADERS_TOO_LARGE}.get(status, pages.BAD_REQUEST)
        self.page = (status, body, b"")

    def broken(self, status: int) -> None:
        """The request's body turned out malformed (bad chunking) or too large (413)."""
        self.keep_alive = False
        if self.started or self.ended:
            self._abort_both()
        elif self.conn is not None:
            conn, self.conn = self.conn, None
            conn.abort()
            self.p.f.origins._lost(conn)
            self.refuse(status)
            self._page()
        else:
            self.refuse(status)
            if self.p.queue and self.p.queue[0] is self:
                # Also while it waits for an origin connection: when one
                # comes, it goes back (the exchange has ended).
                self._page()

    # -- running -------------------------------------------------------------------

    def start(self) -> None:
        """Its turn on the client connection: answer, or go to the origin."""
        if self.page is not None:
            self._page()
            return
        if self.local is not None:
            self.local().addCallbacks(self._answered, self._answer_failed)
            return
        p = self.p
        f = p.f
        if self.body_limit >= 0:
            # A body is coming: hold its start (all of a small one) first.
            if not self.body_done and self.pending_size < self.body_limit \
                    and not f.budget.spent:
                self.waiting = True
                if self.expect == 1 and not self.http10 and not p.gone:
                    # The client waits for a 100 before it sends the body.
                    self.expect = 2
                    p.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            self.waiting = False
            self.body_limit = -1
            if f.inspect_body is not None:
                verdict = f.inspect_body(self)
                if verdict is not None:
                    self.verdict(verdict)
                    self._page()
                    return
        load = p.load
        if load[0] >= f.client_requests:
            f.refused("client-cap", "Refused requests from a client over its {limit} open "
                      "requests to origins: answered 429{suppressed_text}", p.client_ip,
                      limit=f.client_requests)
            f.rejected.inc(status="429")
            self.page = (429, pages.throttled(self.request_id), b"Retry-After: 1\r\n")
            self._page()
            return
        load[0] += 1
        self.loaded = True
        site = self.site
        origins = f.origins
        try:
            self.key = origins.key_for(site.upstream, site.origin_tls_verify, site.domain)
        except ValueError:
            f.warn("upstream", site.domain, "Site {domain} has an invalid upstream: "
                   "answered 502{suppressed_text}", domain=site.domain)
            self._fail_page(502)
            return
        self.origin_ts = f.clock.seconds()
        conn = origins.idle(self.key)
        if conn is not None:
            self._connected(conn)
        else:
            origins.acquire(self.key).addCallbacks(self._connected, self._connect_failed)

    def tunnel_early(self, data: bytes) -> None:
        """Bytes from the client after an upgrade request, before the tunnel is up."""
        if self.early is None:
            self.early = [data]
        else:
            self.early.append(data)

    def cap_body(self, limit: int) -> None:
        """
        At head time: this request's body may be at most C{limit} bytes (a
        WAF that refuses what it cannot inspect whole).  A C{Content-Length}
        over it is a 413 at once; a chunked body is one as soon as it grows
        past it, before any of it reaches the origin (it is held until it
        ends or passes the limit).
        """
        if self.length_in > limit:
            f = self.p.f
            f.refused("too-large", "Refused request bodies over their site's limit: "
                      "answered 413{suppressed_text}", self.client_ip)
            f.rejected.inc(status="413")
            self.refuse(413)
            return
        self.max_body = min(self.max_body, limit)
        if self.body_limit >= 0 and not self.body_done:
            # One byte more than the limit: decided when the body ends, or
            # refused when it passes the limit, never on an exact prefix.
            self.body_limit = limit + 1

    def verdict(self, verdict: Verdict) -> None:
        """Answer with the page for a WAF C{verdict}."""
        self.blocked = True
        extra = b"" if verdict.retry_after is None else \
            b"Retry-After: %d\r\n" % verdict.retry_after
        page = _VERDICT_PAGES.get(verdict.status, pages.blocked)
        self.page = (verdict.status, page(self.request_id), extra)

    def _answered(self, page: Page) -> None:
        """A local answer (see C{local}) is ready."""
        if self.ended:
            return
        self.page = page
        self._page()

    def _answer_failed(self, f: Failure) -> None:
        if self.ended:
            return
        _log.failure("Answering a request locally failed", f)
        self.page = (500, pages.internal_error(self.request_id), b"")
        self._page()

    def _connected(self, conn: OriginConnection) -> None:
        p = self.p
        if self.ended or p.gone:
            p.f.origins.release(conn, True)
            return
        self.conn = conn
        if self.sent is not None:
            data = self.sent
        else:
            if self.chunked_in:
                framing = b"Transfer-Encoding: chunked\r\n"
            elif self.length_in >= 0:
                framing = b"Content-Length: %d\r\n" % self.length_in
            else:
                framing = b""
            head = request_head(self.method, self.target, self.headers, self.named,
                                client_ip=p.client_ip_b, proto=p.proto,
                                host=self.raw_host, request_id=self.rid, body=framing,
                                upgrade=self.upgrade, via=p.f.via_line)
            data = [head]
            if self.pending:
                body = self.body_prefix
                if self.chunked_in:
                    data += (b"%x\r\n" % len(body), body, b"\r\n")
                else:
                    data.append(body)
                self.pending = None
                self.pending_size = 0
                if self.charged:
                    p.f.budget.refund(self.charged)
                    self.charged = 0
            if self.body_done:
                if self.chunked_in:
                    data.append(_CHUNKED_END)
                if self.method in IDEMPOTENT:
                    self.sent = data
        conn.send(self, data, self.method == b"HEAD", self.body_done)
        if not self.body_done:
            self.streaming = True
            conn.transport.registerProducer(p, True)
            if self.hold_paused:
                self.hold_paused = False
                p.unpause(_PAUSE_HOLD)
            if p._paused & _PAUSE_BUDGET:
                # Streamed from now on: nothing more is held for it.
                p.f.budget.forget(p)
                p.unpause(_PAUSE_BUDGET)

    def _connect_failed(self, failure: Failure) -> None:
        if self.ended:
            return
        f = self.p.f
        if failure.check(PoolFull):
            f.pool_full.inc()
            f.warn("pool-full", self.key, "Origin pool full: all {size} connections to {origin} "
                   "are busy; answered 503{suppressed_text}", size=failure.value.size,
                   origin=f"{self.key.host}:{self.key.port}")
            self._fail_page(503)
            return
        if failure.check(Refused):
            f.origin_errors.inc(kind="refused")
            f.warn("refused", self.host, "Refused to connect to the origin of {host}: "
                   "{error}; answered 502{suppressed_text}", host=self.host,
                   error=str(failure.value))
            self._fail_page(502)
            return
        f.origin_errors.inc(kind="connect")
        f.warn("connect", self.key, "Connecting to the origin of {host} failed: {error}; "
               "answered 502{suppressed_text}", host=self.host,
               error=str(failure.value) or type(failure.value).__name__)
        self._fail_page(502)

    def request_body(self, data: bytes) -> None:
        n = len(data)
        self.bytes_in += n
        if self.bytes_in > self.max_body:
            p = self.p
            if self.ended:
                # Answered already, the rest dropped: but not without end.
                if not p._stopped:
                    p._stopped = True
                    p._close(True)
                return
            p.f.refused("too-large", "Refused request bodies over their site's limit: "
                        "answered 413{suppressed_text}", self.client_ip)
            p.f.rejected.inc(status="413")
            self.broken(413)
            return
        if self.page is not None or self.local is not None or self.ended:
            return
        if self.streaming:
            if self.chunked_in:
                self.conn.transport.writeSequence((b"%x\r\n" % n, data, b"\r\n"))
            else:
                self.conn.transport.write(data)
            return
        # Held until an origin connection is taken, within the body budget.
        if self.pending is None:
            self.pending = [data]
        else:
            self.pending.append(data)
        self.pending_size += n
        self.charged += n
        p = self.p
        budget = p.f.budget
        budget.used += n
        if self.waiting:
            if self.pending_size >= self.body_limit or budget.spent:
                # Held enough (or as much as the budget allows): decide.
                self.start()
            return
        if self.pending_size >= self.body_limit >= 0 and not self.hold_paused:
            # Not its turn yet (pipelined): no more until it is.
            self.hold_paused = True
            p.pause(_PAUSE_HOLD)
        elif budget.spent:
            budget.wait(p)

    def request_end(self) -> None:
        self.body_done = True
        if self.waiting:
            self.start()
            return
        if self.hold_paused:
            self.hold_paused = False
            self.p.unpause(_PAUSE_HOLD)
        if self.streaming:
            self.streaming = False
            conn = self.conn
            if conn is not None and not conn.closed:
                if self.chunked_in:
                    conn.transport.write(_CHUNKED_END)
                conn.transport.unregisterProducer()
                conn.request_sent()
            self.p.unpause(_PAUSE_ORIGIN)

    # -- origin listener -------------------------------------------------------------

    def origin_interim(self, status: int, reason: bytes, headers: list) -> None:
        if status == 100 and self.expect != 2 and not self.http10 and not self.p.gone:
            self.p.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def origin_head(self, status: int, reason: bytes, headers: list, length: int,
                    chunked: bool) -> None:
        p = self.p
        self.status = status
        self.started = True
        self.sent = None
        self.origin_ms = (p.f.clock.seconds() - self.origin_ts) * 1000.0
        if self.upgrade is not None or (p.f.draining and p.queue and p.queue[-1] is self
                                        and not p._in_head):
            self.keep_alive = False
        if self.method == b"HEAD" or status in _NO_BODY_STATUS:
            framing = b"".join(b"Content-Length: " + v + b"\r\n" for n, v in headers
                               if n.lower() == b"content-length")
            length = 0
        elif length >= 0:
            framing = b"Content-Length: %d\r\n" % length
        elif not self.http10:
            framing = b"Transfer-Encoding: chunked\r\n"
            self.chunked_out = True
        else:
            framing = b""
            self.keep_alive = False
        if not self.keep_alive:
            framing += b"Connection: close\r\n"
        elif self.http10:
            framing += b"Connection: keep-alive\r\n"
        if p.gone:
            return
        head = response_head(status, reason, headers, request_id=self.rid, framing=framing)
        self.bytes_out += len(head)
        # Gathered with what the same read brings of the body, and written
        # at origin_flush or origin_done: one TLS record, one send.
        self.out.append(head)
        self.producer_wanted = length != 0

    def origin_body(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self.chunked_out:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)

    def origin_flush(self) -> None:
        """The origin's read is handled and the response goes on: write what it gave."""
        p = self.p
        if p.gone:
            self.out = []
            return
        if self.out:
            out, self.out = self.out, []
            p.transport.writeSequence(out)
        if self.producer_wanted and not self.producing and self.conn is not None:
            # More body to come: from now on the client's buffer paces the origin.
            self.producing = True
            p.transport.registerProducer(self.conn, True)

    def origin_done(self) -> None:
        self.conn = None
        if not self.body_done:
            # The origin answered before the whole request body: the rest
            # cannot be skipped safely; close after this response.
            self.keep_alive = False
            self.streaming = False
            self.p.unpause(_PAUSE_ORIGIN)
        if self.p.gone:
            self.out = []
            return
        if self.producing:
            # First: the origin connection is back in the pool, and the
            # last write must not pause it there.
            self.producing = False
            self.p.transport.unregisterProducer()
        if self.chunked_out:
            self.out.append(_CHUNKED_END)
        out, self.out = self.out, []
        if out:
            if not self.keep_alive:
                _cork(self.p.transport)
            self.p.transport.writeSequence(out)
        self._end()

    def origin_upgraded(self, conn: OriginConnection, rest: bytes) -> None:
        p = self.p
        self.status = 101
        self.started = True
        self.conn = None
        self.origin_ms = (p.f.clock.seconds() - self.origin_ts) * 1000.0
        if p.gone:
            conn.transport.loseConnection()
            return
        head = response_head(101, b"Switching Protocols", conn_headers(conn),
                             request_id=self.rid, framing=b"", upgrade=True)
        p.transport.write(head)
        if rest:
            p.transport.write(rest)
        p.tunnel = conn
        conn.tunnel = p
        if self.early:
            conn.transport.writeSequence(self.early)
        self.early = None
        p.transport.registerProducer(conn, True)
        conn.transport.registerProducer(_Producer(p.transport), True)
        self.keep_alive = True
        self._let_go()  # a tunnel is not a request held at an origin
        self._log()
        p.queue.clear()

    def origin_failed(self, kind: str, conn: OriginConnection | None) -> None:
        self.conn = None
        if self.streaming:
            self.streaming = False
            self.p.unpause(_PAUSE_ORIGIN)
        if self.producing and not self.p.gone:
            self.producing = False
            self.p.transport.unregisterProducer()
        if self.ended or self.p.gone:
            return
        f = self.p.f
        if (kind != TIMEOUT and conn is not None and conn.reused and not conn.responded
                and not self.retried and self.sent is not None):
            self.retried = True
            f.origins.acquire(self.key, fresh=True).addCallbacks(
                self._connected, self._connect_failed)
            return
        f.origin_errors.inc(kind=kind)
        origin = f"{self.key.host}:{self.key.port}"
        if kind == TIMEOUT:
            f.warn("timeout", self.key, "Origin {origin} of {host} did not answer within "
                   "{seconds:g} s: answered 504{suppressed_text}", origin=origin, host=self.host,
                   seconds=f.origins.response_timeout)
        elif kind == LOST:
            f.warn("lost", self.key, "Origin {origin} of {host} closed the connection before "
                   "its response was complete{suppressed_text}", origin=origin, host=self.host)
        if self.started:
            self._abort_both()
            return
        self._fail_page(504 if kind == TIMEOUT else 502)

    def send_stalled(self) -> float:
        """
        The client stopped taking the response (its transport paused the
        origin connection): the seconds it has to take more (the origin
        connection keeps the time, see L{OriginConnection.pauseProducing}).
        """
        return self.p.f.send_timeout

    def send_timed_out(self) -> None:
        """The client has taken none of the response for C{send_timeout}: drop both sides."""
        f = self.p.f
        f.rejected.inc(status="send_timeout")
        f.refused("send-timeout", "Gave up on clients that stopped reading their "
                  "responses{suppressed_text}", self.client_ip)
        self._abort_both()

    # -- ending ----------------------------------------------------------------------

    def client_lost(self) -> None:
        if self.ended:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
            self.p.f.origins._lost(conn)
        if self.status is None:
            self.status = 499
        self.ended = True
        self._let_go()
        self._log()

    def _fail_page(self, status: int) -> None:
        extra = b""
        if status == 504:
            body = pages.gateway_timeout(self.request_id)
        elif status == 503:
            body = pages.origin_busy(self.request_id)
            extra = b"Retry-After: 1\r\n"
        else:
            body = pages.bad_gateway(self.request_id)
        if not self.body_done:
            self.keep_alive = False
        self.page = (status, body, extra)
        self._page()

    def _page(self) -> None:
        page = self.page
        status, body, extra = page[0], page[1], page[2]
        self.status = status
        p = self.p
        if status >= 500 and not self.body_done:
            self.keep_alive = False
        if self.upgrade is not None or p.f.draining and p.queue and p.queue[-1] is self and not p._in_head:
            self.keep_alive = False
        out = [b"HTTP/1.1 %d " % status, pages.REASONS.get(status, b"Error"),
               b"\r\nContent-Type: ", page[3] if len(page) > 3 else _HTML,
               b"\r\nContent-Length: %d\r\nCache-Control: no-store\r\nX-Request-Id: "
               % len(body), self.rid, b"\r\n", extra]
        if not self.keep_alive:
            out.append(b"Connection: close\r\n")
        elif self.http10:
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        if self.method != b"HEAD":
            out.append(body)
        data = b"".join(out)
        self.bytes_out += len(data)
        if not self.p.gone:
            if not self.keep_alive:
                _cork(self.p.transport)
            self.p.transport.write(data)
        self._end()

    def _abort_both(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
            self.p.f.origins._lost(conn)
        self.keep_alive = False
        if not self.ended:
            self.ended = True
            self._let_go()
            self._log()
        if not self.p.gone:
            self.p.transport.abortConnection()

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.loaded:
            self.loaded = False
            self.p.load[0] -= 1
        if self.charged or self.hold_paused:
            self._let_go()
        self._log()
        self.p.finished(self)

    def _let_go(self) -> None:
        """It is over: what it held (body bytes, a pause, a place in its client's count) goes."""
        p = self.p
        if self.loaded:
            self.loaded = False
            p.load[0] -= 1
        self.pending = None
        self.pending_size = 0
        if self.charged:
            p.f.budget.refund(self.charged)
            self.charged = 0
        if self.hold_paused:
            self.hold_paused = False
            p.unpause(_PAUSE_HOLD)

    def _log(self) -> None:
        f = self.p.f
        now = f.clock.seconds()
        path, _, query = self.target.partition(b"?")
        site = self.site
        f.requests.inc()
        # Positional (LogRow's field order): keywords cost a named tuple's
        # __new__ twice as much, once per request.
        try:
            ts = datetime.fromtimestamp(self.start_ts, UTC)
            site_id = None if site is None else site.id
            method = self.method.decode("latin-1") or None
            path_text = path[:2048].decode("utf-8", "replace") or None
            query_text = query[:2048].decode("utf-8", "replace") or None
            duration_ms = (now - self.start_ts) * 1000.0
            judged = self.judged
            if judged is None:
                row = LogRow(ts, site_id, self.host, method, path_text, query_text, self.status,
                             self.bytes_in, self.bytes_out, duration_ms, self.origin_ms,
                             self.client_ip or None, self.request_id, self.user_agent,
                             None, None, None, None, self.blocked, None, None, None)
            else:
                # Only rows with something to say pay for saying it.
                row = LogRow(ts, site_id, self.host, method, path_text, query_text, self.status,
                             self.bytes_in, self.bytes_out, duration_ms, self.origin_ms,
                             self.client_ip or None, self.request_id, self.user_agent,
                             judged.classification, judged.classifier, judged.confidence,
                             judged.attack_type, self.blocked, judged.rule_ids,
                             judged.anomaly_score, judged.excerpt)
            f.log(row)
        except Exception:  # noqa: BLE001 - a bad sink must not break the connection
            _log.failure("Writing a request log row failed")


#: The page for a L{Verdict}'s status (the blocked page for any other).
_VERDICT_PAGES = {429: pages.throttled, 415: pages.unreadable, 503: pages.inspection_busy}


def _cork(transport: Any) -> None:
    """
    The next writes end the connection (L{ProxyProtocol.finished} closes it
    right after): let a transport that can send them with its close do so
    (L{veil.edge.tlslayer.TLSLayer.cork}).
    """
    cork = getattr(transport, "cork", None)
    if cork is not None:
        cork()


def conn_headers(conn: OriginConnection) -> list:
    return conn.last_headers


@implementer(IPushProducer)
class _Producer:
    """A client transport producing into an origin transport (tunnels)."""

    def __init__(self, transport: Any) -> None:
        self._t = transport

    def pauseProducing(self) -> None:
        self._t.pauseProducing()

    def resumeProducing(self) -> None:
        self._t.resumeProducing()

    def stopProducing(self) -> None:
        self._t.loseConnection()

"""
The plain-HTTP port (C{:80} in production): ACME C{http-01} answers,
redirects to HTTPS, and the sites that allow plain HTTP.

Every node answers every C{http-01} challenge from the store, for any host
name: the CA validates the name being issued, which this node's site table
may not hold yet.  A site with C{allow_plain_http} is proxied like on the
TLS port (same parsing, WAF stage, request log and pages; scheme and
C{X-Forwarded-Proto} C{http}).  Any other request for a known site (or the
dashboard) is redirected with C{308 Permanent Redirect}, which keeps the
method and body, so every method is redirected.  An unknown host gets a
small 404 page.

Once the proxy runs, the port speaks through it (L{PlainPort}): one
L{veil.proxy.server.ProxyProtocol} per connection whose route step,
L{PlainHTTP.route}, decides I{per request} (a kept-alive connection may
carry requests for several hosts).  Before that, L{PlainHTTP.site} (a
twisted.web site) answers challenges and redirects.

This module also holds what the edge's twisted.web sites share with
L{veil.edge.apps}: L{WebSite} (Veil's headers on every response, no access
log in the text log, an optional Host guard), L{request_target} (the
request's effective host and origin-form target) and L{respond}.
"""

from __future__ import annotations

import html
import ipaddress
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from veil.acme.challenges import HTTP01_PATH_PREFIX
from veil.errors import VeilError
from veil.proxy import pages
from veil.store.sites import Site

_log = Logger()

CHALLENGE_PREFIX = HTTP01_PATH_PREFIX.encode("ascii")

#: An ACME token: base64url without padding (RFC 8555 section 8.3), bounded.
_TOKEN = re.compile(rb"[A-Za-z0-9_-]{1,128}")

#: An RFC 3986 C{reg-name} (which covers IPv4 literals), already lower-cased.
_REG_NAME = re.compile(r"(?:[a-z0-9\-._~!$&'()*+,;=]|%[0-9a-f]{2})+")
_PORT = re.compile(r"[0-9]{0,5}")
_MAX_HOST = 253

#: Bytes of a request target that may not appear as they are in a Location
#: header: controls, space, C{#} (it would start a fragment) and non-ASCII.
_UNSAFE_IN_LOCATION = re.compile(rb"[^\x21\x22\x24-\x7e]")

#: The C{Retry-After} of a 503 for a challenge whose lookup failed.
CHALLENGE_RETRY_AFTER = b"5"

MISDIRECTED_REQUEST = 421

TEXT = b"text/plain; charset=utf-8"
HTML = b"text/html; charset=utf-8"


# -- requests ----------------------------------------------------------------

_hosts: dict[bytes, str | None] = {}


def normalize_host(value: bytes) -> str | None:
    """
    L{parse_host}, remembered: a proxy sees the same few C{Host} values
    over and over (at most 4,096 of at most 262 bytes are kept).
    """
    try:
        return _hosts[value]
    except KeyError:
        pass
    host = parse_host(value)
    if len(value) <= _MAX_HOST + 9:
        if len(_hosts) >= 4096:
            _hosts.clear()
        _hosts[value] = host
    return host


def parse_host(value: bytes) -> str | None:
    """
    Normalize a C{Host} header value (or the authority of an absolute-form
    request target).

    The value must be an RFC 3986 host, a C{reg-name} (which includes IPv4
    literals) or a bracketed IPv6 literal, optionally followed by C{:} and
    up to five digits (at most 65535).  User information, zone identifiers, whitespace and
    non-ASCII bytes make it invalid.

    @return: the host lower-cased, without the port and without one
        trailing dot (IPv6 literals in their compressed form, in brackets),
        or L{None} when the value is not a valid host.
    """
    try:
        text = value.decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        literal, bracket, rest = text[1:].partition("]")
        if not bracket or "%" in literal:
            return None
        try:
            host = f"[{ipaddress.IPv6Address(literal).compressed}]"
        except ValueError:
            return None
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:]
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
        if not _REG_NAME.fullmatch(host):
            return None
        host = host.removesuffix(".")
        if not host or len(host) > _MAX_HOST:
            return None
    if not _PORT.fullmatch(port) or (port and int(port) > 65535):
        return None
    return host


def split_target(uri: bytes) -> tuple[bytes | None, bytes] | None:
    """
    Split a request target into its authority and its origin form.

    @return: C{(None, uri)} for an origin-form target (C{/path?query});
        C{(authority, /path?query)} for an absolute-form C{http} or
        C{https} target; L{None} for any other form (C{*}, authority form,
        other schemes).
    """
    if uri.startswith(b"/"):
        return None, uri
    scheme, sep, rest = uri.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    end = len(rest)
    for delimiter in (b"/", b"?", b"#"):
        found = rest.find(delimiter)
        if found >= 0:
            end = min(end, found)
    origin = rest[end:]
    if not origin.startswith(b"/"):
        origin = b"/" + origin
    return rest[:end], origin


def request_host(request: IRequest, authority: bytes | None = None) -> str | None:
    """
    The host a request is for.

    Exactly one valid C{Host} header is required (RFC 9112 section 3.2:
    none, several or an invalid one is a 400).  For an absolute-form
    target the target's C{authority} wins over the header (section 3.2.2).

    @return: the normalized host (see L{normalize_host}), or L{None}.
    """
    values = request.requestHeaders.getRawHeaders(b"host")
    if values is None or len(values) != 1:
        return None
    host = normalize_host(values[0])
    if host is None or authority is None:
        return host
    return normalize_host(authority)


def request_target(request: IRequest) -> tuple[str, bytes] | None:
    """
    The effective host and the origin-form target (C{/path?query}) of a
    request, or L{None} when either is missing or invalid.
    """
    split = split_target(request.uri)
    if split is None:
        return None
    authority, origin = split
    host = request_host(request, authority)
    return None if host is None else (host, origin)


def respond(request: IRequest, code: int, body: bytes, content_type: bytes = TEXT,
            headers: dict[bytes, bytes] | None = None, message: bytes | None = None) -> int:
    """
    Write a whole response and finish the request.

    The body is written for every method; twisted.web drops it for HEAD and
    keeps the C{Content-Length} of the GET response.

    @return: L{server.NOT_DONE_YET}, for a C{render} method to return.
    """
    request.setResponseCode(code, message)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % (len(body),))
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    request.write(body)
    request.finish()
    return server.NOT_DONE_YET


def misdirected(request: IRequest) -> int:
    """Answer 421 Misdirected Request: this connection cannot serve that host."""
    return respond(request, MISDIRECTED_REQUEST,
                   b"Veil: this connection cannot serve requests for that host.\n",
                   headers={b"cache-control": b"no-store"}, message=b"Misdirected Request")


def bad_request(request: IRequest, why: bytes) -> int:
    """Answer 400 Bad Request with C{why} as the plain-text body."""
    return respond(request, http.BAD_REQUEST, b"Veil: " + why + b"\n",
                   headers={b"cache-control": b"no-store"})


# -- the shared twisted.web site ---------------------------------------------

class VeilRequest(server.Request):
    """
    A request whose every response carries C{Server: Veil} (no version) and
    C{X-Content-Type-Options: nosniff}, including responses twisted.web
    writes itself (C{OPTIONS *}, unhandled exceptions).
    """

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            self.setHeader(b"server", b"Veil")
            self.setHeader(b"x-content-type-options", b"nosniff")
        super().write(data)


class _Answer(Resource):
    """A leaf resource answering every request through one function."""

    isLeaf = True

    def __init__(self, answer: Callable[[IRequest], int]) -> None:
        super().__init__()
        self._answer = answer

    def render(self, request: IRequest) -> int:
        return self._answer(request)


_MISDIRECTED = _Answer(misdirected)
_BAD_HOST = _Answer(lambda request: bad_request(request, b"missing or invalid Host header."))


class WebSite(server.Site):
    """
    A twisted.web site with Veil's defaults: no tracebacks, L{VeilRequest},
    an idle timeout, and no access log in the text log (access data goes
    to the request log).

    With C{host} set, every request must be for that host (see
    L{request_target}): a missing or invalid host is a 400, another host a
    421.  An absolute-form target is rewritten to origin form before the
    resource sees it.
    """

    displayTracebacks = False

    def __init__(self, resource: IResource, *, host: str | None = None,
                 timeout: float = 60.0, clock: IReactorTime | None = None) -> None:
        kwargs: dict[str, Any] = {"timeout": timeout}
        if clock is not None:
            kwargs["reactor"] = clock
        super().__init__(resource, requestFactory=VeilRequest, **kwargs)
        self.displayTracebacks = False
        self.host = host

    def log(self, request: IRequest) -> None:
        """Write no access line: per-request data belongs to the request log."""

    def getResourceFor(self, request: IRequest) -> IResource:
        if self.host is None:
            return super().getResourceFor(request)
        target = request_target(request)
        if target is None:
            return _BAD_HOST
        host, origin = target
        if host != self.host:
            _log.debug("Misdirected request for {host} on a connection for {name}",
                       host=host, name=self.host)
            return _MISDIRECTED
        if origin != request.uri:
            request.uri = origin
            request.path = origin.split(b"?", 1)[0]
            request.postpath = list(map(unquote_to_bytes, request.path[1:].split(b"/")))
        return super().getResourceFor(request)


# -- the plain-HTTP port -----------------------------------------------------

def _not_found_page(host: str) -> bytes:
    name = html.escape(host, quote=True)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8"><title>No site here</title></head>\n'
        f"<body><h1>No site here</h1><p>Veil: no site is configured for {name}.</p></body>"
        "</html>\n"
    ).encode()


class _PlainResource(Resource):
    isLeaf = True

    def __init__(self, plain: PlainHTTP) -> None:
        super().__init__()
        self._plain = plain

    def render(self, request: IRequest) -> int:
        return self._plain.render(request)


class PlainHTTP:
    """
    What the plain-HTTP port answers.

    @param sites: the site for a host name (lower-case, no port), or
        L{None}; the site table's C{get}.
    @param http01: the key authorization for an C{http-01} token, or
        L{None}, as a L{Deferred} (a store lookup).
    @param https_port: the port redirects point at (omitted when 443).
    @param dashboard_host: the dashboard's host name, redirected too.
    @param clock: when given, bounds every challenge lookup by
        C{lookup_timeout} seconds and drives the sites' idle timeouts.

    L{route} is the proxy's per-request step, which lets the sites with
    C{allow_plain_http} through to their origins.  L{render} (the
    twisted.web answer, used until the proxy runs) cannot proxy, so it
    redirects every site.
    """

    def __init__(self, sites: Callable[[str], Site | None],
                 http01: Callable[[str], Deferred[str | None]], https_port: int,
                 dashboard_host: str | None, *, clock: IReactorTime | None = None,
                 lookup_timeout: float = 10.0, timeout: float = 30.0) -> None:
        self._sites = sites
        self._http01 = http01
        self._port_suffix = "" if https_port == 443 else f":{https_port}"
        self._dashboard_host = dashboard_host
        self._clock = clock
        self._lookup_timeout = lookup_timeout
        self._timeout = timeout

    def resource(self) -> IResource:
        """The root resource: a leaf that answers every path."""
        return _PlainResource(self)

    def site(self) -> server.Site:
        """A twisted.web site over L{resource}, to listen with."""
        return WebSite(self.resource(), timeout=self._timeout, clock=self._clock)

    # -- through the proxy ------------------------------------------------------

    def route(self, ex: Any, site: Site | None) -> bool:
        """
        The plain port's decision for one request (an
        L{veil.proxy.server.Exchange} whose host is parsed and C{site}
        looked up): C{False} to proxy it (a site with C{allow_plain_http}),
        else C{True} with the answer set on it: a challenge lookup, a 308
        redirect to https, or a 404 for an unknown host.
        """
        target = ex.target
        if target.startswith(CHALLENGE_PREFIX) and ex.method in (b"GET", b"HEAD"):
            token = target[len(CHALLENGE_PREFIX):].split(b"?", 1)[0]
            ex.local = lambda: self.challenge_page(token)
            return True
        if site is not None and site.allow_plain_http:
            return False
        host = ex.host
        if site is None and host != self._dashboard_host:
            ex.page = (404, pages.NOT_FOUND, b"")
            return True
        location = "https://" + host + self._port_suffix + _UNSAFE_IN_LOCATION.sub(
            lambda m: b"%%%02X" % m[0][0], target).decode("ascii")
        ex.page = (308, pages.moved(location), b"Location: " + location.encode("ascii")
                   + b"\r\n")
        return True

    def challenge_page(self, token: bytes) -> Deferred[tuple]:
        """
        The proxy's page for an C{http-01} request: the key authorization
        (200, C{text/plain}), 404 for an unknown token, 503 with
        C{Retry-After} when the lookup fails.
        """
        if not _TOKEN.fullmatch(token):
            return succeed(_NO_CHALLENGE_PAGE)

        def found(key_authorization: str | None) -> tuple:
            if key_authorization is None:
                return _NO_CHALLENGE_PAGE
            return (200, key_authorization.encode("utf-8"), b"", b"text/plain")

        def failed(reason: Failure) -> tuple:
            self._lookup_failed(token, reason)
            return (503, b"Veil: the challenge store is unavailable; try again.\n",
                    b"Retry-After: " + CHALLENGE_RETRY_AFTER + b"\r\n", TEXT)

        lookup = maybeDeferred(self._http01, token.decode("ascii"))
        if self._clock is not None:
            lookup.addTimeout(self._lookup_timeout, self._clock)
        return lookup.addCallbacks(found, failed)

    @staticmethod
    def _lookup_failed(token: bytes, reason: Failure) -> None:
        if reason.check(VeilError, TimeoutError, CancelledError):
            error = str(reason.value) or type(reason.value).__name__
            _log.warn("http-01 lookup for token {token} failed: {error}",
                      token=token.decode("ascii"), error=error)
        else:
            _log.failure("http-01 lookup for token {token} failed", reason,
                         token=token.decode("ascii"))

    # -- through twisted.web -------------------------------------------------------

    def render(self, request: IRequest) -> int:
        split = split_target(request.uri)
        if split is None:
            return bad_request(request, b"unsupported request target.")
        authority, origin = split
        path = origin.split(b"?", 1)[0]
        if request.method in (b"GET", b"HEAD") and path.startswith(CHALLENGE_PREFIX):
            return self._challenge(request, path[len(CHALLENGE_PREFIX):])
        host = request_host(request, authority)
        if host is None:
            return bad_request(request, b"missing or invalid Host header.")
        if host == self._dashboard_host or self._sites(host) is not None:
            location = (b"https://" + f"{host}{self._port_suffix}".encode("ascii")
                        + _UNSAFE_IN_LOCATION.sub(lambda m: b"%%%02X" % m[0][0], origin))
            return respond(request, http.PERMANENT_REDIRECT,
                           b"Veil: moved to " + location + b"\n",
                           headers={b"location": location})
        return respond(request, http.NOT_FOUND, _not_found_page(host), HTML,
                       headers={b"cache-control": b"no-store"})

    def _challenge(self, request: IRequest, token: bytes) -> int:
        if not _TOKEN.fullmatch(token):
            return self._no_challenge(request)
        gone = False

        def disconnected(reason: Failure) -> None:
            nonlocal gone
            gone = True
            lookup.cancel()

        def found(key_authorization: str | None) -> None:
            if gone:
                return
            if key_authorization is None:
                self._no_challenge(request)
                return
            respond(request, http.OK, key_authorization.encode("utf-8"), b"text/plain",
                    headers={b"cache-control": b"no-store"})

        def failed(reason: Failure) -> None:
            if gone:
                return
            self._lookup_failed(token, reason)
            respond(request, http.SERVICE_UNAVAILABLE,
                    b"Veil: the challenge store is unavailable; try again.\n",
                    headers={b"retry-after": CHALLENGE_RETRY_AFTER,
                             b"cache-control": b"no-store"})

        finished = request.notifyFinish()
        lookup = maybeDeferred(self._http01, token.decode("ascii"))
        if self._clock is not None:
            lookup.addTimeout(self._lookup_timeout, self._clock)
        lookup.addCallbacks(found, failed)
        lookup.addErrback(lambda f: _log.failure("Answering an http-01 challenge failed", f))
        finished.addErrback(disconnected)
        return server.NOT_DONE_YET

    @staticmethod
    def _no_challenge(request: IRequest) -> int:
        return respond(request, http.NOT_FOUND, b"Veil: no such challenge.\n",
                       headers={b"cache-control": b"no-store"})


_NO_CHALLENGE_PAGE = (404, b"Veil: no such challenge.\n", b"", TEXT)


class PlainPort(Factory):
    """
    The plain-HTTP port's factory: each connection speaks through the
    proxy once it runs (C{proxy()} returns its
    L{veil.proxy.server.ProxyFactory}), with L{PlainHTTP.route} deciding per
    request; until then through L{PlainHTTP.site}.
    """

    def __init__(self, plain: PlainHTTP, proxy: Callable[[], Any]) -> None:
        self._proxy = proxy
        self._route = plain.route
        self._web = plain.site()

    def startFactory(self) -> None:
        self._web.doStart()

    def stopFactory(self) -> None:
        self._web.doStop()

    def buildProtocol(self, addr: Any) -> Protocol | None:
        proxy = self._proxy()
        if proxy is None:
            return self._web.buildProtocol(addr)
        return proxy.build_plain(addr, self._route)

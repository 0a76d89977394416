"""
Tests for L{veil.edge.plain}: the plain-HTTP port.

Requests are raw bytes fed to the real twisted.web site (L{PlainHTTP.site})
over a L{StringTransport}, so that request targets, Host headers and
response headers are exactly as on the wire.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import server

from veil.edge.plain import PlainHTTP, normalize_host, split_target
from veil.errors import StoreUnavailable
from veil.store.sites import Site

SHOP = "shop.test"
DASHBOARD = "dash.test"
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEY_AUTHORIZATION = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


def make_site(domain: str, status: str = "live") -> Site:
    """A site record as the site table holds it."""
    return Site(id=uuid.uuid4(), domain=domain, upstream="http://127.0.0.1:9",
                status=status, mode="block", paranoia_level=1, maintenance=False,
                allow_plain_http=False, origin_tls_verify=True)


@attrs.frozen
class Response:
    """One parsed HTTP response."""

    code: int
    headers: dict[bytes, list[bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return None if values is None else values[-1]


def parse_response(data: bytes) -> Response:
    """Parse one response, whose body (if any) has a Content-Length."""
    head, separator, rest = data.partition(b"\r\n\r\n")
    assert separator, f"incomplete response: {data!r}"
    status, *lines = head.split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    length = int(headers.get(b"content-length", [b"0"])[0])
    return Response(int(status.split(b" ")[1]), headers, rest[:length])


@attrs.define
class Connection:
    """A client connection to a twisted.web site, on a L{StringTransport}."""

    protocol: object
    transport: StringTransport

    @classmethod
    def to(cls, site: server.Site) -> Connection:
        protocol = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 50000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return cls(protocol, transport)

    def send(self, raw: bytes) -> None:
        self.protocol.dataReceived(raw)

    def response(self) -> Response:
        return parse_response(self.transport.value())


def request(method: bytes = b"GET", target: bytes = b"/", host: bytes | None = SHOP.encode(),
            version: bytes = b"HTTP/1.1", headers: tuple[bytes, ...] = (),
            body: bytes = b"") -> bytes:
    """The bytes of one request."""
    lines = [method + b" " + target + b" " + version]
    if host is not None:
        lines.append(b"Host: " + host)
    lines.extend(headers)
    if body:
        lines.append(b"Content-Length: %d" % (len(body),))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@attrs.define
class Lookups:
    """An http-01 lookup that records the tokens asked for."""

    answer: Callable[[str], Deferred[str | None]]
    tokens: list[str] = attrs.field(factory=list)

    def __call__(self, token: str) -> Deferred[str | None]:
        self.tokens.append(token)
        return self.answer(token)


def known(token: str) -> Deferred[str | None]:
    return succeed(KEY_AUTHORIZATION if token == TOKEN else None)


class PlainCase(SynchronousTestCase):
    """Helpers: a L{PlainHTTP} with one site and a recording challenge lookup."""

    def setUp(self) -> None:
        self.sites = {SHOP: make_site(SHOP)}
        self.asked: list[str] = []
        self.lookups = Lookups(known)
        self.clock = Clock()

    def lookup_site(self, host: str) -> Site | None:
        self.asked.append(host)
        return self.sites.get(host)

    def plain(self, https_port: int = 443, dashboard_host: str | None = DASHBOARD,
              **kwargs: object) -> PlainHTTP:
        return PlainHTTP(self.lookup_site, self.lookups, https_port, dashboard_host,
                         clock=self.clock, **kwargs)

    def get(self, raw: bytes, plain: PlainHTTP | None = None) -> Response:
        connection = Connection.to((plain or self.plain()).site())
        connection.send(raw)
        return connection.response()


class ChallengeTests(PlainCase):
    """http-01 answers come from the lookup, for any host, and fail safe."""

    def test_answer(self) -> None:
        """
        A known token is answered 200 text/plain with exactly the key
        authorization, after one lookup of that token.
        """
        response = self.get(request(target=b"/.well-known/acme-challenge/" + TOKEN.encode()))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, KEY_AUTHORIZATION.encode())
        self.assertEqual(response.header(b"content-type"), b"text/plain")
        self.assertEqual(self.lookups.tokens, [TOKEN])

    def test_any_host(self) -> None:
        """
        The answer does not depend on the Host: a name missing from the
        site table, or an IP literal, gets it too, and no site is looked up.
        """
        for host in (b"new.example", b"203.0.113.9", b"[2001:db8::1]:80"):
            response = self.get(request(
                target=b"/.well-known/acme-challenge/" + TOKEN.encode(), host=host))
            self.assertEqual((response.code, response.body),
                             (200, KEY_AUTHORIZATION.encode()), host)
        self.assertEqual(self.asked, [])

    def test_query_ignored(self) -> None:
        """A query string after the token does not change the token looked up."""
        response = self.get(request(
            target=b"/.well-known/acme-challenge/" + TOKEN.encode() + b"?x=1"))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.lookups.tokens, [TOKEN])

    def test_head(self) -> None:
        """HEAD gets the headers of the answer, its length, and no body."""
        connection = Connection.to(self.plain().site())
        connection.send(request(b"HEAD", b"/.well-known/acme-challenge/" + TOKEN.encode()))
        head, _, body = connection.transport.value().partition(b"\r\n\r\n")
        self.assertIn(b" 200 ", head.split(b"\r\n")[0])
        self.assertIn(b"Content-Length: %d" % (len(KEY_AUTHORIZATION),), head)
        self.assertEqual(body, b"")

    def test_unknown_token(self) -> None:
        """A well-formed token the store does not know is a 404 that is not cached."""
        response = self.get(request(target=b"/.well-known/acme-challenge/unknown_Token-1"))
        self.assertEqual(response.code, 404)
        self.assertEqual(response.header(b"cache-control"), b"no-store")
        self.assertEqual(self.lookups.tokens, ["unknown_Token-1"])

    def test_invalid_tokens_not_looked_up(self) -> None:
        """
        A token outside [A-Za-z0-9_-]{1,128} (a path, an escape, a dot,
        empty, too long) is a 404 without any lookup.
        """
        for token in (b"../x", b"a/b", b"a%2Fb", b"tok.en", b"", b"a" * 129, b"t%00"):
            response = self.get(request(target=b"/.well-known/acme-challenge/" + token))
            self.assertEqual(response.code, 404, token)
        self.assertEqual(self.lookups.tokens, [])

    def test_longest_token(self) -> None:
        """A 128-character token is still looked up."""
        self.get(request(target=b"/.well-known/acme-challenge/" + b"a" * 128))
        self.assertEqual(self.lookups.tokens, ["a" * 128])

    def test_answer_waits_for_lookup(self) -> None:
        """Nothing is written until the store answers; then the answer is."""
        pending: Deferred[str | None] = Deferred()
        self.lookups = Lookups(lambda token: pending)
        connection = Connection.to(self.plain().site())
        connection.send(request(target=b"/.well-known/acme-challenge/" + TOKEN.encode()))
        self.assertEqual(connection.transport.value(), b"")
        pending.callback(KEY_AUTHORIZATION)
        self.assertEqual(connection.response().body, KEY_AUTHORIZATION.encode())

    def test_store_unavailable(self) -> None:
        """
        A lookup that fails with StoreUnavailable is a 503 with Retry-After,
        logged as a warning (not as a failure).
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.lookups = Lookups(lambda token: fail(StoreUnavailable("database down")))
        response = self.get(request(target=b"/.well-known/acme-challenge/" + TOKEN.encode()))
        self.assertEqual(response.code, 503)
        self.assertEqual(response.header(b"retry-after"), b"5")
        self.assertEqual(response.header(b"cache-control"), b"no-store")
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["token"], TOKEN)
        self.assertIn("database down", warnings[0]["error"])

    def test_lookup_raises(self) -> None:
        """A lookup that raises instead of failing its Deferred is a 503 too."""
        def broken(token: str) -> Deferred[str | None]:
            raise StoreUnavailable("no pool yet")

        self.lookups = Lookups(broken)
        response = self.get(request(target=b"/.well-known/acme-challenge/" + TOKEN.encode()))
        self.assertEqual(response.code, 503)

    def test_unexpected_error(self) -> None:
        """An unexpected exception from the lookup is a 503 and is logged as a failure."""
        self.lookups = Lookups(lambda token: fail(RuntimeError("bug")))
        response = self.get(request(target=b"/.well-known/acme-challenge/" + TOKEN.encode()))
        self.assertEqual(response.code, 503)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_lookup_timeout(self) -> None:
        """A lookup that does not answer within lookup_timeout seconds is a 503."""
        self.lookups = Lookups(lambda token: Deferred())
        connection = Connection.to(self.plain(lookup_timeout=10.0).site())
        connection.send(request(target=b"/.well-known/acme-challenge/" + TOKEN.encode()))
        self.clock.advance(9.9)
        self.assertEqual(connection.transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(connection.response().code, 503)

    def test_client_gone(self) -> None:
        """
        When the client disconnects during the lookup, the lookup is
        cancelled and nothing is written or logged as an error.
        """
        cancelled: list[Deferred[str | None]] = []
        self.lookups = Lookups(lambda token: Deferred(cancelled.append))
        connection = Connection.to(self.plain().site())
        connection.send(request(target=b"/.well-known/acme-challenge/" + TOKEN.encode()))
        connection.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(cancelled), 1)
        self.assertEqual(connection.transport.value(), b"")

    def test_post_is_redirected(self) -> None:
        """Only GET and HEAD are challenge lookups; a POST there is redirected."""
        response = self.get(request(b"POST", b"/.well-known/acme-challenge/" + TOKEN.encode(),
                                    body=b"x"))
        self.assertEqual(response.code, 308)
        self.assertEqual(self.lookups.tokens, [])


class RedirectTests(PlainCase):
    """Known hosts are redirected to HTTPS with 308, keeping path, query and method."""

    def test_path_and_query_kept(self) -> None:
        """The Location is https://host plus the original path and query, unchanged."""
        response = self.get(request(target=b"/a/b%20c/?x=1&y=%2F&z"))
        self.assertEqual(response.code, 308)
        self.assertEqual(response.header(b"location"), b"https://shop.test/a/b%20c/?x=1&y=%2F&z")
        self.assertEqual(response.body, b"Veil: moved to https://shop.test/a/b%20c/?x=1&y=%2F&z\n")
        self.assertEqual(self.asked, [SHOP])

    def test_every_method(self) -> None:
        """308 keeps the method, so POST, PUT, DELETE and PATCH are redirected too."""
        for method in (b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"):
            response = self.get(request(method, b"/form", body=b"a=1"))
            self.assertEqual(response.code, 308, method)
            self.assertEqual(response.header(b"location"), b"https://shop.test/form")

    def test_https_port_suffix(self) -> None:
        """With an HTTPS port other than 443, the Location names it."""
        response = self.get(request(target=b"/p?q"), self.plain(https_port=8443))
        self.assertEqual(response.header(b"location"), b"https://shop.test:8443/p?q")

    def test_no_suffix_for_443(self) -> None:
        """With HTTPS on 443, the Location has no port."""
        response = self.get(request(target=b"/"), self.plain(https_port=443))
        self.assertEqual(response.header(b"location"), b"https://shop.test/")

    def test_host_normalized(self) -> None:
        """
        The Host is lower-cased and loses its port and a trailing dot before
        the lookup and in the Location.
        """
        for host in (b"SHOP.Test:8080", b"shop.test.", b"Shop.TEST.:80", b"shop.test:"):
            response = self.get(request(target=b"/x", host=host))
            self.assertEqual(response.header(b"location"), b"https://shop.test/x", host)
        self.assertEqual(self.asked, [SHOP] * 4)

    def test_dashboard_host(self) -> None:
        """The dashboard host is redirected although it is not a site."""
        response = self.get(request(target=b"/login?next=%2F", host=b"dash.test"))
        self.assertEqual(response.code, 308)
        self.assertEqual(response.header(b"location"), b"https://dash.test/login?next=%2F")

    def test_absolute_form(self) -> None:
        """
        An absolute-form target names the host (RFC 9112 section 3.2.2) and
        its path and query are kept.
        """
        response = self.get(request(target=b"http://SHOP.test:80/p?q=1", host=b"other.test"))
        self.assertEqual(response.header(b"location"), b"https://shop.test/p?q=1")
        response = self.get(request(target=b"http://shop.test?q", host=b"shop.test"))
        self.assertEqual(response.header(b"location"), b"https://shop.test/?q")

    def test_fragment_mark_escaped(self) -> None:
        """
        A raw C{#} in the target is percent-encoded in the Location, so it
        cannot start a fragment; everything else is kept.
        """
        response = self.get(request(target=b"/a#top?x=\"1\""))
        self.assertEqual(response.header(b"location"), b'https://shop.test/a%23top?x="1"')

    def test_non_ascii_target_refused(self) -> None:
        """twisted.web refuses a non-ASCII request line with a bare 400 before any lookup."""
        connection = Connection.to(self.plain().site())
        connection.send(request(target=b"/caf\xc3\xa9"))
        self.assertTrue(connection.transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertEqual(self.asked, [])


class HostTests(PlainCase):
    """A missing or invalid Host is a 400; an unknown one a 404 page."""

    def test_missing_host(self) -> None:
        """No Host header is a 400, in HTTP/1.1 and HTTP/1.0, with no site lookup."""
        for version in (b"HTTP/1.1", b"HTTP/1.0"):
            response = self.get(request(host=None, version=version))
            self.assertEqual(response.code, 400, version)
        self.assertEqual(self.asked, [])

    def test_two_hosts(self) -> None:
        """Two Host headers are a 400 (RFC 9112 section 3.2)."""
        response = self.get(request(headers=(b"Host: shop.test",)))
        self.assertEqual(response.code, 400)

    def test_invalid_hosts(self) -> None:
        """
        Hosts that are not RFC 3986 hosts are a 400, and the body does not
        repeat them.
        """
        for host in (b"<script>alert(1)</script>", b"a b", b"user@shop.test", b"shop.test:x",
                     b"shop.test:123456", b"[::1", b"[fe80::1%25eth0]", b"[not-ip]",
                     b"caf\xc3\xa9.test", b"", b"."):
            response = self.get(request(host=host))
            self.assertEqual(response.code, 400, host)
            self.assertNotIn(b"script", response.body)
        self.assertEqual(self.asked, [])

    def test_unsupported_target(self) -> None:
        """Authority-form targets (CONNECT) and absolute targets of other schemes are a 400."""
        for raw in (request(b"CONNECT", b"shop.test:443"), request(target=b"ftp://shop.test/")):
            self.assertEqual(self.get(raw).code, 400, raw)

    def test_unknown_host(self) -> None:
        """
        A valid host that is no site is a 404 HTML page naming it, which is
        not cached.
        """
        response = self.get(request(host=b"Nobody.Test:8080"))
        self.assertEqual(response.code, 404)
        self.assertEqual(response.header(b"content-type"), b"text/html; charset=utf-8")
        self.assertEqual(response.header(b"cache-control"), b"no-store")
        self.assertIn(b"Veil: no site is configured for nobody.test.", response.body)

    def test_unknown_host_escaped(self) -> None:
        """
        A host with characters RFC 3986 allows but HTML does not (' & ( ))
        is shown escaped; a pct-encoded script tag is shown, not decoded.
        """
        response = self.get(request(host=b"x'&(y).test"))
        self.assertEqual(response.code, 404)
        self.assertIn(b"for x&#x27;&amp;(y).test.", response.body)
        self.assertNotIn(b"x'&", response.body)
        response = self.get(request(host=b"%3cscript%3e.test"))
        self.assertIn(b"for %3cscript%3e.test.", response.body)
        self.assertNotIn(b"<script", response.body)

    def test_no_dashboard(self) -> None:
        """Without a dashboard host, only sites are redirected."""
        response = self.get(request(host=b"dash.test"), self.plain(dashboard_host=None))
        self.assertEqual(response.code, 404)


class HeaderTests(PlainCase):
    """Every response carries nosniff and a Server header without a version."""

    def test_every_response(self) -> None:
        """
        200, 308, 400, 404 and 503 responses, and twisted.web's own answer
        to OPTIONS *, all say Server: Veil and X-Content-Type-Options: nosniff.
        """
        challenge = b"/.well-known/acme-challenge/" + TOKEN.encode()
        cases = [
            (request(target=challenge), 200),
            (request(), 308),
            (request(host=None), 400),
            (request(host=b"nobody.test"), 404),
            (request(b"OPTIONS", b"*"), 200),
        ]
        for raw, code in cases:
            response = self.get(raw)
            self.assertEqual(response.code, code, raw)
            self.assertEqual(response.header(b"server"), b"Veil", raw)
            self.assertEqual(response.header(b"x-content-type-options"), b"nosniff", raw)
        self.lookups = Lookups(lambda token: fail(StoreUnavailable("down")))
        response = self.get(request(target=challenge))
        self.assertEqual((response.code, response.header(b"server")), (503, b"Veil"))

    def test_no_tracebacks(self) -> None:
        """The site never shows tracebacks, and a failing lookup of sites is a bare 500."""
        plain = self.plain()
        self.assertFalse(plain.site().displayTracebacks)

        def broken(host: str) -> Site | None:
            raise RuntimeError("bug")

        plain = PlainHTTP(broken, self.lookups, 443, None, clock=self.clock)
        response = self.get(request(), plain)
        self.assertEqual(response.code, 500)
        self.assertEqual(response.header(b"server"), b"Veil")
        self.assertNotIn(b"RuntimeError", response.body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_site_is_a_twisted_site(self) -> None:
        """site() returns a twisted.web Site over resource()'s tree."""
        self.assertIsInstance(self.plain().site(), server.Site)


class ParsingTests(SynchronousTestCase):
    """The Host and request-target helpers."""

    def test_normalize_host(self) -> None:
        """Hosts are lower-cased, lose a port and a trailing dot; IPv6 is compressed."""
        self.assertEqual(normalize_host(b"A.Example:443"), "a.example")
        self.assertEqual(normalize_host(b"a.example."), "a.example")
        self.assertEqual(normalize_host(b"192.0.2.1:80"), "192.0.2.1")
        self.assertEqual(normalize_host(b"[2001:DB8:0::1]:8443"), "[2001:db8::1]")
        self.assertIsNone(normalize_host(b"a" * 254))
        self.assertIsNone(normalize_host(b"[::1]x"))

    def test_host_port_range(self) -> None:
        """A port above 65535 makes the host invalid, named or IPv6; 65535 and 0 pass."""
        self.assertEqual(normalize_host(b"a.example:65535"), "a.example")
        self.assertEqual(normalize_host(b"a.example:0"), "a.example")
        self.assertIsNone(normalize_host(b"a.example:65536"))
        self.assertIsNone(normalize_host(b"a.example:99999"))
        self.assertIsNone(normalize_host(b"[::1]:70000"))

    def test_split_target(self) -> None:
        """Origin form passes through; absolute form splits; other forms are refused."""
        self.assertEqual(split_target(b"/a?b"), (None, b"/a?b"))
        self.assertEqual(split_target(b"HTTPS://h:1/a?b"), (b"h:1", b"/a?b"))
        self.assertEqual(split_target(b"http://h"), (b"h", b"/"))
        self.assertIsNone(split_target(b"*"))
        self.assertIsNone(split_target(b"h:443"))

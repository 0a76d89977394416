"""Tests for L{veil.waf.request} and L{veil.waf.bodies}: every target kind."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from veil.waf import bodies
from veil.waf.decoding import percent_decode
from veil.waf.request import Request


def values(request: Request, collection: str, names: frozenset[str] | None = None
           ) -> list[tuple[str, str]]:
    """(target, value) pairs of a collection, JSON paths resolved."""
    out = []
    for part in request.parts(collection, names):
        for index, value in enumerate(part.values):
            for target in part.names_of(index):
                out.append((target, value))
    return out


HEADERS = [(b"Host", b"shop.test"), (b"User-Agent", b"Mozilla/5.0"),
           (b"Cookie", b"session=abc; theme=dark"), (b"cookie", b"lang=en")]


class RequestLineTests(SynchronousTestCase):
    """The method, the raw target, the normalised path, the query arguments."""

    def test_line(self) -> None:
        """method, uri (as received) and path (normalised)."""
        request = Request(b"GET", b"/a/./b/../c%2Fd?x=1", HEADERS)
        self.assertEqual(values(request, "method"), [("method", "GET")])
        self.assertEqual(values(request, "uri"), [("uri", "/a/./b/../c%2Fd?x=1")])
        self.assertEqual(values(request, "path"), [("path", "/a/c/d")])

    def test_query_arguments(self) -> None:
        """Names and values decoded (+ a space), repeated names kept, empty values skipped."""
        request = Request(b"GET", b"/?q=caf%C3%A9+au+lait&tag=a&tag=b&flag&x%5B0%5D=1", [])
        self.assertEqual(values(request, "args"),
                         [("args:q", "café au lait"), ("args:tag", "a"), ("args:tag", "b"),
                          ("args:x[0]", "1")])
        self.assertEqual([v for _, v in values(request, "args_names")],
                         ["q", "tag", "tag", "flag", "x[0]"])

    def test_nothing_parsed_up_front(self) -> None:
        """A request view parses nothing until a collection is asked for."""
        request = Request(b"POST", b"/x", [(b"Content-Type", b"application/json")], b"{bad")
        self.assertIsNone(request._parsed)
        self.assertIsNone(request._query_args)
        values(request, "headers")
        self.assertIsNone(request._parsed)


class HeaderAndCookieTests(SynchronousTestCase):
    """Headers by name (the Cookie header is the cookies collection) and cookies."""

    def test_headers(self) -> None:
        """All headers but Cookie, names lower-cased; a named member alone."""
        request = Request(b"GET", b"/", HEADERS)
        self.assertEqual(values(request, "headers"),
                         [("headers:host", "shop.test"), ("headers:user-agent", "Mozilla/5.0")])
        self.assertEqual(values(request, "headers", frozenset({"user-agent", "referer"})),
                         [("headers:user-agent", "Mozilla/5.0")])
        self.assertEqual(request.header("host"), "shop.test")

    def test_cookies(self) -> None:
        """Every Cookie header, split into names and values."""
        request = Request(b"GET", b"/", HEADERS)
        self.assertEqual(values(request, "cookies"),
                         [("cookies:session", "abc"), ("cookies:theme", "dark"),
                          ("cookies:lang", "en")])
        self.assertEqual([v for _, v in values(request, "cookies_names")],
                         ["session", "theme", "lang"])

    def test_cookies_parsed_once_each_request_its_own(self) -> None:
        """
        A Cookie header seen before gives the same pairs from the memo, in
        a list of the request's own: changing one request's cookies changes
        no other request's.
        """
        first = Request(b"GET", b"/", HEADERS)
        first.cookies.append(("injected", "x"))
        second = Request(b"GET", b"/", HEADERS)
        self.assertEqual(second.cookies, [("session", "abc"), ("theme", "dark"),
                                          ("lang", "en")])
        other = Request(b"GET", b"/", [(b"Cookie", b"session=def")])
        self.assertEqual(other.cookies, [("session", "def")])


class FormTests(SynchronousTestCase):
    """URL-encoded forms."""

    def test_form(self) -> None:
        """Arguments from the body join those of the query; the whole form is the body target."""
        request = Request(b"POST", b"/?a=1", [(b"Content-Type", b"application/x-www-form-urlencoded")],
                          b"user=bob&note=a+b%26c")
        self.assertEqual(values(request, "args"),
                         [("args:a", "1"), ("args:user", "bob"), ("args:note", "a b&c")])
        self.assertEqual(values(request, "body"), [("body", "user=bob&note=a b%26c")])

    def test_bad_escape_and_mismatch(self) -> None:
        """An invalid %-escape, and JSON sent as a form, are anomalies."""
        request = Request(b"POST", b"/", [(b"Content-Type", b"application/x-www-form-urlencoded")],
                          b"a=100%zz")
        self.assertIn((bodies.BAD_URLENCODING, "body"), request.anomalies)
        request = Request(b"POST", b"/", [(b"Content-Type", b"application/x-www-form-urlencoded")],
                          b'{"a": 1}')
        self.assertIn((bodies.TYPE_MISMATCH, "body"), request.anomalies)
        self.assertEqual(values(request, "body"), [("body", '{"a": 1}')])


def pairs_one_by_one(raw: str, out: list[tuple[str, str]], limit: int) -> bool:
    """L{bodies.parse_pairs} written plainly, pair by pair: what its fast path must agree with."""
    for part in raw.split("&"):
        if not part:
            continue
        if len(out) >= limit:
            return True
        name, _, value = part.partition("=")
        out.append((percent_decode(name, True), percent_decode(value, True)))
    return False


class PairsTests(SynchronousTestCase):
    """C{a=1&b=2} is split the same way whether or not it has escapes to decode."""

    @settings(max_examples=1500, deadline=None)
    @given(raw=st.text("ab=&+% 2f6uUc03é\ud800\x1e1eE", max_size=30), before=st.integers(0, 4),
           limit=st.integers(0, 6))
    def test_same_pairs(self, raw: str, before: int, limit: int) -> None:
        """The same pairs, and the same answer at the limit, as reading pair by pair."""
        start = [("x", "y")] * before
        fast, plain = list(start), list(start)
        stopped = bodies.parse_pairs(raw, fast, limit)
        self.assertEqual((fast, stopped), (plain, pairs_one_by_one(raw, plain, limit)))


class JSONTests(SynchronousTestCase):
    """JSON bodies: every string leaf with its path, every key a name."""

    def test_leaves_and_paths(self) -> None:
        """Nested objects and arrays; paths use . and []; numbers and booleans are not values."""
        doc = {"user": {"name": "bob", "tags": ["a", "b"], "age": 3, "ok": True},
               "items": [{"id": "x1"}, {"id": "x2"}], "$where": "1"}
        request = Request(b"POST", b"/", [(b"Content-Type", b"application/json")],
                          json.dumps(doc).encode())
        self.assertEqual(sorted(values(request, "args")), sorted([
            ("args:user.name", "bob"), ("args:user.tags[]", "a"), ("args:user.tags[]", "b"),
            ("args:items[].id", "x1"), ("args:items[].id", "x2"), ("args:$where", "1")]))
        self.assertEqual(sorted(v for _, v in values(request, "args_names")),
                         sorted(["user", "name", "tags", "age", "ok", "items", "id", "id",
                                 "$where"]))

    def test_without_arrays(self) -> None:
        """A document without arrays (no C{[} anywhere) gives its strings and keys all the same."""
        request = Request(b"POST", b"/", [(b"Content-Type", b"application/json")],
                          b'{"a": {"b": "x", "n": 1.5}, "c": "y", "d": null}')
        self.assertEqual(sorted(values(request, "args")), [("args:a.b", "x"), ("args:c", "y")])
        self.assertEqual(sorted(v for _, v in values(request, "args_names")),
                         ["a", "b", "c", "d", "n"])
        array = Request(b"POST", b"/", [(b"Content-Type", b"application/json")],
                        b'{"a": "[", "b": {"c": 2}}')
        self.assertEqual(sorted(values(array, "args")), [("args:a", "[")])

    def test_same_value_two_paths(self) -> None:
        """A string found at two paths is reported at both."""
        request = Request(b"POST", b"/", [(b"Content-Type", b"application/vnd.api+json")],
                          b'{"a": "same", "b": ["same"]}')
        self.assertEqual({t for t, v in values(request, "args") if v == "same"},
                         {"args:a", "args:b[]"})

    def test_malformed(self) -> None:
        """Invalid JSON declared as JSON is an anomaly, and the body is then read whole."""
        request = Request(b"POST", b"/", [(b"Content-Type", b"application/json")],
                          b'{"q": "<script>"')
        self.assertIn((bodies.MALFORMED_JSON, "body"), request.anomalies)
        self.assertEqual(values(request, "body"), [("body", '{"q": "<script>"')])

    def test_prefix(self) -> None:
        """A body cut at the inspection limit is read as far as it goes, without an anomaly."""
        request = Request(b"POST", b"/", [(b"Content-Type", b"application/json")],
                          b'{"a": "one", "b": "two", "c": "thr', complete=False)
        self.assertEqual(request.anomalies, [])
        self.assertEqual([v for _, v in values(request, "args")], ["one", "two"])

    def test_too_deep(self) -> None:
        """JSON nested beyond what the parser follows is the limits anomaly, not an exception."""
        request = Request(b"POST", b"/", [(b"Content-Type", b"application/json")],
                          b"[" * 100000 + b"]" * 100000)
        self.assertIn((bodies.LIMITS, "body"), request.anomalies)

    def test_sniffed(self) -> None:
        """A body without a type that parses as JSON is read as JSON, else as text."""
        request = Request(b"POST", b"/graphql", [], b'{"query": "{ me { id } }"}')
        self.assertEqual(values(request, "args"), [("args:query", "{ me { id } }")])
        request = Request(b"POST", b"/graphql", [], b"{ me { id } }")
        self.assertEqual(request.anomalies, [])
        self.assertEqual(values(request, "body"), [("body", "{ me { id } }")])


class XMLTests(SynchronousTestCase):
    """XML bodies: texts and attributes by path; entities are never expanded."""

    def test_texts_and_attributes(self) -> None:
        """Element text by path, attributes as path@name, processing instructions."""
        request = Request(b"POST", b"/", [(b"Content-Type", b"text/xml; charset=utf-8")],
                          b'<?xml version="1.0"?><order id="7"><item sku="a1">Tea &amp; cake'
                          b"</item><?php echo 1; ?></order>")
        self.assertEqual(values(request, "xml"), [
            ("xml:/order@id", "7"), ("xml:/order/item@sku", "a1"),
            ("xml:/order/item", "Tea & cake"), ("xml:#pi", "<?php echo 1; ?>")])

    def test_doctype_and_entities(self) -> None:
        """The DOCTYPE is a value of its own; an entity reference stays as written, unexpanded."""
        body = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">'
                b'<!ENTITY big "AAAA">]><x>&e;&big;</x>')
        request = Request(b"POST", b"/", [(b"Content-Type", b"application/xml")], body)
        found = dict(values(request, "xml"))
        self.assertIn('<!ENTITY e SYSTEM "file:///etc/passwd">', found["xml:#doctype"])
        self.assertEqual(found["xml:/x"], "&e;&big;")
        self.assertEqual(request.anomalies, [])

    def test_external_doctype(self) -> None:
        """A DOCTYPE without an internal subset is read whole, from its "<!DOCTYPE"."""
        body = b'<?xml version="1.0"?>\n<!DOCTYPE r SYSTEM "http://x.example/e.dtd"><r>1</r>'
        request = Request(b"POST", b"/", [(b"Content-Type", b"application/xml")], body)
        self.assertEqual(dict(values(request, "xml"))["xml:#doctype"],
                         '<!DOCTYPE r SYSTEM "http://x.example/e.dtd">')

    def test_billion_laughs(self) -> None:
        """Nested entities are not expanded, so an entity bomb costs nothing."""
        lol = b"".join(b'<!ENTITY l%d "&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;">'
                       % ((i,) + (i - 1,) * 10) for i in range(1, 10))
        body = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY l0 "lol">' + lol + b"]><x>&l9;</x>"
        request = Request(b"POST", b"/", [(b"Content-Type", b"application/xml")], body)
        self.assertEqual(dict(values(request, "xml"))["xml:/x"], "&l9;")

    def test_malformed(self) -> None:
        """Malformed XML is an anomaly, and the body is then read whole."""
        request = Request(b"POST", b"/", [(b"Content-Type", b"application/xml")],
                          b"<a><b></a>")
        self.assertIn((bodies.MALFORMED_XML, "body"), request.anomalies)
        self.assertEqual(values(request, "body"), [("body", "<a><b></a>")])


class MultipartTests(SynchronousTestCase):
    """multipart/form-data: fields, names, file names, the start of file contents."""

    TYPE = b"multipart/form-data; boundary=XyZ"

    def body(self, *parts: bytes, close: bool = True) -> bytes:
        return b"".join(b"--XyZ\r\n" + p + b"\r\n" for p in parts) + (b"--XyZ--\r\n" if close else b"")

    def test_fields_and_files(self) -> None:
        """Field values, names (of fields and files), file names and file contents."""
        body = self.body(
            b'Content-Disposition: form-data; name="title"\r\n\r\nHello',
            b'Content-Disposition: form-data; name="doc"; filename="a b.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\nfile text")
        request = Request(b"POST", b"/", [(b"Content-Type", self.TYPE)], body)
        self.assertEqual(values(request, "args"), [("args:title", "Hello")])
        self.assertEqual(values(request, "files"), [("files:doc", "a b.txt")])
        self.assertEqual(values(request, "file_content"), [("file_content:doc", "file text")])
        self.assertEqual(sorted(v for _, v in values(request, "args_names")), ["doc", "title"])
        self.assertEqual(request.anomalies, [])

    def test_content_limit_and_lf(self) -> None:
        """Only the start of a file is inspected; bare LF line ends are accepted."""
        big = b"A" * (bodies.FILE_CONTENT_LIMIT * 2)
        body = (b'--XyZ\nContent-Disposition: form-data; name="f"; filename="x.bin"\n\n' + big
                + b"\n--XyZ--\n")
        request = Request(b"POST", b"/", [(b"Content-Type", self.TYPE)], body)
        [(_, content)] = values(request, "file_content")
        self.assertEqual(len(content), bodies.FILE_CONTENT_LIMIT)
        self.assertEqual(request.anomalies, [])

    def test_malformed(self) -> None:
        """No boundary, no closing delimiter, broken part headers: each an anomaly."""
        cases = [
            (b"multipart/form-data", b"--XyZ\r\nstuff"),
            (self.TYPE, self.body(b'Content-Disposition: form-data; name="a"\r\n\r\n1',
                                  close=False)),
            (self.TYPE, self.body(b"no colon here\r\n\r\nvalue")),
            (self.TYPE, b"not multipart at all"),
        ]
        for content_type, body in cases:
            request = Request(b"POST", b"/", [(b"Content-Type", content_type)], body)
            self.assertIn(bodies.MALFORMED_MULTIPART, [k for k, _ in request.anomalies], body)

    def test_folded_part_header(self) -> None:
        """A part header folded over two lines is unfolded: its field is read as such."""
        body = self.body(b'Content-Disposition: form-data;\r\n name="q"\r\n\r\nvalue')
        request = Request(b"POST", b"/", [(b"Content-Type", self.TYPE)], body)
        self.assertEqual(values(request, "args"), [("args:q", "value")])

    def test_unnamed_contents_inspected(self) -> None:
        """
        The content of a part without Content-Disposition, or with headers
        that do not parse, is still inspected (as a nameless field), with the
        malformed anomaly.
        """
        for part in (b"Content-Type: text/plain\r\n\r\n1' OR 1=1--",
                     b"no colon here\r\n\r\n1' OR 1=1--"):
            request = Request(b"POST", b"/", [(b"Content-Type", self.TYPE)], self.body(part))
            self.assertEqual(values(request, "args"), [("args:", "1' OR 1=1--")])
            self.assertIn(bodies.MALFORMED_MULTIPART, [k for k, _ in request.anomalies])

    def test_evasion(self) -> None:
        """Names with ; or = and parts in unusual character sets are the evasion anomaly."""
        utf7 = (b'Content-Disposition: form-data; name="a"\r\n'
                b"Content-Type: text/plain; charset=utf-7\r\n\r\n+ADw-")
        for part in (b'Content-Disposition: form-data; name="a;b"\r\n\r\nx', utf7):
            request = Request(b"POST", b"/", [(b"Content-Type", self.TYPE)], self.body(part))
            self.assertIn(bodies.MULTIPART_EVASION, [k for k, _ in request.anomalies])

    def test_unterminated_prefix(self) -> None:
        """A multipart prefix cut at the limit is no anomaly."""
        body = self.body(b'Content-Disposition: form-data; name="a"\r\n\r\n1', close=False)
        request = Request(b"POST", b"/", [(b"Content-Type", self.TYPE)], body, complete=False)
        self.assertEqual(request.anomalies, [])


class KindTests(SynchronousTestCase):
    """Which bodies are inspected, and how."""

    def test_kinds(self) -> None:
        """Forms, JSON, XML, multipart and text are inspected; binary types stream untouched."""
        self.assertEqual(bodies.body_kind("application/problem+json"), bodies.JSON)
        self.assertEqual(bodies.body_kind("application/soap+xml"), bodies.XML)
        self.assertEqual(bodies.body_kind("text/plain"), bodies.TEXT)
        self.assertEqual(bodies.body_kind(""), bodies.TEXT)
        for binary in ("image/png", "application/octet-stream", "video/mp4", "application/zip"):
            self.assertIsNone(bodies.body_kind(binary))
        request = Request(b"PUT", b"/x.png", [(b"Content-Type", b"image/png")], b"<script>")
        self.assertEqual(values(request, "body"), [])

    def test_charset(self) -> None:
        """A text body is decoded with its declared character set (UTF-7 evasion shows)."""
        request = Request(b"POST", b"/", [(b"Content-Type", b"text/plain; charset=utf-7")],
                          b"+ADw-script+AD4-")
        self.assertEqual(values(request, "body"), [("body", "<script>")])

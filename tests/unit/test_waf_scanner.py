"""
Tests for L{veil.waf.scanner}: the change flags that let values skip their
transformations, and the fast path (one scan, flags, the memo) against the
reference that applies every chain to every value.
"""

from __future__ import annotations

import base64 as b64
import json
from uuid import uuid4

import hyperscan
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from veil.waf.engine import Engine
from veil.waf.patterns import CHANGE_FLAGS, per_value
from veil.waf.policy import SitePolicy
from veil.waf.request import Request
from veil.waf.scanner import joined, scan
from veil.waf.transforms import TRANSFORMS

#: Characters the transformations act on, and ordinary ones.
SPECIAL = "%&#;\\'\"^$@*?!_{},/-+=<>![] \t\r\n\x00\xa0\u00ad\uff1c\u200bxXuU0123456789aAzZ"


def flag_database(name: str):
    """The change flags of transformation C{name}, compiled as the engine compiles them."""
    expressions = CHANGE_FLAGS[name]
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=[(e if n else per_value(e)).encode() for e, n in expressions],
               ids=list(range(len(expressions))),
               flags=[hyperscan.HS_FLAG_DOTALL] * len(expressions))
    return db


def base64_runs():
    """Text with a run of Base64 (either alphabet, padded or not, after a slash or not) in it."""
    def build(around: tuple[str, str], text: str, urlsafe: bool, padded: bool, slash: bool) -> str:
        encoded = (b64.urlsafe_b64encode if urlsafe else b64.b64encode)(text.encode()).decode()
        if not padded:
            encoded = encoded.rstrip("=")
        return around[0] + ("/" if slash else "") + encoded + around[1]
    return st.builds(build, st.tuples(st.text(SPECIAL, max_size=4), st.text(SPECIAL, max_size=4)),
                     st.text(min_size=3, max_size=40), st.booleans(), st.booleans(), st.booleans())


class ChangeFlagTests(SynchronousTestCase):
    """A value that a transformation changes always matches one of its flags."""

    @settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(text=st.one_of(st.text(SPECIAL, max_size=40), st.text(max_size=30), base64_runs()))
    def test_flags_are_supersets(self, text: str) -> None:
        """For every flagged transformation: changed implies flagged."""
        data, _ = joined([text])
        for name in CHANGE_FLAGS:
            if TRANSFORMS[name](text) != text:
                hits, _ = scan(DATABASES[name], data)
                self.assertTrue(hits, f"{name} changes {text!r} but no flag matches it")

    def test_base64_flag_leaves_one_case_alone(self) -> None:
        """Runs of one case or of digits (slugs, codes, hex, dates) are not flagged for base64."""
        for text in ("SKU-6305-1234", "merino-sweater-size-5", "d41d8cd98f00b204e9800998ecf8427e",
                     "2026-12-04T10:00:00Z", "1733300000000", "ORDER-2026-ABC"):
            self.assertEqual(scan(DATABASES["base64"], joined([text])[0])[0], [], text)
        for text in ("aGVsbG8gd29ybGQ=", "1234567890123=", "12345+678901234", "x/eyJhbGciOiJIUzI1NiJ9"):
            self.assertNotEqual(scan(DATABASES["base64"], joined([text])[0])[0], [], text)


DATABASES = {name: flag_database(name) for name in CHANGE_FLAGS}

_ENGINES: list[Engine] = []


def engines() -> tuple[Engine, Engine]:
    """The package's rules, with the fast path and as the reference, compiled once."""
    if not _ENGINES:
        _ENGINES.extend([Engine(), Engine(fast=False)])
    return _ENGINES[0], _ENGINES[1]


#: Pieces of attacks and of ordinary values, to build requests from.
WORDS = st.sampled_from([
    "1' OR '1'='1", "union select", "<script>alert(1)</script>", "%3Cscript%3E", "../../etc/passwd",
    "..%2f..%2f", "${jndi:ldap://x/a}", ";cat /etc/passwd", "{{7*7}}", "&lt;img src=x onerror=1&gt;",
    "PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==", "c'a't", "/*!50000union*/", "\\u003cscript", "＜script＞",
    "Ana Silva", "merino wool", "SKU-6305-1234", "price_asc", "O'Reilly", "select the best",
    "2026-12-04T10:00:00Z", "a+b", "x=1&y=2", "Mozilla/5.0 (X11; Linux x86_64)", "text/html;q=0.9",
    "eyJhbGciOiJIUzI1NiJ9", "", " ", "0", "\x00", "%00", "%u0027", "&#60;", "#", "--", "'", "\"",
])
VALUES = st.lists(WORDS, min_size=1, max_size=3).map("".join)


def request(query: list[tuple[str, str]], headers: list[tuple[str, str]],
            body: list[tuple[str, str]] | None, as_json: bool) -> Request:
    """A request carrying the generated values in its query, headers and body."""
    encoded = "&".join(f"{k}={v}" for k, v in query).encode("utf-8", "surrogatepass")
    target = b"/p" + (b"?" + encoded if query else b"")
    head = [(b"Host", b"a.test")] + [(k.encode("latin-1"), v.encode("utf-8")) for k, v in headers]
    if body is None:
        return Request(b"GET", target, head)
    if as_json:
        data = json.dumps({k: [v, {"n": v}] for k, v in body}).encode()
        kind = b"application/json"
    else:
        data = "&".join(f"{k}={v}" for k, v in body).encode("utf-8", "surrogatepass")
        kind = b"application/x-www-form-urlencoded"
    return Request(b"POST", target, head + [(b"Content-Type", kind)], data)


class FastPathTests(SynchronousTestCase):
    """The fast path finds exactly what the reference finds, scanned or from its memo."""

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(query=st.lists(st.tuples(st.sampled_from(["q", "id", "x", "name"]), VALUES), max_size=4),
           headers=st.lists(st.tuples(st.sampled_from(["User-Agent", "Referer", "Cookie", "X-A"]),
                                      VALUES), max_size=3),
           body=st.none() | st.lists(st.tuples(st.sampled_from(["a", "b"]), VALUES), max_size=3),
           as_json=st.booleans(), paranoia=st.integers(min_value=1, max_value=4))
    def test_same_matches(self, query: list, headers: list, body: list | None, as_json: bool,
                          paranoia: int) -> None:
        """The same (rule, target, detail) triples, the first time and from the memo."""
        fast, reference = engines()
        policy = SitePolicy(uuid4(), paranoia=paranoia)

        def matches(engine: Engine) -> list:
            verdict = engine.inspect(request(query, headers, body, as_json), policy)
            return sorted((m.rule_id, m.target, m.detail or "") for m in verdict.matches)

        expected = matches(reference)
        self.assertEqual(matches(fast), expected)
        self.assertEqual(matches(fast), expected)

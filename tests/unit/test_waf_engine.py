"""
Tests for L{veil.waf.engine}: the operators, the joined-buffer scanning,
paranoia levels, site policies (exclusions, endpoint profiles, mode) and the
verdict with its excerpt, on small rule sets written for each test.
"""

from __future__ import annotations

import random
import re
from uuid import uuid4

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from veil.waf import engine as engine_module
from veil.waf.engine import MAX_HITS, Engine
from veil.waf.operators import Detector, default_registry, registry
from veil.waf.patterns import split_words
from veil.waf.policy import EndpointProfile, Exclusion, SitePolicy
from veil.waf.request import Request
from veil.waf.rules import load_text
from veil.waf.verdict import BENIGN, MALICIOUS, SUSPICIOUS


def engine(body: str, detectors: dict | None = None, cls: str = "xss") -> Engine:
    """An engine of the rules in C{body} (rule tables of one file of class C{cls})."""
    return Engine(load_text(f'class = "{cls}"\ntags = ["CWE-1"]\n' + body, "test.toml"),
                  detectors or {})


def rule(ident: int, operator: str, targets: str = '["args"]', severity: str = "critical",
         extra: str = "") -> str:
    return (f"[[rule]]\nid = {ident}\nseverity = \"{severity}\"\ndescription = \"r{ident}\"\n"
            f"targets = {targets}\n{operator}\n{extra}\n")


def get(target: bytes, headers: list | None = None) -> Request:
    return Request(b"GET", target, headers or [(b"Host", b"a.test")])


POLICY = SitePolicy(uuid4())


def ids(verdict) -> list[int]:
    return sorted({m.rule_id for m in verdict.matches if m.excluded_by is None})


class OperatorTests(SynchronousTestCase):
    """Each operator, compiled into the multi-pattern database."""

    def test_rx(self) -> None:
        """A regular expression, case-insensitive unless the rule says case = true."""
        e = engine(rule(1, "rx = 'ab+c'") + rule(2, "rx = 'XyZ'", extra="case = true"))
        self.assertEqual(ids(e.inspect(get(b"/?q=ABBBC"), POLICY)), [1])
        self.assertEqual(ids(e.inspect(get(b"/?q=xyz"), POLICY)), [])
        self.assertEqual(ids(e.inspect(get(b"/?q=XyZ"), POLICY)), [2])

    def test_phrases(self) -> None:
        """pm, contains, begins, ends and equals, with punctuation taken literally."""
        e = engine(rule(1, 'pm = ["a.b", "c*d"]') + rule(2, 'contains = "(x)"')
                   + rule(3, 'begins = "go"') + rule(4, 'ends = "stop"')
                   + rule(5, 'equals = ["exact", "both"]'))
        self.assertEqual(ids(e.inspect(get(b"/?q=za.bz"), POLICY)), [1])
        self.assertEqual(ids(e.inspect(get(b"/?q=aXb"), POLICY)), [])
        self.assertEqual(ids(e.inspect(get(b"/?q=1(x)2"), POLICY)), [2])
        self.assertEqual(ids(e.inspect(get(b"/?q=gone&r=ago"), POLICY)), [3])
        self.assertEqual(ids(e.inspect(get(b"/?q=nonstop&r=stops"), POLICY)), [4])
        self.assertEqual(ids(e.inspect(get(b"/?q=exact&r=inexact&s=both"), POLICY)), [5])
        self.assertEqual(ids(e.inspect(get(b"/?q=exactly"), POLICY)), [])

    def test_bytes(self) -> None:
        """A byte range over the value's UTF-8."""
        e = engine(rule(1, 'bytes = "0-8,11"'))
        self.assertEqual(ids(e.inspect(get(b"/?q=a%00b"), POLICY)), [1])
        self.assertEqual(ids(e.inspect(get(b"/?q=a%0bb"), POLICY)), [1])
        self.assertEqual(ids(e.inspect(get(b"/?q=a%0ab"), POLICY)), [])

    def test_num(self) -> None:
        """A numeric comparison, here on a header's length through the length transformation."""
        e = engine(rule(1, 'num = "> 10"', targets='["headers:x-long"]', extra='transforms = ["length"]'))
        self.assertEqual(ids(e.inspect(get(b"/", [(b"X-Long", b"a" * 11)]), POLICY)), [1])
        self.assertEqual(ids(e.inspect(get(b"/", [(b"X-Long", b"a" * 10)]), POLICY)), [])

    def test_detect(self) -> None:
        """A detector runs only on values its prefilter matches, and its reason is the detail."""
        seen: list[str] = []

        def detect(text: str) -> str | None:
            seen.append(text)
            return "fingerprint:sx" if "sneaky" in text else None

        e = engine(rule(1, 'detect = "test"'), registry(Detector("test", r"snea|zz", detect)))
        verdict = e.inspect(get(b"/?a=hello&b=a+sneaky+one&c=zz+top"), POLICY)
        self.assertEqual(ids(verdict), [1])
        self.assertEqual(verdict.matches[0].detail, "fingerprint:sx")
        self.assertEqual(sorted(seen), ["a sneaky one", "zz top"])

    def test_missing_detector(self) -> None:
        """A rule whose detector is not installed is reported unavailable and never runs."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        e = engine(rule(1, 'detect = "nosuch"') + rule(2, "rx = 'x'"))
        self.assertEqual([u.rule.id for u in e.unavailable], [1])
        self.assertEqual([r.id for r in e.rules_at(1)], [2])
        self.assertEqual(events[0]["rule_id"], 1)

    def test_default_registry(self) -> None:
        """The built-in detectors are whichever of veil.waf.sqli/xss are installed."""
        found = default_registry()
        self.assertTrue(set(found) <= {"detect_sqli", "detect_xss"})
        for detector in found.values():
            self.assertTrue(detector.prefilter)

    def test_anomaly(self) -> None:
        """An anomaly rule matches the request's parse anomalies, on their target."""
        e = engine('[[rule]]\nid = 1\nseverity = "error"\ndescription = "bad json"\nanomaly = "json"\n',
                   cls="protocol")
        request = Request(b"POST", b"/", [(b"Content-Type", b"application/json")], b"{nope")
        verdict = e.inspect(request, POLICY)
        self.assertEqual([(m.rule_id, m.target, m.detail) for m in verdict.matches],
                         [(1, "body", "json")])
        self.assertEqual(verdict.classification, SUSPICIOUS)

    def test_conditions(self) -> None:
        """and-conditions must all hold: absent, not, and value operators."""
        e = engine(rule(1, "rx = '^mozilla'", targets='["headers:user-agent"]',
                        extra='[[rule.and]]\ntargets = ["headers:accept"]\nabsent = true\n')
                   + rule(2, "rx = 'x'", extra='[[rule.and]]\ntargets = ["method"]\nnot = true\n'
                          'equals = "GET"\n'))
        browser = [(b"User-Agent", b"Mozilla/5.0")]
        self.assertEqual(ids(e.inspect(get(b"/", browser), POLICY)), [1])
        self.assertEqual(ids(e.inspect(get(b"/", browser + [(b"Accept", b"*/*")]), POLICY)), [])
        self.assertEqual(ids(e.inspect(get(b"/?q=x"), POLICY)), [])
        post = Request(b"POST", b"/?q=x", [])
        self.assertEqual(ids(e.inspect(post, POLICY)), [2])

    def test_prefilter_confirmation(self) -> None:
        """A pattern hyperscan cannot express exactly is a prefilter confirmed with re."""
        e = engine(rule(1, "rx = 'foo(?!bar)'"))
        self.assertEqual(e.confirmed, {1})
        self.assertEqual(ids(e.inspect(get(b"/?q=foobaz"), POLICY)), [1])
        self.assertEqual(ids(e.inspect(get(b"/?q=foobar"), POLICY)), [])


class JoinedBufferTests(SynchronousTestCase):
    """Values are scanned together but matched one by one."""

    def test_no_match_across_values(self) -> None:
        """A pattern that would span two values does not match."""
        e = engine(rule(1, "rx = 'union\\s+select'"))
        self.assertEqual(ids(e.inspect(get(b"/?a=union&b=select"), POLICY)), [])
        self.assertEqual(ids(e.inspect(get(b"/?a=union+select"), POLICY)), [1])

    def test_anchors_are_per_value(self) -> None:
        """^ and $ are each value's start and end."""
        e = engine(rule(1, "rx = '^abc$'"))
        verdict = e.inspect(get(b"/?a=xabc&b=abc&c=abcx"), POLICY)
        self.assertEqual([m.target for m in verdict.matches], ["args:b"])

    def test_separator_in_a_value(self) -> None:
        """A value holding the separator character is still one value."""
        e = engine(rule(1, "rx = 'a.b'"))
        verdict = e.inspect(get(b"/?q=a%1eb&r=x"), POLICY)
        self.assertEqual([m.target for m in verdict.matches], ["args:q"])

    def test_targets_filtered(self) -> None:
        """A rule reports only values among its targets, though it scans a shared buffer."""
        e = engine(rule(1, "rx = 'evil'", targets='["args"]')
                   + rule(2, "rx = 'tool'", targets='["headers", "!headers:referer"]'))
        request = get(b"/?q=tool", [(b"Referer", b"evil tool"), (b"X-A", b"evil")])
        verdict = e.inspect(request, POLICY)
        self.assertEqual(sorted((m.rule_id, m.target) for m in verdict.matches), [])
        request = get(b"/?q=evil", [(b"X-A", b"tool")])
        self.assertEqual(sorted((m.rule_id, m.target) for m in e.inspect(request, POLICY).matches),
                         [(1, "args:q"), (2, "headers:x-a")])

    def test_many_matches_bounded(self) -> None:
        """A body matching a pattern everywhere is cut off at MAX_HITS, and still judged."""
        e = engine(rule(1, "rx = 'a'", targets='["body"]'))
        request = Request(b"POST", b"/", [(b"Content-Type", b"text/plain")], b"a" * (MAX_HITS * 4))
        self.assertEqual(ids(e.inspect(request, POLICY)), [1])


class SplitAlternativesTests(SynchronousTestCase):
    """
    A pattern around one group of words mixed with other alternatives is
    compiled as two patterns (L{veil.waf.patterns.split_words}): it matches
    where either does, and is reported once.
    """

    PATTERN = r"\b(?:sleep|benchmark|pg_\w+|x\.y)\s*\("

    def test_split(self) -> None:
        """The words and the other alternatives become one expression each."""
        self.assertEqual(split_words(self.PATTERN),
                         [r"\b(?:sleep|benchmark)\s*\(", r"\b(?:pg_\w+|x\.y)\s*\("])

    def test_left_alone(self) -> None:
        """Top-level alternation, repeated or nested groups, inline flags: unchanged."""
        for pattern in (r"(?:ab|cd|e\w)|x", r"a(?:ab|cd|e\w)+z", r"(?i)a(?:ab|cd|e\w)",
                        r"a(?:ab|cd|e\w)b(?:f|g)", r"(ab|cd|e\w)", r"a(?:ab|cd)z",
                        r"[(|]x"):
            self.assertEqual(split_words(pattern), [pattern], pattern)

    def test_same_matches(self) -> None:
        """On many strings, the pieces together match exactly where the pattern does."""
        pieces = [re.compile(p, re.IGNORECASE) for p in split_words(self.PATTERN)]
        whole = re.compile(self.PATTERN, re.IGNORECASE)
        words = ["sleep", "benchmark", "pg_sleep", "x.y", "xpy", "PG_", "sleepy", " ", "(",
                 "a", "_", "."]
        rng = random.Random(11)
        for _ in range(5000):
            text = "".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
            self.assertEqual(bool(whole.search(text)), any(p.search(text) for p in pieces),
                             text)

    def test_engine(self) -> None:
        """The rule matches through either half, once per target."""
        e = engine(rule(1, f"rx = '{self.PATTERN}'"))
        for query, expected in ((b"/?q=select+BENCHMARK(1,2)", [1]), (b"/?q=pg_sleep+(5)", [1]),
                                (b"/?q=sleep+pg_read(1)", [1]), (b"/?q=x.y(", [1]),
                                (b"/?q=sleeper(1)", [])):
            verdict = e.inspect(get(query), POLICY)
            self.assertEqual(ids(verdict), expected, query)
            self.assertEqual(len(verdict.matches), len(expected))


RULES = (rule(1, "rx = 'boom'") + rule(2, "rx = 'bang'", severity="warning")
         + rule(3, "rx = 'deep'", extra="paranoia = 3") + rule(4, "rx = 'lvl2'", extra="paranoia = 2"))


class PolicyTests(SynchronousTestCase):
    """The site's paranoia, threshold, mode, exclusions and endpoint profiles."""

    def setUp(self) -> None:
        self.engine = engine(RULES)

    def test_paranoia(self) -> None:
        """Rules above the site's level do not run; boost and deep raise the level."""
        request = get(b"/?q=deep+lvl2")
        self.assertEqual(ids(self.engine.inspect(request, POLICY)), [])
        self.assertEqual(ids(self.engine.inspect(request, SitePolicy(uuid4(), paranoia=2))), [4])
        self.assertEqual(ids(self.engine.inspect(request, POLICY, boost=1)), [4])
        deep = SitePolicy(uuid4(), profiles=(EndpointProfile("*", "/admin*", "deep"),))
        verdict = self.engine.inspect(get(b"/admin/x?q=deep+lvl2"), deep)
        self.assertEqual((ids(verdict), verdict.paranoia, verdict.profile), ([3, 4], 4, "deep"))

    def test_skip(self) -> None:
        """A skip profile inspects nothing."""
        policy = SitePolicy(uuid4(), profiles=(EndpointProfile("GET", "/healthz", "skip"),))
        verdict = self.engine.inspect(get(b"/healthz?q=boom"), policy)
        self.assertEqual((verdict.classification, verdict.profile, verdict.matches),
                         (BENIGN, "skip", ()))
        self.assertEqual(ids(self.engine.inspect(get(b"/other?q=boom"), policy)), [1])

    def test_exclusions(self) -> None:
        """By rule, by class, under a path prefix, for one target: excluded matches are reported, not scored."""
        request = get(b"/forum/post?body=boom&title=boom")
        cases = [
            (Exclusion("e1", rule_id=1), BENIGN, ["args:body", "args:title"]),
            (Exclusion("e2", attack_class="xss"), BENIGN, ["args:body", "args:title"]),
            (Exclusion("e3", rule_id=1, path_prefix="/forum/"), BENIGN, ["args:body", "args:title"]),
            (Exclusion("e4", rule_id=1, path_prefix="/blog/"), MALICIOUS, []),
            (Exclusion("e5", rule_id=1, target="args:body"), MALICIOUS, ["args:body"]),
            (Exclusion("e6", attack_class="sqli"), MALICIOUS, []),
        ]
        for exclusion, classification, excluded in cases:
            verdict = self.engine.inspect(request, SitePolicy(uuid4(), exclusions=(exclusion,)))
            self.assertEqual(verdict.classification, classification, exclusion)
            self.assertEqual(sorted(m.target for m in verdict.matches if m.excluded_by), excluded)
            if excluded:
                self.assertEqual({m.excluded_by for m in verdict.matches if m.excluded_by},
                                 {exclusion.id})
        verdict = self.engine.inspect(request, SitePolicy(uuid4(), exclusions=(
            Exclusion("e1", rule_id=1),)))
        self.assertEqual((verdict.rule_ids, verdict.excluded_ids), ((), (1,)))

    def test_threshold_and_mode(self) -> None:
        """The score against the threshold, and whether it blocks (block) or not (monitor)."""
        request = get(b"/?q=bang")
        self.assertEqual(self.engine.inspect(request, POLICY).classification, SUSPICIOUS)
        low = SitePolicy(uuid4(), threshold=3)
        self.assertTrue(self.engine.inspect(request, low).blocked)
        monitor = SitePolicy(uuid4(), mode="monitor", threshold=3)
        verdict = self.engine.inspect(request, monitor)
        self.assertEqual((verdict.classification, verdict.blocked), (MALICIOUS, False))


class RecentRequestTests(SynchronousTestCase):
    """A request without a body seen again is answered from the memo, exactly as scanned."""

    def setUp(self) -> None:
        self.engine = Engine(load_text('class = "xss"\ntags = ["CWE-1"]\n' + RULES
                                       + rule(5, "rx = 'boom'", targets='["headers"]'),
                                       "test.toml"), {})
        self.scans = 0
        original = engine_module._Scan.run

        def counted(scan, plan):
            self.scans += 1
            return original(scan, plan)
        self.patch(engine_module._Scan, "run", counted)

    def test_same_request(self) -> None:
        """The same request again is not scanned again, and gets the same verdict."""
        headers = [(b"Host", b"a.test"), (b"User-Agent", b"curl/8")]
        first = self.engine.inspect(get(b"/?q=bang", list(headers)), POLICY)
        again = self.engine.inspect(get(b"/?q=bang", list(headers)), POLICY)
        self.assertEqual(self.scans, 1)
        self.assertEqual((again.rule_ids, again.score, again.classification),
                         (first.rule_ids, first.score, first.classification))
        self.assertEqual(first.rule_ids, (2,))

    def test_any_difference_scans(self) -> None:
        """Another header value, header order, target, method or paranoia level is scanned anew."""
        base = [(b"Host", b"a.test"), (b"User-Agent", b"curl/8")]
        self.assertEqual(self.engine.inspect(get(b"/?q=x", base), POLICY).rule_ids, ())
        attack = [(b"Host", b"a.test"), (b"User-Agent", b"boom")]
        self.assertEqual(self.engine.inspect(get(b"/?q=x", attack), POLICY).rule_ids, (5,))
        self.engine.inspect(get(b"/?q=x", base[::-1]), POLICY)
        self.engine.inspect(get(b"/?q=y", base), POLICY)
        self.engine.inspect(Request(b"HEAD", b"/?q=x", base), POLICY)
        self.assertEqual(self.scans, 5)
        lvl2 = get(b"/?q=lvl2", base)
        self.assertEqual(self.engine.inspect(lvl2, POLICY).rule_ids, ())
        self.assertEqual(self.engine.inspect(lvl2, SitePolicy(uuid4(), paranoia=2)).rule_ids,
                         (4,))
        self.assertEqual(self.scans, 7)

    def test_bodies_not_remembered(self) -> None:
        """A request with a body, or whose body is not read, is scanned every time."""
        for _ in range(2):
            self.engine.inspect(Request(b"POST", b"/", [(b"Host", b"a.test")], b"q=bang"), POLICY)
            self.engine.inspect(Request(b"POST", b"/", [(b"Host", b"a.test")], b"", False),
                                POLICY)
        self.assertEqual(self.scans, 4)

    def test_explain_scans(self) -> None:
        """An explained inspection is always a scan (it carries the matched values)."""
        request = get(b"/?q=boom")
        self.engine.inspect(request, POLICY)
        verdict = self.engine.inspect(get(b"/?q=boom"), POLICY, explain=True)
        self.assertEqual(self.scans, 2)
        self.assertEqual([m.value for m in verdict.matches], ["boom"])

    def test_bounded_and_forgotten(self) -> None:
        """The memo starts afresh when full, and forget() empties it."""
        self.patch(engine_module, "RECENT_REQUESTS", 2)
        for n in range(5):
            self.engine.inspect(get(b"/?n=%d" % n), POLICY)
        self.assertLessEqual(len(self.engine._recent), 2)
        self.engine.forget()
        self.engine.inspect(get(b"/?n=4"), POLICY)
        self.assertEqual(self.scans, 6)


class VerdictTests(SynchronousTestCase):
    """The verdict's score, class, confidence and excerpt."""

    def setUp(self) -> None:
        self.engine = Engine(load_text('class = "sqli"\ntags = ["CWE-89"]\n' + rule(1, "rx = 'boom'"))
                             + load_text('class = "xss"\ntags = ["CWE-79"]\n'
                                         + rule(2, "rx = 'bang'", severity="error")
                                         + rule(3, "rx = 'bing'", severity="error")), {})

    def test_scoring(self) -> None:
        """Each rule counts once; the class of the most severe match; confidence grows with the score."""
        verdict = self.engine.inspect(get(b"/?a=boom&b=boom"), POLICY)
        self.assertEqual((verdict.score, verdict.attack_type, verdict.confidence), (5, "sqli", 0.5))
        verdict = self.engine.inspect(get(b"/?a=bang+bing+boom"), POLICY)
        self.assertEqual((verdict.score, verdict.attack_type), (13, "sqli"))
        self.assertGreater(verdict.confidence, 0.8)
        verdict = self.engine.inspect(get(b"/?a=bang"), POLICY)
        self.assertEqual((verdict.classification, verdict.confidence), (SUSPICIOUS, 0.8))
        verdict = self.engine.inspect(get(b"/?a=fine"), POLICY)
        self.assertEqual((verdict.classification, verdict.confidence, verdict.excerpt),
                         (BENIGN, 1.0, None))

    def test_excerpt_redacted(self) -> None:
        """Cookies, credentials and secret-named parameters are masked; control characters escaped."""
        request = Request(b"POST", b"/login?next=/home&access_token=SECRET1&q=boom", [
            (b"Host", b"a.test"), (b"Cookie", b"session=SECRET2; theme=dark"),
            (b"Authorization", b"Bearer SECRET3"), (b"X-Api-Key", b"SECRET4"),
            (b"Content-Type", b"application/x-www-form-urlencoded")],
            b"user=bob&password=SECRET5&note=boom%0d%0a")
        verdict = self.engine.inspect(request, POLICY)
        excerpt = verdict.excerpt
        self.assertIsNotNone(excerpt)
        for secret in ("SECRET1", "SECRET2", "SECRET3", "SECRET5"):
            self.assertNotIn(secret, excerpt)
        self.assertIn("access_token=***", excerpt)
        self.assertIn("cookie: session=***; theme=***", excerpt)
        self.assertIn("authorization: Bearer ***", excerpt)
        self.assertIn("user=bob", excerpt)
        self.assertTrue(all(c.isprintable() for line in excerpt.splitlines() for c in line))

    def test_excerpt_json_and_length(self) -> None:
        """Secret-named JSON members are masked; the excerpt has a bounded length."""
        body = b'{"username": "bob", "password": "SECRET", "bio": "boom ' + b"x" * 5000 + b'"}'
        request = Request(b"POST", b"/api", [(b"Content-Type", b"application/json")], body)
        excerpt = self.engine.inspect(request, POLICY).excerpt
        self.assertNotIn("SECRET", excerpt)
        self.assertIn('"password": "***"', excerpt)
        self.assertLessEqual(len(excerpt), 1024)

    def test_no_value_in_matches(self) -> None:
        """A match names its target, never the value, unless asked to explain."""
        verdict = self.engine.inspect(get(b"/?a=boom"), POLICY)
        self.assertEqual((verdict.matches[0].target, verdict.matches[0].value), ("args:a", None))
        verdict = self.engine.inspect(get(b"/?a=boom"), POLICY, explain=True)
        self.assertEqual(verdict.matches[0].value, "boom")

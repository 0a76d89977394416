"""
The pure input checks of the WAF's configuration (L{veil.store.waf}) and the
reading of rules documents and profile order (L{veil.store.policies}).
"""

from __future__ import annotations

import uuid

from twisted.trial.unittest import SynchronousTestCase

from veil.store.admin import InvalidValue
from veil.store.policies import (
    EXCLUSION_ID,
    exclusion_from_json,
    exclusions_from_json,
    profile_precedence,
)
from veil.store.waf import (
    _ID_ALPHABET,
    check_text,
    parse_body_limit,
    parse_exclusion_id,
    parse_method,
    parse_pattern,
)
from veil.waf.policy import EndpointProfile, Exclusion, SitePolicy


class InputTests(SynchronousTestCase):
    """Operator input is normalised when good and refused with a reason when not."""

    def test_body_limit(self) -> None:
        """Sizes take k and M (1024-based), up to 1 MiB; 'default' is None."""
        self.assertEqual([parse_body_limit(t) for t in
                          ("0", "16384", "64k", "64 KiB", "1MiB", "1m", "DEFAULT")],
                         [0, 16384, 65536, 65536, 1048576, 1048576, None])
        for bad in ("1025k", "2M", "-1", "1.5M", "64kbit", ""):
            self.assertRaises(InvalidValue, parse_body_limit, bad)

    def test_text(self) -> None:
        """Free text is trimmed; tabs, escapes, bidi overrides and line separators are refused."""
        self.assertEqual(check_text("  search FP – Zoë  ", "the comment"), "search FP – Zoë")
        for bad in ("a\tb", "a\x1bb", "a\x85b", "a\u202eb", "a\u2028b", "x" * 501):
            self.assertRaises(InvalidValue, check_text, bad, "the comment")

    def test_patterns_and_methods(self) -> None:
        """Exact, prefix, suffix and {name} patterns pass; methods are upper-cased."""
        for good in ("/healthz", "/static/*", "/admin*", "*.css", "/api/users/{id}",
                     "/api/{version}/items/*"):
            self.assertEqual(parse_pattern(f" {good} ", "skip"), good)
        self.assertEqual(parse_pattern("/*", "deep"), "/*")
        self.assertEqual((parse_method("post"), parse_method("*")), ("POST", "*"))

    def test_exclusion_ids(self) -> None:
        """Ids are eight characters of an alphabet without look-alikes, read case-blind."""
        self.assertEqual(parse_exclusion_id(" Q4S56SZN "), "q4s56szn")
        self.assertFalse(set("01ilo") & set(_ID_ALPHABET))
        self.assertTrue(all(EXCLUSION_ID.fullmatch(c * 8) for c in _ID_ALPHABET))
        for bad in ("q4s56sz", "q4s56szn1", "q4s56szl", "q4s-6szn"):
            self.assertRaises(InvalidValue, parse_exclusion_id, bad)


class DocumentTests(SynchronousTestCase):
    """Rules documents become exclusions; what does not parse is reported, not applied."""

    def test_entry(self) -> None:
        """A full entry becomes an Exclusion with its target normalised."""
        self.assertEqual(
            exclusion_from_json({"id": "abcd2345", "rule": 942100, "path": "/s",
                                 "target": "headers:X-Q", "comment": "c"}),
            Exclusion("abcd2345", 942100, None, "/s", "headers:x-q"))

    def test_bad_entries(self) -> None:
        """Each kind of bad entry is refused with a reason naming it."""
        for entry, reason in [
                ({"id": "abcd2345"}, "a rule or a class"),
                ({"id": "abcd2345", "rule": True}, "bad rule id"),
                ({"id": "abcd2345", "rule": 1, "class": "xss"}, "not both"),
                ({"id": "abcd2345", "class": "worm"}, "not an attack class"),
                ({"id": "abcd2345", "rule": 1, "path": "x"}, "bad path prefix"),
                ({"id": "abcd2345", "rule": 1, "target": 5}, "bad target"),
                ({"id": "ABCD2345", "rule": 1}, "bad exclusion id"),
                ([], "JSON object")]:
            with self.assertRaises(ValueError) as caught:
                exclusion_from_json(entry)
            self.assertIn(reason, str(caught.exception))
        self.assertEqual(exclusions_from_json({"a": 1}), ((), ["'exclusions' is not a list"]))
        self.assertEqual(exclusions_from_json(None), ((), []))

    def test_profile_order(self) -> None:
        """Exact before {name} before wildcards; longer, method-specific and deep first."""
        profiles = [EndpointProfile("*", "/admin*", "deep"),
                    EndpointProfile("*", "/static/*", "skip"),
                    EndpointProfile("*", "/admin/public/*", "skip"),
                    EndpointProfile("*", "/api/{id}", "skip"),
                    EndpointProfile("*", "/login", "skip"),
                    EndpointProfile("POST", "/login", "deep"),
                    EndpointProfile("*", "/x/*", "skip"),
                    EndpointProfile("*", "/x/*", "deep")]
        ordered = sorted(profiles, key=profile_precedence)
        self.assertEqual([(p.method, p.path_pattern, p.mode) for p in ordered], [
            ("POST", "/login", "deep"), ("*", "/login", "skip"), ("*", "/api/{id}", "skip"),
            ("*", "/admin/public/*", "skip"), ("*", "/static/*", "skip"),
            ("*", "/admin*", "deep"), ("*", "/x/*", "deep"), ("*", "/x/*", "skip")])
        policy = SitePolicy(uuid.uuid4(), profiles=tuple(ordered))
        self.assertEqual(policy.profile_for("GET", "/admin/public/logo.png"), "skip")
        self.assertEqual(policy.profile_for("GET", "/admin/users"), "deep")
        self.assertEqual(policy.profile_for("POST", "/login"), "deep")
        self.assertEqual(policy.profile_for("GET", "/login"), "skip")

"""Tests for L{veil.waf.policy}: exclusions, endpoint profiles and targets."""

from __future__ import annotations

from uuid import uuid4

from twisted.trial.unittest import SynchronousTestCase

from veil.waf.policy import (
    EndpointProfile,
    Exclusion,
    SitePolicy,
    parse_target,
    path_matches,
)


class TargetTests(SynchronousTestCase):
    """L{parse_target} accepts the documented target names and refuses others."""

    def test_valid(self) -> None:
        """Collections alone and with a name; header names are lower-cased."""
        self.assertEqual(parse_target("args:q"), "args:q")
        self.assertEqual(parse_target(" cookies "), "cookies")
        self.assertEqual(parse_target("headers:User-Agent"), "headers:user-agent")
        self.assertEqual(parse_target("args:user.name"), "args:user.name")

    def test_invalid(self) -> None:
        """Unknown collections, empty names, control characters and overlong names."""
        for text in ("query:q", "args:", "", "args:a\x1b[2J", "args:" + "a" * 300):
            with self.assertRaises(ValueError, msg=text):
                parse_target(text)


class ExclusionTests(SynchronousTestCase):
    """L{Exclusion.covers} scopes by rule or class, path prefix and target."""

    def test_rule(self) -> None:
        """A rule exclusion covers that rule only, anywhere."""
        e = Exclusion("x1", rule_id=942100)
        self.assertTrue(e.covers(942100, "sqli", "/a", "args:q"))
        self.assertFalse(e.covers(942101, "sqli", "/a", "args:q"))

    def test_class_path_target(self) -> None:
        """A class exclusion under a path prefix for one target."""
        e = Exclusion("x2", attack_class="xss", path_prefix="/forum/", target="args:body")
        self.assertTrue(e.covers(1, "xss", "/forum/post", "args:body"))
        self.assertFalse(e.covers(1, "xss", "/blog/post", "args:body"))
        self.assertFalse(e.covers(1, "xss", "/forum/post", "args:title"))
        self.assertFalse(e.covers(1, "sqli", "/forum/post", "args:body"))

    def test_collection_target(self) -> None:
        """A collection target covers each of its members, and not other collections."""
        e = Exclusion("x3", rule_id=7, target="cookies")
        self.assertTrue(e.covers(7, "sqli", "/", "cookies:session"))
        self.assertTrue(e.covers(7, "sqli", "/", "cookies"))
        self.assertFalse(e.covers(7, "sqli", "/", "cookies_names"))
        self.assertFalse(e.covers(7, "sqli", "/", "args:cookies"))

    def test_one_of_rule_or_class(self) -> None:
        """Neither, both, or an unknown class is refused."""
        for kwargs in ({}, {"rule_id": 1, "attack_class": "xss"}, {"attack_class": "nope"}):
            with self.assertRaises(ValueError):
                Exclusion("x", **kwargs)


class ProfileTests(SynchronousTestCase):
    """Endpoint profile patterns: exact, prefix, suffix and segment parameters."""

    def test_patterns(self) -> None:
        cases = [
            ("/healthz", "/healthz", True), ("/healthz", "/healthz/x", False),
            ("/static/*", "/static/app.js", True), ("/static/*", "/stat", False),
            ("/admin*", "/administrator", True), ("*.css", "/a/b/site.css", True),
            ("*.css", "/a.css.php", False), ("/api/users/{id}", "/api/users/42", True),
            ("/api/users/{id}", "/api/users/", False), ("/api/users/{id}", "/api/users/4/x", False),
            ("/api/{v}/admin*", "/api/v2/admin/users", True),
        ]
        for pattern, path, expected in cases:
            self.assertEqual(path_matches(pattern, path), expected, (pattern, path))

    def test_first_match_and_method(self) -> None:
        """The first matching profile wins; the method must match unless it is *."""
        policy = SitePolicy(uuid4(), profiles=(
            EndpointProfile("POST", "/login", "deep"),
            EndpointProfile("*", "/login", "skip"),
        ))
        self.assertEqual(policy.profile_for("POST", "/login"), "deep")
        self.assertEqual(policy.profile_for("GET", "/login"), "skip")
        self.assertEqual(policy.profile_for("GET", "/"), "normal")

    def test_policy_validation(self) -> None:
        """Out-of-range settings are refused."""
        for kwargs in ({"mode": "log"}, {"paranoia": 5}, {"threshold": 0},
                       {"inspect_body_limit": 2 * 1024 * 1024}, {"body_overflow": "drop"}):
            with self.assertRaises(ValueError):
                SitePolicy(uuid4(), **kwargs)

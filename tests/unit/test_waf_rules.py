"""Tests for L{veil.waf.rules}: the rule format, its checks, and the shipped rules."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from veil.waf.policy import ATTACK_CLASSES
from veil.waf.rules import (
    RuleError,
    compare,
    load_text,
    load_texts,
    package_rules,
    parse_selector,
    selects,
)

ROOT = Path(__file__).resolve().parent.parent.parent

GOOD = '''
class = "sqli"
targets = ["args", "!args:token"]
transforms = ["urldecode"]
tags = ["CWE-89"]

[[rule]]
id = 1
severity = "critical"
paranoia = 2
description = "a test rule"
rx = 'union\\s+select'
tags = ["OWASP A03"]

[[rule]]
id = 2
severity = "notice"
description = "a phrase rule with its own targets"
targets = ["headers:User-Agent"]
transforms = []
pm = ["one", "two"]
[[rule.and]]
targets = ["method"]
equals = "GET"
'''


class LoaderTests(SynchronousTestCase):
    """A rule file loads into rules with the file's defaults."""

    def test_good(self) -> None:
        """Defaults are applied, severities scored, tags merged, header names lower-cased."""
        first, second = load_text(GOOD, "good.toml")
        self.assertEqual((first.id, first.attack_class, first.severity, first.paranoia),
                         (1, "sqli", 5, 2))
        self.assertEqual(first.transforms, ("urldecode",))
        self.assertEqual(first.tags, ("CWE-89", "OWASP A03"))
        self.assertEqual([str(t) for t in first.targets], ["args", "!args:token"])
        self.assertEqual((second.severity, second.operator, second.argument), (2, "pm", ("one", "two")))
        self.assertEqual([str(t) for t in second.targets], ["headers:user-agent"])
        self.assertEqual(second.conditions[0].argument, ("GET",))
        self.assertEqual(first.source, "good.toml")

    def test_errors(self) -> None:
        """Each mistake is refused with a message that names the file, the rule and the problem."""
        base = 'class = "xss"\n[[rule]]\nid = 7\nseverity = "error"\ndescription = "d"\ntargets = ["args"]\n'
        cases = {
            base + 'rx = "("': "does not compile",
            base + 'rx = "a"\npm = ["b"]': "exactly one operator",
            base.replace('"error"', '"fatal"') + 'rx = "a"': "severity",
            base + 'rx = "a"\nparanoia = 5': "paranoia",
            base + 'rx = "a"\ntransforms = ["rot13"]': "unknown transforms",
            base.replace('["args"]', '["query:q"]') + 'rx = "a"': "unknown target collection",
            base + 'rx = "a"\ncolour = 1': "unknown keys",
            base + 'num = "about 5"': "comparison",
            base + 'bytes = "0-300"': "byte range",
            base + 'anomaly = "weird"': "anomaly",
            base + 'rx = "a"\ntransforms = ["length"]': "length",
            base.replace('class = "xss"', 'class = "dos"') + 'rx = "a"': "class",
            base.replace('description = "d"', 'description = " "') + 'rx = "a"': "description",
            "this is = not [toml": "not valid TOML",
        }
        for text, message in cases.items():
            with self.assertRaises(RuleError, msg=text) as caught:
                load_text(text, "bad.toml")
            self.assertIn("bad.toml", str(caught.exception))
            self.assertIn(message, str(caught.exception), text)

    def test_duplicate_ids(self) -> None:
        """An id used twice, in one file or two, is refused."""
        text = 'class = "xss"\n[[rule]]\nid = 9\nseverity = "error"\ndescription = "d"\ntargets = ["args"]\nrx = "a"\n'
        with self.assertRaises(RuleError) as caught:
            load_texts([("a.toml", text), ("b.toml", text)])
        self.assertIn("also in a.toml", str(caught.exception))


class SelectorTests(SynchronousTestCase):
    """Targets select values by collection and name, with exclusions."""

    def test_selects(self) -> None:
        """A collection covers its members; a named member only itself; ! removes."""
        selectors = [parse_selector(s) for s in ("args", "headers:Referer", "!args:password")]
        self.assertTrue(selects(selectors, "args:q"))
        self.assertFalse(selects(selectors, "args:password"))
        self.assertTrue(selects(selectors, "headers:referer"))
        self.assertFalse(selects(selectors, "headers:user-agent"))
        self.assertFalse(selects(selectors, "args_names"))

    def test_compare(self) -> None:
        """Numeric comparisons; a value that is not a number never matches."""
        self.assertTrue(compare("> 4096", "5000"))
        self.assertTrue(compare("<= 2", "2"))
        self.assertTrue(compare("!= 0", "0.5"))
        self.assertFalse(compare("> 1", "many"))


class PackageRulesTests(SynchronousTestCase):
    """The shipped rules."""

    def test_load_and_cover(self) -> None:
        """They load, every attack class has rules, every rule has a description and tags."""
        rules = package_rules()
        self.assertGreater(len(rules), 150)
        self.assertEqual({r.attack_class for r in rules}, set(ATTACK_CLASSES))
        for rule in rules:
            self.assertTrue(rule.description and rule.tags, rule.id)
            self.assertTrue(any("CWE-" in tag for tag in rule.tags), rule.id)

    def test_no_corpus_strings(self) -> None:
        """No rule names a test corpus's tell-tale strings (the rules generalise, not memorise)."""
        corpus_markers = re.compile(r"coreruleset|crs test|owasp crs|gotestwaf|libinjection|"
                                    r"xss\.rocks|ha\.ckers|attackersite|waf-score", re.IGNORECASE)
        for path in (ROOT / "veil" / "waf" / "rules").glob("*.toml"):
            self.assertIsNone(corpus_markers.search(path.read_text()), path.name)

    def test_shipped_as_package_data(self) -> None:
        """setup.cfg ships the rule files with the package, so a wheel install has them."""
        config = configparser.ConfigParser()
        config.read(ROOT / "setup.cfg")
        self.assertIn("rules/*.toml", config["options.package_data"]["veil.waf"])
        self.assertIn("hyperscan", config["options"]["install_requires"])

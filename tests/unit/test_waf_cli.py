"""Tests for C{veil waf check} and C{veil waf rules} without a database, and the shared group."""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from veil import cli
from veil.commands.base import group


class Run:
    """What one command printed and returned."""

    def __init__(self, *argv: str) -> None:
        out, err = io.StringIO(), io.StringIO()
        self.status = cli.main(list(argv), environ={}, out=out, err=err)
        self.out = out.getvalue()
        self.err = err.getvalue()


class CheckTests(SynchronousTestCase):
    """C{veil waf check FILE} with the default policy."""

    def request_file(self, text: bytes) -> str:
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(lambda: [p.unlink() for p in folder.iterdir()] and None)
        path = folder / "request.http"
        path.write_bytes(text)
        return str(path)

    def test_blocked(self) -> None:
        """An attack: exit 1, each matching rule with its target, transformations, value and score."""
        path = self.request_file(b"GET /item?id=1%27%20OR%201=1-- HTTP/1.1\nHost: shop.test\n"
                                 b"Cookie: session=s3cret\n\n")
        run = Run("waf", "check", path)
        self.assertEqual(run.status, 1, run.err)
        self.assertIn("verdict: malicious", run.out)
        self.assertIn("threshold 5", run.out)
        self.assertIn("on args:id", run.out)
        self.assertIn("transformations: urldecode > jsdecode", run.out)
        self.assertIn("value: 1' OR 1=1", run.out)
        self.assertIn("session=***", run.out)
        self.assertNotIn("s3cret", run.out)

    def test_benign(self) -> None:
        """An ordinary request: exit 0, no rule matched."""
        path = self.request_file(b"GET /search?q=select+the+best+union+of+colors HTTP/1.1\r\n"
                                 b"Host: shop.test\r\n\r\n")
        run = Run("waf", "check", path)
        self.assertEqual((run.status, run.err), (0, ""))
        self.assertIn("verdict: benign", run.out)
        self.assertIn("no rule matched", run.out)

    def test_body_without_length(self) -> None:
        """A hand-written POST without Content-Length has its body read to the end."""
        path = self.request_file(b"POST /api HTTP/1.1\nHost: a.test\nContent-Type: application/json\n"
                                 b'\n{"bio": "<script>alert(1)</script>"}')
        run = Run("waf", "check", "--json", path)
        self.assertEqual(run.status, 1, run.err)
        verdict = json.loads(run.out)
        self.assertEqual(verdict["classification"], "malicious")
        self.assertIn("args:bio", {m["target"] for m in verdict["matches"]})

    def test_policy_options(self) -> None:
        """--paranoia, --threshold and --mode change the verdict: monitor does not block."""
        path = self.request_file(b"GET /?q=%3Cscript%3E HTTP/1.1\nHost: a.test\n\n")
        run = Run("waf", "check", "--json", "--mode", "monitor", "--threshold", "50", path)
        verdict = json.loads(run.out)
        self.assertEqual((verdict["classification"], verdict["blocked"], verdict["threshold"]),
                         ("suspicious", False, 50))
        self.assertEqual(run.status, 0)

    def test_stdin(self) -> None:
        """- reads the request from standard input."""
        stdin = argparse.Namespace(buffer=io.BytesIO(b"GET /.git/config HTTP/1.1\nHost: a\n\n"))
        self.patch(sys, "stdin", stdin)
        run = Run("waf", "check", "-")
        self.assertEqual(run.status, 1)
        self.assertIn("scanner", run.out)

    def test_bad_input(self) -> None:
        """A missing file, an empty file and a request the proxy refuses: a clear error."""
        run = Run("waf", "check", "/nonexistent/request.http")
        self.assertEqual(run.status, 1)
        self.assertIn("cannot read", run.err)
        run = Run("waf", "check", self.request_file(b"  \n"))
        self.assertIn("is empty", run.err)
        run = Run("waf", "check", self.request_file(b"NOT A REQUEST\n\n"))
        self.assertEqual(run.status, 1)
        self.assertIn("never reaches the WAF", run.err)
        self.assertEqual(run.out, "")


class RulesTests(SynchronousTestCase):
    """C{veil waf rules}."""

    def test_table(self) -> None:
        """Every rule with its class, severity, level, targets and operator."""
        run = Run("waf", "rules", "--class", "shellshock")
        self.assertEqual(run.status, 0, run.err)
        self.assertIn("16010  shellshock critical PL1", run.out)
        self.assertIn("targets: headers", run.out)
        self.assertTrue(run.out.rstrip().endswith("rules"))

    def test_json_and_filters(self) -> None:
        """--json, --class and --paranoia select and describe rules."""
        every = json.loads(Run("waf", "rules", "--json").out)
        pl1 = json.loads(Run("waf", "rules", "--json", "--paranoia", "1").out)
        xss = json.loads(Run("waf", "rules", "--json", "--class", "xss").out)
        self.assertLess(len(pl1), len(every))
        self.assertTrue(all(r["paranoia"] == 1 for r in pl1))
        self.assertEqual({r["class"] for r in xss}, {"xss"})
        first = every[0]
        for key in ("id", "severity", "targets", "transforms", "operator", "description", "tags"):
            self.assertIn(key, first)

    def test_bad_class(self) -> None:
        """An unknown class is a command-line error."""
        run = Run("waf", "rules", "--class", "dos")
        self.assertEqual(run.status, 2)
        self.assertIn("invalid choice", run.err)


class GroupTests(SynchronousTestCase):
    """L{group} lets several modules add subcommands to one group."""

    def test_shared(self) -> None:
        """The second call returns the first call's subcommands; both sets parse."""
        parser = argparse.ArgumentParser()
        commands = parser.add_subparsers(dest="command")
        first = group(commands, "waf", "first")
        first.add_parser("exclude")
        second = group(commands, "waf", "second")
        second.add_parser("check")
        self.assertIs(first, second)
        self.assertEqual(parser.parse_args(["waf", "exclude"]).action, "exclude")
        self.assertEqual(parser.parse_args(["waf", "check"]).action, "check")

    def test_not_a_group(self) -> None:
        """A plain command of that name is not mistaken for a group."""
        parser = argparse.ArgumentParser()
        commands = parser.add_subparsers(dest="command")
        commands.add_parser("migrate")
        with self.assertRaises(ValueError):
            group(commands, "migrate", "x")

"""Tests for C{veil waf check --site} against a real PostgreSQL."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import psycopg
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.support.postgres import fresh_database
from veil import cli


class CheckSiteTests(TestCase):
    """The site's mode and paranoia level come from the store."""

    timeout = 90

    def setUp(self) -> None:
        self.conninfo = fresh_database(self)
        self.environ = {"VEIL_DATABASE_URL": self.conninfo}
        folder = Path(tempfile.mkdtemp())
        self.request = folder / "request.http"
        self.addCleanup(lambda: self.request.unlink(missing_ok=True))

    async def veil(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = await cli.run(reactor, list(argv), environ=self.environ, out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def execute(self, statement: str, params: tuple = ()) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(statement, params)

    async def test_site_policy(self) -> None:
        """Mode and paranoia of the site apply; a level-3 rule counts only at level 3."""
        status, _, err = await self.veil("sites", "add", "shop.example.com", "--origin",
                                         "http://10.0.0.5", "--verified")
        self.assertEqual(status, 0, err)
        # A browser user agent without an Accept header: a paranoia-3 rule.
        self.request.write_bytes(b"GET /?q=%3Cscript%3Ealert(1)%3C/script%3E HTTP/1.1\n"
                                 b"Host: shop.example.com\nUser-Agent: Mozilla/5.0\n\n")
        status, out, err = await self.veil("waf", "check", "--site", "Shop.Example.com",
                                           "--json", str(self.request))
        self.assertEqual(status, 1, err)
        verdict = json.loads(out)
        self.assertEqual((verdict["mode"], verdict["paranoia"], verdict["blocked"]),
                         ("block", 1, True))
        self.assertNotIn(1042, verdict["rule_ids"])

        self.execute("UPDATE sites SET mode = 'monitor', paranoia_level = 3"
                     " WHERE domain = 'shop.example.com'")
        status, out, err = await self.veil("waf", "check", "--site", "shop.example.com",
                                           str(self.request))
        self.assertEqual(status, 1, err)
        self.assertIn("policy: site shop.example.com: mode monitor, paranoia 3", out)
        self.assertIn("would block (monitor mode)", out)
        self.assertIn("rule 1042", out)

    async def test_skip_profile_as_sent(self) -> None:
        """
        A skip profile lets a request through uninspected only when the path
        as sent matches it too, as in the proxy: C{/api/../static/x} is
        judged, C{/static/x} is not.
        """
        for argv in (("sites", "add", "shop.example.com", "--origin", "http://10.0.0.5",
                      "--verified"),
                     ("waf", "profile", "shop.example.com", "/static/*", "--mode", "skip")):
            status, _, err = await self.veil(*argv)
            self.assertEqual(status, 0, err)
        attack = b"?q=%3Cscript%3Ealert(1)%3C/script%3E HTTP/1.1\nHost: shop.example.com\n\n"
        outcomes = []
        for path in (b"/static/x", b"/api/../static/x", b"/api/..;/static/x"):
            self.request.write_bytes(b"GET " + path + attack)
            status, out, err = await self.veil("waf", "check", "--site", "shop.example.com",
                                               "--json", str(self.request))
            outcomes.append((status, json.loads(out)["blocked"]))
        self.assertEqual(outcomes, [(0, False), (1, True), (1, True)])

    async def test_unknown_site(self) -> None:
        """A site that does not exist is an error, not a verdict."""
        self.request.write_bytes(b"GET / HTTP/1.1\nHost: a.test\n\n")
        status, out, err = await self.veil("waf", "check", "--site", "nosuch.example.com",
                                           str(self.request))
        self.assertEqual((status, out), (1, ""))
        self.assertIn("nosuch.example.com", err)

    async def test_bad_request_file_before_connecting(self) -> None:
        """An unreadable request file is refused before anything connects."""
        self.environ = {"VEIL_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
        status, _, err = await self.veil("waf", "check", "--site", "a.example.com",
                                         "/nonexistent/request.http")
        self.assertEqual(status, 1)
        self.assertIn("cannot read", err)

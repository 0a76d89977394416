"""Tests for the C{veil} operator commands (L{veil.cli}) against a real PostgreSQL."""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

import attrs
import psycopg
from psycopg import sql
from twisted.internet import reactor, threads
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

import veil
from tests.support.postgres import cluster, fresh_database
from veil import cli
from veil.store.admin import OPERATOR_EMAIL
from veil.store.embedded import PORT, socket_dir_for


@attrs.frozen
class Result:
    """What a command did: its exit status and what it printed."""

    status: int
    out: str
    err: str


class CliCase(TestCase):
    """Base: a fresh migrated database and helpers to run C{veil} against it."""

    timeout = 60

    def setUp(self) -> None:
        self.conninfo = fresh_database(self)
        self.environ = {"VEIL_DATABASE_URL": self.conninfo}

    async def veil(self, *argv: str) -> Result:
        """Run a command on the test's reactor (L{cli.run})."""
        out, err = io.StringIO(), io.StringIO()
        status = await cli.run(reactor, list(argv), environ=self.environ, out=out, err=err)
        return Result(status, out.getvalue(), err.getvalue())

    def main(self, *argv: str, environ: dict[str, str] | None = None) -> Result:
        """
        Run the console script's L{cli.main} in this process; only for
        commands that stop before the reactor would start.
        """
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(list(argv), environ=self.environ if environ is None else environ,
                          out=out, err=err)
        return Result(status, out.getvalue(), err.getvalue())

    async def ok(self, *argv: str) -> Result:
        """Run a command that must succeed."""
        result = await self.veil(*argv)
        self.assertEqual(result.status, 0, result.err)
        self.assertEqual(result.err, "")
        return result

    def unreachable(self) -> dict[str, str]:
        """An environment whose database cannot be reached at all."""
        return {"VEIL_DATABASE_URL": f"host={self.mktemp()} dbname=nothing"}

    def rows(self, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def operator_id(self) -> uuid.UUID:
        [(user_id,)] = self.rows("SELECT id FROM users WHERE email = %s", (OPERATOR_EMAIL,))
        return user_id


class SitesAddTests(CliCase):
    """C{veil sites add} checks its input first, then adds a pending or active site."""

    async def test_pending(self) -> None:
        """Without --verified the site is pending and the TXT ownership record is printed."""
        result = await self.ok("sites", "add", "shop.example.com", "--origin",
                               "http://10.0.0.5:8080")
        [(site_id, status, verified_at, token, upstream, mode, owner)] = self.rows(
            "SELECT id, status, dns_verified_at, dns_token, upstream, mode, owner_id FROM sites")
        self.assertEqual((status, verified_at, upstream, mode),
                         ("pending", None, "http://10.0.0.5:8080", "block"))
        self.assertIn(str(site_id), result.out)
        self.assertIn("status pending", result.out)
        self.assertIn(f"_veil.shop.example.com TXT {token}", result.out)
        self.assertIn("DNS worker", result.out)
        self.assertEqual(owner, self.operator_id())

    async def test_verified(self) -> None:
        """With --verified the site is active, its DNS marked verified, and the output says so."""
        result = await self.ok("sites", "add", "shop.example.com", "--origin",
                               "https://origin.example.net", "--verified")
        [(status, verified)] = self.rows(
            "SELECT status, dns_verified_at IS NOT NULL FROM sites")
        self.assertEqual((status, verified), ("active", True))
        self.assertIn("status active", result.out)
        self.assertIn("first HTTPS request", result.out)
        self.assertNotIn("TXT", result.out)

    async def test_normalised(self) -> None:
        """The domain and origin are normalised; --mode and --allow-plain-http are stored."""
        await self.ok("sites", "add", "Shop.Example.COM.", "--origin",
                      "HTTPS://Origin.Example.net:8443/", "--mode", "monitor",
                      "--allow-plain-http")
        self.assertEqual(
            self.rows("SELECT domain, upstream, mode, allow_plain_http FROM sites"),
            [("shop.example.com", "https://origin.example.net:8443", "monitor", True)])

    async def test_operator_account(self) -> None:
        """The operator account is created once, as an administrator without a password."""
        await self.ok("sites", "add", "a.example.com", "--origin", "http://10.0.0.1")
        await self.ok("sites", "add", "b.example.com", "--origin", "http://10.0.0.2")
        self.assertEqual(
            self.rows("SELECT email, is_admin, password_hash, github_id FROM users"),
            [(OPERATOR_EMAIL, True, None, None)])
        self.assertEqual(self.rows("SELECT count(DISTINCT owner_id) FROM sites"), [(1,)])

    async def test_duplicate(self) -> None:
        """A domain that already exists (in any case) is refused with exit status 1."""
        await self.ok("sites", "add", "shop.example.com", "--origin", "http://10.0.0.5")
        result = await self.veil("sites", "add", "SHOP.example.com", "--origin",
                                 "http://10.0.0.6")
        self.assertEqual(result.status, 1)
        self.assertIn("site shop.example.com already exists", result.err)
        self.assertEqual(self.rows("SELECT upstream FROM sites"), [("http://10.0.0.5",)])
        self.assertEqual(self.rows("SELECT count(*) FROM audit_log"), [(1,)])

    def test_bad_domain(self) -> None:
        """A bad domain is refused with a clear message before any connection is tried."""
        cases = {
            "localhost": "needs at least one dot",
            "10.0.0.1": "is an IP address",
            "*.example.com": "wildcard",
            "shop..example.com": "not a valid domain name",
            "shop-.example.com": "not a valid domain name",
            ("a" * 64) + ".example.com": "a label has 64 characters, more than 63",
            "sh_op.example.com": "characters other than letters, digits and hyphens",
            "a" * 300: "300 characters, more than 253",
            ("a" * 60 + ".") * 5 + "com": "308 characters, more than 253",
            ("a" * 60 + ".") * 4 + "a" * 6 + ".com": "254 characters, more than 253",
            "a" * 5000: "5000 characters, more than 253",
        }
        for domain, message in cases.items():
            result = self.main("sites", "add", domain, "--origin", "http://10.0.0.5",
                               environ=self.unreachable())
            self.assertEqual(result.status, 1, domain)
            self.assertIn(message, result.err)
            self.assertNotIn("connect", result.err)
            self.assertNotIn("a" * 61, result.err)  # a long input is cut in the message
        longest = ("a" * 62 + ".") * 3 + "a" * 60 + ".com"
        self.assertEqual(len(longest), 253)
        result = self.main("sites", "add", longest, "--origin", "http://10.0.0.5",
                           environ=self.unreachable())
        self.assertIn("cannot connect", result.err)  # valid: refused only for the database

    def test_bad_origin(self) -> None:
        """A bad origin URL is refused with a clear message before any connection is tried."""
        cases = {
            "10.0.0.5:8080": "must start with http:// or https://",
            "ftp://10.0.0.5": "must start with http:// or https://",
            "http://10.0.0.5/app": "without a path",
            "http://origin.example.net?x=1": "without a path",
            "http://user:pw@origin.example.net": "user name or password",
            "http://origin.example.net:70000": "port",
            "http://2001:db8::1": "brackets",
            "http://": "needs a host",
        }
        for origin, message in cases.items():
            result = self.main("sites", "add", "shop.example.com", "--origin", origin,
                               environ=self.unreachable())
            self.assertEqual(result.status, 1, origin)
            self.assertIn(message, result.err)
            self.assertNotIn("connect", result.err)

    def test_usage_errors(self) -> None:
        """A malformed command line exits with status 2 and a usage message."""
        for argv in (["sites", "add", "shop.example.com"],
                     ["sites", "add", "shop.example.com", "--origin", "http://x", "--mode", "x"],
                     ["sites"], ["decisions", "add", "10.0.0.1"], ["maintenance", "maybe"]):
            result = self.main(*argv)
            self.assertEqual(result.status, 2, argv)
            self.assertIn("usage: veil", result.err)


class SitesListRemoveTests(CliCase):
    """C{veil sites list} shows every site; C{veil sites remove} deletes one."""

    async def test_list_empty(self) -> None:
        """With no sites the list says so."""
        self.assertEqual((await self.ok("sites", "list")).out, "No sites.\n")

    async def test_list_table(self) -> None:
        """The table has a heading and one row per site, by domain."""
        await self.ok("sites", "add", "b.example.com", "--origin", "http://10.0.0.2",
                      "--verified")
        await self.ok("sites", "add", "a.example.com", "--origin", "https://10.0.0.1:8443",
                      "--mode", "monitor")
        await self.ok("maintenance", "on", "--site", "b.example.com")
        lines = (await self.ok("sites", "list")).out.splitlines()
        self.assertEqual(lines[0].split(),
                         ["DOMAIN", "STATUS", "UPSTREAM", "MODE", "MAINTENANCE", "CREATED"])
        self.assertEqual(lines[1].split()[:5],
                         ["a.example.com", "pending", "https://10.0.0.1:8443", "monitor", "off"])
        self.assertEqual(lines[2].split()[:5],
                         ["b.example.com", "active", "http://10.0.0.2", "block", "on"])
        self.assertTrue(lines[1].endswith("UTC"))
        self.assertEqual(len(lines), 3)

    async def test_list_json(self) -> None:
        """--json prints every site as a JSON object."""
        await self.ok("sites", "add", "shop.example.com", "--origin", "http://10.0.0.5")
        [site] = json.loads((await self.ok("sites", "list", "--json")).out)
        [(site_id,)] = self.rows("SELECT id FROM sites")
        self.assertEqual(site["id"], str(site_id))
        self.assertEqual((site["domain"], site["status"], site["upstream"], site["mode"],
                          site["maintenance"]),
                         ("shop.example.com", "pending", "http://10.0.0.5", "block", False))

    async def test_remove(self) -> None:
        """Removing a site deletes it with its members and decisions."""
        await self.ok("sites", "add", "shop.example.com", "--origin", "http://10.0.0.5")
        await self.ok("sites", "add", "keep.example.com", "--origin", "http://10.0.0.6")
        await self.ok("decisions", "add", "203.0.113.7", "--for", "1h", "--site",
                      "shop.example.com")
        result = await self.ok("sites", "remove", "Shop.Example.com")
        self.assertIn("Removed shop.example.com", result.out)
        self.assertEqual(self.rows("SELECT domain FROM sites"), [("keep.example.com",)])
        self.assertEqual(self.rows("SELECT count(*) FROM site_members"), [(1,)])
        self.assertEqual(self.rows("SELECT count(*) FROM decisions"), [(0,)])

    async def test_remove_unknown(self) -> None:
        """Removing a site that does not exist fails with exit status 1."""
        result = await self.veil("sites", "remove", "nothing.example.com")
        self.assertEqual(result.status, 1)
        self.assertIn("no site nothing.example.com", result.err)


class DecisionsTests(CliCase):
    """C{veil decisions} adds, lists and removes manual IP decisions."""

    async def add(self, *argv: str) -> uuid.UUID:
        """Add a decision that must succeed; its id."""
        result = await self.ok("decisions", "add", *argv)
        [(decision_id,)] = self.rows(
            "SELECT id FROM decisions ORDER BY created_at DESC, id LIMIT 1")
        self.assertIn(str(decision_id), result.out)
        return decision_id

    async def test_durations(self) -> None:
        """30s, 15m, 1h, 7d and 1h30m expire that long after creation; forever never does."""
        expected = {"30s": timedelta(seconds=30), "15m": timedelta(minutes=15),
                    "1h": timedelta(hours=1), "7d": timedelta(days=7),
                    "1h30m": timedelta(minutes=90), "90m": timedelta(minutes=90),
                    "1w2d3h4m5s": timedelta(days=9, seconds=3 * 3600 + 4 * 60 + 5),
                    "forever": None}
        for text, duration in expected.items():
            decision_id = await self.add("198.51.100.1", "--for", text)
            [(lifetime,)] = self.rows(
                "SELECT expires_at - created_at FROM decisions WHERE id = %s", (decision_id,))
            self.assertEqual(lifetime, duration, text)

    async def test_targets_normalised(self) -> None:
        """A bare address becomes a /32 or /128; a network keeps its length, lower-cased."""
        for given, stored in (("203.0.113.7", "203.0.113.7/32"),
                              ("2001:DB8::1", "2001:db8::1/128"),
                              ("10.0.0.0/8", "10.0.0.0/8"),
                              ("2001:DB8::/32", "2001:db8::/32")):
            decision_id = await self.add(given, "--for", "1h")
            self.assertEqual(
                self.rows("SELECT text(target) FROM decisions WHERE id = %s", (decision_id,)),
                [(stored,)])

    async def test_row(self) -> None:
        """The decision is manual, made by the operator, with its type, site and reason."""
        await self.ok("sites", "add", "shop.example.com", "--origin", "http://10.0.0.5")
        await self.add("10.0.0.0/8", "--type", "throttle", "--for", "15m", "--site",
                       "shop.example.com", "--reason", "scraping")
        [(type_, source, reason, created_by, domain)] = self.rows(
            "SELECT d.type, d.source, d.reason, d.created_by, s.domain"
            " FROM decisions d JOIN sites s ON s.id = d.site_id")
        self.assertEqual((type_, source, reason, created_by, domain),
                         ("throttle", "manual", "scraping", self.operator_id(),
                          "shop.example.com"))

    def test_host_bits(self) -> None:
        """A network with host bits set is refused with the network it probably meant."""
        result = self.main("decisions", "add", "10.1.2.3/8", "--for", "1h")
        self.assertEqual(result.status, 1)
        self.assertIn("10.1.2.3/8 has host bits set", result.err)
        self.assertIn("10.0.0.0/8", result.err)
        self.assertIn("use 10.1.2.3 for the single address", result.err)
        self.assertEqual(self.rows("SELECT count(*) FROM decisions"), [(0,)])

    def test_bad_input(self) -> None:
        """Bad targets and durations are refused with exit status 1 and a message."""
        for argv, message in (
            (["not-an-ip", "--for", "1h"], "is not an IP address or network"),
            (["10.0.0.0/33", "--for", "1h"], "is not an IP address or network"),
            (["10.0.0.1", "--for", "1y"], "is not a duration"),
            (["10.0.0.1", "--for", "0s"], "longer than zero"),
            (["10.0.0.1", "--for", "5000d"], "longer than ten years"),
            (["10.0.0.1", "--for", "1h1h"], "is not a duration"),
            (["10.0.0.1", "--for", "30m1h"], "is not a duration"),
            (["10.0.0.1", "--for", "1h30m1h"], "is not a duration"),
            (["10.0.0.1", "--for", "1s1w"], "is not a duration"),
        ):
            result = self.main("decisions", "add", *argv, environ=self.unreachable())
            self.assertEqual(result.status, 1, argv)
            self.assertIn(message, result.err)
            self.assertNotIn("connect", result.err)

    async def test_bad_reason(self) -> None:
        """
        A reason longer than 500 characters, or holding a control or
        invisible character (an escape sequence, a line break, a
        bidirectional override), is refused and nothing is written.
        """
        for reason, message in (("x" * 501, "at most 500"), ("ok\x1b[2Jgone", "U+001B"),
                                ("two\nlines", "U+000A"), ("bidi \u202e txt", "U+202E")):
            result = await self.veil("decisions", "add", "10.0.0.1", "--for", "1h",
                                     "--reason", reason)
            self.assertEqual(result.status, 1, reason)
            self.assertIn(message, result.err)
            self.assertNotIn("\x1b", result.err)
        self.assertEqual(self.rows("SELECT count(*) FROM decisions"), [(0,)])

    async def test_longest_reason(self) -> None:
        """A reason of 500 characters is kept whole."""
        decision_id = await self.add("10.0.0.1", "--for", "1h", "--reason", "r" * 500)
        self.assertEqual(self.rows("SELECT reason FROM decisions WHERE id = %s",
                                   (decision_id,)), [("r" * 500,)])

    async def test_list_escapes_control_characters(self) -> None:
        """
        A row that holds control characters (written before reasons were
        checked, or by another writer) is listed with them escaped: no
        escape sequence, bell, line break or bidirectional override
        reaches the terminal; --json keeps the exact text, JSON-escaped.
        """
        evil = "\x1b]0;owned\x07\x1b[2J\x9b1m\u202eevil\nline\x00"
        self.rows("INSERT INTO decisions (target, type, reason, source)"
                  " VALUES ('203.0.113.9', 'ban', %s, 'manual')", (evil.replace("\x00", ""),))
        out = (await self.ok("decisions", "list")).out
        for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
            self.assertNotIn(raw, out)
        self.assertEqual(len(out.splitlines()), 2)
        self.assertIn("\\x1b]0;owned\\x07\\x1b[2J\\x9b1m\\u202eevil\\x0aline", out)
        listed = (await self.ok("decisions", "list", "--json")).out
        self.assertNotIn("\x1b", listed)
        self.assertEqual(json.loads(listed)[0]["reason"], evil.replace("\x00", ""))

    async def test_unknown_site(self) -> None:
        """A decision for a site that does not exist is refused."""
        result = await self.veil("decisions", "add", "10.0.0.1", "--for", "1h", "--site",
                                 "nothing.example.com")
        self.assertEqual(result.status, 1)
        self.assertIn("no site nothing.example.com", result.err)
        self.assertEqual(self.rows("SELECT count(*) FROM decisions"), [(0,)])

    async def test_list(self) -> None:
        """The list shows current decisions; expired ones only with --all."""
        kept = await self.add("203.0.113.7", "--for", "forever", "--reason", "abuse")
        expired = await self.add("198.51.100.0/24", "--for", "1h")
        self.rows("UPDATE decisions SET created_at = now() - interval '2 hours',"
                  " expires_at = now() - interval '1 hour' WHERE id = %s", (expired,))
        lines = (await self.ok("decisions", "list")).out.splitlines()
        self.assertEqual(lines[0].split(),
                         ["ID", "TARGET", "TYPE", "SITE", "SOURCE", "EXPIRES", "REASON"])
        self.assertEqual(lines[1].split(), [str(kept), "203.0.113.7", "ban", "*", "manual",
                                            "never", "abuse"])
        self.assertEqual(len(lines), 2)
        listed = json.loads((await self.ok("decisions", "list", "--all", "--json")).out)
        self.assertEqual({d["id"] for d in listed}, {str(kept), str(expired)})
        self.assertIn("198.51.100.0/24", {d["target"] for d in listed})

    async def test_remove(self) -> None:
        """A decision is removed by id; an unknown or malformed id fails with status 1."""
        decision_id = await self.add("203.0.113.7", "--for", "1h")
        result = await self.ok("decisions", "remove", str(decision_id))
        self.assertIn("Removed ban for 203.0.113.7", result.out)
        self.assertEqual(self.rows("SELECT count(*) FROM decisions"), [(0,)])
        again = await self.veil("decisions", "remove", str(decision_id))
        self.assertEqual(again.status, 1)
        self.assertIn(f"no decision {decision_id}", again.err)
        malformed = self.main("decisions", "remove", "42")
        self.assertEqual(malformed.status, 1)
        self.assertIn("not a decision id", malformed.err)


class MaintenanceTests(CliCase):
    """C{veil maintenance} switches maintenance cluster-wide (settings) or per site."""

    def setting(self) -> list[tuple]:
        return self.rows("SELECT value, updated_by FROM settings WHERE key = 'maintenance'")

    async def test_global(self) -> None:
        """on/off write {"enabled": …} to settings; status reports it; a repeat changes nothing."""
        self.assertIn("Cluster-wide maintenance: off",
                      (await self.ok("maintenance", "status")).out)
        self.assertIn("now on", (await self.ok("maintenance", "on")).out)
        self.assertEqual(self.setting(), [({"enabled": True}, self.operator_id())])
        self.assertIn("Cluster-wide maintenance: on",
                      (await self.ok("maintenance", "status")).out)
        self.assertIn("already on", (await self.ok("maintenance", "on")).out)
        self.assertIn("now off", (await self.ok("maintenance", "off")).out)
        self.assertEqual(self.setting(), [({"enabled": False}, self.operator_id())])
        self.assertEqual(
            self.rows("SELECT count(*) FROM audit_log WHERE action = 'settings.update'"),
            [(2,)])

    async def test_site(self) -> None:
        """--site switches only that site's maintenance column."""
        await self.ok("sites", "add", "shop.example.com", "--origin", "http://10.0.0.5")
        await self.ok("sites", "add", "other.example.com", "--origin", "http://10.0.0.6")
        self.assertIn("now on for shop.example.com",
                      (await self.ok("maintenance", "on", "--site", "shop.example.com")).out)
        self.assertEqual(self.rows("SELECT domain FROM sites WHERE maintenance"),
                         [("shop.example.com",)])
        self.assertEqual(self.setting(), [])
        status = (await self.ok("maintenance", "status")).out
        self.assertIn("Sites in maintenance: shop.example.com", status)
        self.assertEqual(
            (await self.ok("maintenance", "status", "--site", "shop.example.com")).out,
            "shop.example.com: maintenance on (cluster-wide: off)\n")
        await self.ok("maintenance", "off", "--site", "shop.example.com")
        self.assertEqual(self.rows("SELECT count(*) FROM sites WHERE maintenance"), [(0,)])

    async def test_unknown_site(self) -> None:
        """Maintenance for a site that does not exist fails with status 1."""
        result = await self.veil("maintenance", "on", "--site", "nothing.example.com")
        self.assertEqual(result.status, 1)
        self.assertIn("no site nothing.example.com", result.err)


class AuditTests(CliCase):
    """Every change writes an audit_log row, as the operator, without addresses."""

    async def test_audit_rows(self) -> None:
        """Each command's change is audited with its action and target."""
        await self.ok("sites", "add", "shop.example.com", "--origin", "http://10.0.0.5")
        [(site_id,)] = self.rows("SELECT id FROM sites")
        await self.ok("decisions", "add", "203.0.113.7", "--for", "1h")
        [(decision_id,)] = self.rows("SELECT id FROM decisions")
        await self.ok("decisions", "remove", str(decision_id))
        await self.ok("maintenance", "on")
        await self.ok("maintenance", "on", "--site", "shop.example.com")
        await self.ok("sites", "list")
        await self.ok("sites", "remove", "shop.example.com")
        rows = self.rows("SELECT actor_user_id, action, target_type, target_id, detail"
                         " FROM audit_log ORDER BY id")
        self.assertEqual({actor for actor, *_ in rows}, {self.operator_id()})
        self.assertEqual([tuple(row[1:4]) for row in rows], [
            ("site.create", "site", str(site_id)),
            ("decision.create", "decision", str(decision_id)),
            ("decision.delete", "decision", str(decision_id)),
            ("settings.update", "setting", "maintenance"),
            ("site.update", "site", str(site_id)),
            ("site.delete", "site", str(site_id)),
        ])
        self.assertEqual(rows[0][4]["domain"], "shop.example.com")
        self.assertNotIn("203.0.113.7", json.dumps([row[4] for row in rows]))


class NotifyTests(CliCase):
    """Changes made by the command reach listeners through the tables' NOTIFY triggers."""

    def listen(self, channel: str) -> psycopg.Connection:
        conn = psycopg.connect(self.conninfo, autocommit=True)
        self.addCleanup(conn.close)
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        return conn

    async def received(self, conn: psycopg.Connection) -> list[tuple[str, str]]:
        """The notifications already delivered to C{conn} (waiting on a thread, bounded)."""
        def collect() -> list[tuple[str, str]]:
            return [(n.channel, n.payload) for n in conn.notifies(timeout=2.0)]

        return await threads.deferToThread(collect)

    async def test_sites_add(self) -> None:
        """sites add notifies veil_sites with the new site's id."""
        conn = self.listen("veil_sites")
        await self.ok("sites", "add", "shop.example.com", "--origin", "http://10.0.0.5")
        [(site_id,)] = self.rows("SELECT id FROM sites")
        self.assertIn(("veil_sites", str(site_id)), await self.received(conn))

    async def test_maintenance(self) -> None:
        """maintenance on notifies veil_settings with the key."""
        conn = self.listen("veil_settings")
        await self.ok("maintenance", "on")
        self.assertEqual(await self.received(conn), [("veil_settings", "maintenance")])


class ConnectionTests(CliCase):
    """How the command finds its database, and what it says when it cannot use it."""

    def data_dir(self) -> Path:
        """A short data directory under /tmp (so its socket path stays short)."""
        path = Path(tempfile.mkdtemp(prefix="veil-cli-"))
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def test_embedded_not_running(self) -> None:
        """No database.url and no cluster running in data_dir: Veil is not running."""
        result = self.main("sites", "list", environ={"VEIL_DATA_DIR": str(self.data_dir())})
        self.assertEqual(result.status, 1)
        self.assertEqual(result.err, f"veil: {cli.NOT_RUNNING}\n")

    def test_embedded_stale_socket(self) -> None:
        """A socket left behind by a cluster that is gone also means Veil is not running."""
        data_dir = self.data_dir()
        socket_dir = socket_dir_for(data_dir)
        socket_dir.mkdir(mode=0o700, exist_ok=True)
        self.addCleanup(shutil.rmtree, socket_dir, True)
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(socket_dir / f".s.PGSQL.{PORT}"))
        stale.close()
        result = self.main("sites", "list", environ={"VEIL_DATA_DIR": str(data_dir)})
        self.assertEqual(result.status, 1)
        self.assertIn(cli.NOT_RUNNING, result.err)

    def hold_cluster_lock(self, data_dir: Path) -> None:
        """Hold the embedded cluster's lock as a running Veil does (this process, its pid)."""
        fd = os.open(data_dir / "postgres.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())

    def test_embedded_running_but_down(self) -> None:
        """
        Veil runs on the data directory (it holds the cluster's lock) but
        its cluster does not answer, socket gone or refusing: the command
        says so, with Veil's pid, and does not tell the operator to start
        Veil.
        """
        data_dir = self.data_dir()
        self.hold_cluster_lock(data_dir)
        result = self.main("sites", "list", environ={"VEIL_DATA_DIR": str(data_dir)})
        self.assertEqual(result.status, 1)
        self.assertIn(f"Veil is running (pid {os.getpid()}) but its embedded PostgreSQL"
                      " does not answer", result.err)
        self.assertNotIn("start Veil", result.err)
        socket_dir = socket_dir_for(data_dir)
        socket_dir.mkdir(mode=0o700, exist_ok=True)
        self.addCleanup(shutil.rmtree, socket_dir, True)
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(socket_dir / f".s.PGSQL.{PORT}"))
        stale.close()
        result = self.main("sites", "list", environ={"VEIL_DATA_DIR": str(data_dir)})
        self.assertIn("Veil is running", result.err)
        self.assertIn("refuses connections", result.err)

    def test_unreachable_url(self) -> None:
        """A database.url nobody answers at is reported, with exit status 1."""
        result = self.main("sites", "list", environ={
            "VEIL_DATABASE_URL": f"host={self.data_dir()} dbname=veil",
            "VEIL_DATABASE_CONNECT_TIMEOUT": "2"})
        self.assertEqual(result.status, 1)
        self.assertIn("cannot connect to the database (database.url)", result.err)

    def test_not_migrated(self) -> None:
        """A database without schema_migrations is reported as not migrated."""
        made = cluster()
        name = f"empty_{uuid.uuid4().hex[:12]}"
        with made.admin_connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

        def drop() -> None:
            with made.admin_connect() as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))

        self.addCleanup(drop)
        result = self.main("sites", "list",
                           environ={"VEIL_DATABASE_URL": made.conninfo(name)})
        self.assertEqual(result.status, 1)
        self.assertIn("the database is not migrated", result.err)
        self.assertIn("veil migrate", result.err)

    async def script(self, *argv: str) -> Result:
        """Run the console script in a child process, as an operator would."""
        root = str(Path(veil.__file__).resolve().parent.parent)
        env = {"VEIL_DATABASE_URL": self.conninfo, "PYTHONPATH": root,
               "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        code = "import sys; from veil.cli import main; sys.exit(main())"
        out, err, status = await getProcessOutputAndValue(
            sys.executable, ("-c", code, *argv), env=env, path=root)
        return Result(status, out.decode(), err.decode())

    async def test_console_script(self) -> None:
        """main() runs the commands under react and exits 0, or 1 on a refused change."""
        added = await self.script("sites", "add", "shop.example.com", "--origin",
                                  "http://10.0.0.5", "--verified")
        self.assertEqual(added.status, 0, added.err)
        self.assertIn("status active", added.out)
        listed = await self.script("sites", "list")
        self.assertEqual(listed.status, 0, listed.err)
        self.assertIn("shop.example.com", listed.out)
        again = await self.script("sites", "add", "shop.example.com", "--origin",
                                  "http://10.0.0.5")
        self.assertEqual(again.status, 1)
        self.assertEqual(again.err, "veil: site shop.example.com already exists\n")

    async def test_reader_gone(self) -> None:
        """Output into a pipe nobody reads (veil ... | head) ends quietly, no traceback."""
        root = str(Path(veil.__file__).resolve().parent.parent)
        env = {"VEIL_DATABASE_URL": self.conninfo, "PYTHONPATH": root,
               "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        code = "import sys; from veil.cli import main; sys.exit(main())"
        command = (f"{sys.executable} -c {code!r} sites add pipe.example.com"
                   " --origin http://10.0.0.5 --verified | true")
        out, err, status = await getProcessOutputAndValue(
            "/bin/sh", ("-c", f"{command}; echo done"),
            env=env, path=root)
        self.assertNotIn(b"Traceback", err)
        self.assertNotIn(b"BrokenPipeError", err)
        self.assertEqual(out, b"done\n")

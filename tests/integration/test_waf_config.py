"""
The WAF's configuration plane against a real PostgreSQL: schema 004, the
policy table, and the C{veil sites set} / C{veil waf} commands.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from datetime import datetime

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.integration.test_cli import CliCase
from tests.integration.test_edge import start_veil
from tests.integration.test_migrate import empty_database
from tests.support.postgres import fresh_database, started_database
from tests.support.waiting import until
from veil import cli
from veil.store.policies import EXCLUSION_ID, PolicyStore, PolicyTable
from veil.waf.policy import EndpointProfile, Exclusion, SitePolicy


def execute(conninfo: str, statement: str, params: tuple = ()) -> list[tuple]:
    """One statement in its own committed transaction, as another process would run it."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def add_site(conninfo: str, domain: str) -> uuid.UUID:
    """A site (and its owner) straight into the store."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        owner = conn.execute("INSERT INTO users (email) VALUES (%s) RETURNING id",
                             (f"owner-{uuid.uuid4().hex[:8]}@example.com",)).fetchone()[0]
        return conn.execute("INSERT INTO sites (owner_id, domain, upstream) VALUES (%s, %s, %s)"
                            " RETURNING id", (owner, domain, "http://127.0.0.1:9")).fetchone()[0]


class SchemaTests(TestCase):
    """Schema 004: the per-site settings, their checks, and the request log's new columns."""

    timeout = 30

    def setUp(self) -> None:
        self.conninfo = fresh_database(self)

    def test_site_defaults_and_checks(self) -> None:
        """A new site has threshold 5, Veil's body limit and inspect-prefix; bad values fail."""
        site = add_site(self.conninfo, "shop.test")
        self.assertEqual(execute(self.conninfo, "SELECT anomaly_threshold, inspect_body_limit,"
                                 " body_overflow FROM sites WHERE id = %s", (site,)),
                         [(5, None, "inspect-prefix")])
        for column, value, constraint in [
                ("anomaly_threshold", 0, "sites_anomaly_threshold_range"),
                ("inspect_body_limit", 1048577, "sites_inspect_body_limit_range"),
                ("body_overflow", "drop", "sites_body_overflow_valid")]:
            with self.assertRaises(psycopg.errors.CheckViolation) as caught:
                execute(self.conninfo, f"UPDATE sites SET {column} = %s", (value,))
            self.assertEqual(caught.exception.diag.constraint_name, constraint)

    def test_exclusions_must_be_a_list(self) -> None:
        """A rules document whose exclusions are not an array is refused."""
        site = add_site(self.conninfo, "shop.test")
        with self.assertRaises(psycopg.errors.CheckViolation):
            execute(self.conninfo, "INSERT INTO rules (site_id, version, body)"
                    " VALUES (%s, 1, '{\"exclusions\": {}}')", (site,))

    def test_request_log_columns_on_every_partition(self) -> None:
        """The verdict columns are on the parent, the partitions there, and those made later."""
        execute(self.conninfo, "SELECT * FROM veil_request_log_maintain(6, '2031-05-10')")
        partitions = [name for (name,) in execute(
            self.conninfo, "SELECT partition_name FROM veil_request_log_partitions()")]
        self.assertIn("request_log_y2031m05", partitions)
        for table in ["request_log", *partitions]:
            self.assertEqual(
                execute(self.conninfo,
                        "SELECT column_name, data_type FROM information_schema.columns"
                        " WHERE table_name = %s AND column_name IN"
                        " ('rule_ids', 'anomaly_score', 'excerpt') ORDER BY column_name",
                        (table,)),
                [("anomaly_score", "integer"), ("excerpt", "text"), ("rule_ids", "ARRAY")],
                table)

    def test_profile_pattern_change_notifies(self) -> None:
        """Changing a skip profile's pattern in place notifies veil_endpoint_profiles."""
        site = add_site(self.conninfo, "shop.test")
        execute(self.conninfo, "INSERT INTO endpoint_profiles (site_id, method, path_pattern,"
                " mode) VALUES (%s, '*', '/healthz', 'skip'),"
                " (%s, 'GET', '/learned', 'normal')", (site, site))
        with psycopg.connect(self.conninfo, autocommit=True) as listen:
            listen.execute("LISTEN veil_endpoint_profiles")
            execute(self.conninfo, "UPDATE endpoint_profiles SET path_pattern = '/health'"
                    " WHERE mode = 'skip'")
            execute(self.conninfo, "UPDATE endpoint_profiles SET request_count = 7,"
                    " path_pattern = '/learned2' WHERE mode = 'normal'")
            notes = [n.payload for n in listen.notifies(timeout=1.0)]
        self.assertEqual(notes, [str(site)])


class PolicyTableTests(TestCase):
    """PolicyTable builds each site's SitePolicy from its three tables."""

    timeout = 30

    def setUp(self) -> None:
        self.conninfo = fresh_database(self)
        self.db = started_database(self, self.conninfo)
        self.table = PolicyTable(PolicyStore(self.db, inspect_body_limit=32768), Clock())

    async def test_built_from_three_tables(self) -> None:
        """Settings, active exclusions and non-normal profiles (most specific first) make a policy."""
        site = add_site(self.conninfo, "shop.test")
        plain = add_site(self.conninfo, "plain.test")
        execute(self.conninfo, "UPDATE sites SET mode = 'monitor', paranoia_level = 2,"
                " anomaly_threshold = 7, inspect_body_limit = 1024, body_overflow = 'block'"
                " WHERE id = %s", (site,))
        document = {"exclusions": [
            {"id": "abcd2345", "rule": 942100, "path": "/search", "target": "args:q"},
            {"id": "bcde3456", "class": "xss", "target": "headers:Referer"}]}
        execute(self.conninfo, "INSERT INTO rules (site_id, version, body, is_active) VALUES"
                " (%s, 1, '{\"exclusions\": []}', false), (%s, 2, %s, true)",
                (site, site, json.dumps(document)))
        execute(self.conninfo, "INSERT INTO endpoint_profiles (site_id, method, path_pattern,"
                " mode) VALUES (%s, '*', '/static/*', 'skip'), (%s, 'GET', '/admin/login',"
                " 'deep'), (%s, '*', '/admin*', 'deep'), (%s, '*', '/api/{id}', 'skip'),"
                " (%s, 'POST', '/learned', 'normal')", (site,) * 5)
        await self.table.reload()
        self.assertEqual(self.table.get(site), SitePolicy(
            site, mode="monitor", paranoia=2, threshold=7, inspect_body_limit=1024,
            body_overflow="block",
            exclusions=(Exclusion("abcd2345", 942100, None, "/search", "args:q"),
                        Exclusion("bcde3456", None, "xss", None, "headers:referer")),
            profiles=(EndpointProfile("GET", "/admin/login", "deep"),
                      EndpointProfile("*", "/api/{id}", "skip"),
                      EndpointProfile("*", "/static/*", "skip"),
                      EndpointProfile("*", "/admin*", "deep"))))
        self.assertEqual(self.table.get(plain), SitePolicy(plain, inspect_body_limit=32768))
        nowhere = uuid.uuid4()
        self.assertEqual(self.table.get(nowhere), SitePolicy(nowhere, inspect_body_limit=32768))
        self.assertEqual(len(self.table), 2)

    async def test_bad_entries_left_out_and_logged(self) -> None:
        """Exclusions that do not parse are left out, the others kept, and the reason logged."""
        site = add_site(self.conninfo, "shop.test")
        document = {"exclusions": [
            {"id": "abcd2345", "rule": 942100},
            {"id": "bcde3456", "class": "nonsense"},
            {"id": "x", "rule": 1},
            "not an object",
            {"id": "cdef4567", "rule": 1, "target": "cookie:a"}]}
        execute(self.conninfo, "INSERT INTO rules (site_id, version, body, is_active)"
                " VALUES (%s, 1, %s, true)", (site, json.dumps(document)))
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await self.table.reload()
        self.assertEqual(self.table.get(site).exclusions,
                         (Exclusion("abcd2345", 942100),))
        [event] = [e for e in events if e.get("site_id") == str(site)]
        self.assertEqual(event["count"], 4)
        self.assertIn("nonsense", event["problems"])

    async def test_one_site_reloaded(self) -> None:
        """A notified site is read alone; a deleted site's policy goes."""
        site = add_site(self.conninfo, "shop.test")
        await self.table.reload()
        execute(self.conninfo, "UPDATE sites SET paranoia_level = 3 WHERE id = %s", (site,))
        await self.table._keeper.notified(str(site))
        self.assertEqual(self.table.get(site).paranoia, 3)
        execute(self.conninfo, "DELETE FROM sites WHERE id = %s", (site,))
        await self.table._keeper.notified(str(site))
        self.assertEqual(len(self.table), 0)


class SitesSetTests(CliCase):
    """C{veil sites set} changes a site's WAF settings, audited, refusing bad values."""

    async def asyncSetUp(self) -> None:
        await self.ok("sites", "add", "shop.test", "--origin", "http://10.0.0.5")

    def setUp(self) -> Deferred[None]:
        super().setUp()
        return Deferred.fromCoroutine(self.asyncSetUp())

    def settings(self) -> tuple:
        [row] = self.rows("SELECT mode, paranoia_level, anomaly_threshold, inspect_body_limit,"
                          " body_overflow FROM sites WHERE domain = 'shop.test'")
        return row

    async def test_set_and_audit(self) -> None:
        """Each option changes its column; the audit row lists each change from and to."""
        result = await self.ok("sites", "set", "SHOP.test", "--mode", "monitor", "--paranoia",
                               "2", "--threshold", "7", "--inspect-body-limit", "256KiB",
                               "--body-overflow", "block")
        self.assertEqual(self.settings(), ("monitor", 2, 7, 262144, "block"))
        self.assertIn("mode monitor (was block)", result.out)
        self.assertIn("inspect body limit 256 KiB (was default)", result.out)
        self.assertIn("within a second", result.out)
        [(actor, action, target_type, detail)] = self.rows(
            "SELECT actor_user_id, action, target_type, detail FROM audit_log"
            " WHERE action = 'site.update'")
        self.assertEqual((actor, action, target_type), (self.operator_id(), "site.update", "site"))
        self.assertEqual(detail["changes"], {
            "mode": {"from": "block", "to": "monitor"},
            "paranoia_level": {"from": 1, "to": 2},
            "anomaly_threshold": {"from": 5, "to": 7},
            "inspect_body_limit": {"from": None, "to": 262144},
            "body_overflow": {"from": "inspect-prefix", "to": "block"}})
        await self.ok("sites", "set", "shop.test", "--inspect-body-limit", "default")
        self.assertEqual(self.settings()[3], None)

    async def test_no_change_not_audited(self) -> None:
        """Setting what is already set changes nothing and writes no audit row."""
        result = await self.ok("sites", "set", "shop.test", "--mode", "block",
                               "--threshold", "5")
        self.assertIn("nothing changed (mode already block, threshold already 5)", result.out)
        self.assertEqual(self.rows("SELECT count(*) FROM audit_log WHERE action = 'site.update'"),
                         [(0,)])

    async def test_bad_values(self) -> None:
        """Bad values are refused with a clear message and exit status 1; nothing changes."""
        cases = [
            (["--paranoia", "5"], "paranoia level is 1, 2, 3 or 4"),
            (["--paranoia", "two"], "paranoia level is 1, 2, 3 or 4"),
            (["--threshold", "0"], "from 1 to 1000"),
            (["--threshold", "-3"], "from 1 to 1000"),
            (["--inspect-body-limit", "2MiB"], "more than the largest inspection limit"),
            (["--inspect-body-limit", "lots"], "is not a size"),
            (["--mode", "drop"], "mode must be one of block, monitor"),
            (["--body-overflow", "truncate"], "body overflow must be one of"),
            ([], "nothing to change"),
        ]
        for options, message in cases:
            result = await self.veil("sites", "set", "shop.test", *options)
            self.assertEqual(result.status, 1, options)
            self.assertIn(message, result.err, options)
        result = await self.veil("sites", "set", "nowhere.test", "--mode", "monitor")
        self.assertEqual((result.status, result.err.strip()), (1, "veil: no site nowhere.test"))
        self.assertEqual(self.settings(), ("block", 1, 5, None, "inspect-prefix"))


class ExclusionCommandTests(CliCase):
    """C{veil waf exclude/exclusions/unexclude/history}: versioned, audited exclusions."""

    async def asyncSetUp(self) -> None:
        await self.ok("sites", "add", "shop.test", "--origin", "http://10.0.0.5")
        await self.ok("sites", "add", "blog.test", "--origin", "http://10.0.0.6")

    def setUp(self) -> Deferred[None]:
        super().setUp()
        return Deferred.fromCoroutine(self.asyncSetUp())

    def versions(self, domain: str) -> list[tuple]:
        return self.rows("SELECT r.version, r.is_active, r.body, r.comment, r.created_by"
                         " FROM rules r JOIN sites s ON s.id = r.site_id WHERE s.domain = %s"
                         " ORDER BY r.version", (domain,))

    async def exclude(self, *argv: str) -> str:
        result = await self.ok("waf", "exclude", *argv)
        [exclusion_id] = [word.rstrip(".") for word in result.out.split()
                          if EXCLUSION_ID.fullmatch(word.rstrip("."))][:1]
        return exclusion_id

    async def test_exclude_versions_and_audit(self) -> None:
        """
        Each exclusion writes a new active version that keeps the earlier
        entries with their ids, records who and why, and is audited.
        """
        first = await self.exclude("shop.test", "--rule", "942100", "--path", "/search",
                                   "--target", "args:q", "--comment", "search box FP")
        second = await self.exclude("shop.test", "--class", "XSS", "--target",
                                    "headers:Referer")
        self.assertNotEqual(first, second)
        versions = self.versions("shop.test")
        self.assertEqual([(v, active) for v, active, *_ in versions], [(1, False), (2, True)])
        body = versions[1][2]
        self.assertEqual([e["id"] for e in body["exclusions"]], [first, second])
        self.assertEqual({k: body["exclusions"][0][k] for k in
                          ("rule", "path", "target", "comment")},
                         {"rule": 942100, "path": "/search", "target": "args:q",
                          "comment": "search box FP"})
        self.assertEqual(body["exclusions"][1]["class"], "xss")
        self.assertEqual(body["exclusions"][1]["target"], "headers:referer")
        self.assertEqual(versions[1][4], self.operator_id())
        self.assertIn(f"exclusion {second} added: class xss for headers:referer", versions[1][3])
        audit = self.rows("SELECT action, target_type, target_id, detail FROM audit_log"
                          " WHERE action LIKE 'waf.%%' ORDER BY id")
        self.assertEqual([(a, t, i) for a, t, i, _ in audit],
                         [("waf.exclusion.create", "exclusion", first),
                          ("waf.exclusion.create", "exclusion", second)])
        self.assertEqual((audit[0][3]["domain"], audit[0][3]["version"],
                          audit[0][3]["exclusion"]["comment"]),
                         ("shop.test", 1, "search box FP"))

    async def test_same_exclusion_twice(self) -> None:
        """Adding an exclusion already in force changes nothing and names the existing one."""
        first = await self.exclude("shop.test", "--rule", "942100")
        result = await self.ok("waf", "exclude", "shop.test", "--rule", "942100")
        self.assertIn(f"already has this exclusion (rule 942100): {first}", result.out)
        self.assertEqual(len(self.versions("shop.test")), 1)

    async def test_list_and_unexclude(self) -> None:
        """The list shows the active exclusions; unexclude removes one by id from its site."""
        first = await self.exclude("shop.test", "--rule", "942100", "--path", "/search")
        second = await self.exclude("shop.test", "--class", "sqli")
        other = await self.exclude("blog.test", "--rule", "941100")
        listing = (await self.ok("waf", "exclusions", "shop.test")).out
        self.assertIn(first, listing)
        self.assertIn("rule 942100", listing)
        self.assertIn("/search", listing)
        self.assertNotIn(other, listing)
        data = json.loads((await self.ok("waf", "exclusions", "shop.test", "--json")).out)
        self.assertEqual([(e["id"], e["rule"], e["class"]) for e in data],
                         [(first, 942100, None), (second, None, "sqli")])
        self.assertEqual(data[0]["created_by"], str(self.operator_id()))
        datetime.fromisoformat(data[0]["created_at"])

        result = await self.ok("waf", "unexclude", first.upper(), "--comment", "fixed upstream")
        self.assertIn(f"Removed exclusion {first} (rule 942100 under /search) from shop.test",
                      result.out)
        versions = self.versions("shop.test")
        self.assertEqual([e["id"] for e in versions[-1][2]["exclusions"]], [second])
        self.assertTrue(versions[-1][1])
        self.assertIn("fixed upstream", versions[-1][3])
        self.assertEqual(self.rows("SELECT detail->>'comment' FROM audit_log"
                                   " WHERE action = 'waf.exclusion.delete'"),
                         [("fixed upstream",)])
        again = await self.veil("waf", "unexclude", first)
        self.assertEqual(again.status, 1)
        self.assertIn(f"no exclusion {first}", again.err)
        history = (await self.ok("waf", "history", "shop.test")).out
        self.assertIn(f"exclusion {first} removed", history)
        self.assertIn("operator@veil.invalid", history)
        # A removed exclusion's id is never given again: it stays in the older versions.
        self.assertEqual(self.rows("SELECT count(*) FROM rules WHERE body -> 'exclusions'"
                                   " @> %s::jsonb", (json.dumps([{"id": first}]),)), [(2,)])

    async def test_bad_input(self) -> None:
        """Bad rules, classes, targets, paths, ids and comments are refused; nothing is written."""
        cases = [
            (["exclude", "shop.test", "--rule", "x1"], "is not a rule id"),
            (["exclude", "shop.test", "--rule", "0"], "is not a rule id"),
            (["exclude", "shop.test", "--class", "worms"], "is not an attack class"),
            (["exclude", "shop.test", "--rule", "1", "--target", "arg:q"],
             "does not start with a known collection"),
            (["exclude", "shop.test", "--rule", "1", "--target", "args:"], "names no args"),
            (["exclude", "shop.test", "--rule", "1", "--path", "search"], "must start with /"),
            (["exclude", "shop.test", "--rule", "1", "--comment", "bad\x1b[31m"],
             "control characters (U+001B found)"),
            (["exclude", "shop.test", "--rule", "1", "--comment", "spoof\u202eevil"],
             "control characters (U+202E found)"),
            (["exclude", "shop.test", "--rule", "1", "--comment", "x" * 501],
             "501 characters long; at most 500"),
            (["exclude", "nowhere.test", "--rule", "1"], "no site nowhere.test"),
            (["unexclude", "not-an-id"], "is not an exclusion id"),
            (["unexclude", "abcd2345"], "no exclusion abcd2345"),
        ]
        for argv, message in cases:
            result = await self.veil("waf", *argv)
            self.assertEqual(result.status, 1, argv)
            self.assertIn(message, result.err, argv)
        usage = await self.veil("waf", "exclude", "shop.test", "--rule", "1", "--class", "xss")
        self.assertEqual(usage.status, 2)
        self.assertIn("not allowed with argument", usage.err)
        self.assertEqual(self.rows("SELECT count(*) FROM rules"), [(0,)])
        self.assertEqual(self.rows("SELECT count(*) FROM audit_log WHERE action LIKE 'waf.%%'"),
                         [(0,)])


class ProfileCommandTests(CliCase):
    """C{veil waf profile/profiles/unprofile}: endpoint profiles, audited."""

    async def asyncSetUp(self) -> None:
        await self.ok("sites", "add", "shop.test", "--origin", "http://10.0.0.5")

    def setUp(self) -> Deferred[None]:
        super().setUp()
        return Deferred.fromCoroutine(self.asyncSetUp())

    async def test_set_list_remove(self) -> None:
        """Profiles are set, changed, listed most specific first, removed, and audited."""
        result = await self.ok("waf", "profile", "shop.test", "/static/*", "--mode", "skip")
        self.assertIn("* /static/* is now skip (was normal): not inspected", result.out)
        await self.ok("waf", "profile", "shop.test", "/admin/login", "--mode", "deep",
                      "--method", "post")
        again = await self.ok("waf", "profile", "shop.test", "/static/*", "--mode", "skip")
        self.assertIn("already skip", again.out)
        await self.ok("waf", "profile", "shop.test", "/static/*", "--mode", "deep")
        listing = json.loads((await self.ok("waf", "profiles", "shop.test", "--json")).out)
        self.assertEqual([(p["method"], p["pattern"], p["mode"]) for p in listing],
                         [("POST", "/admin/login", "deep"), ("*", "/static/*", "deep")])
        removed = await self.ok("waf", "unprofile", "shop.test", "/admin/login", "--method",
                                "POST")
        self.assertIn("Removed the endpoint profile POST /admin/login (deep)", removed.out)
        missing = await self.veil("waf", "unprofile", "shop.test", "/admin/login")
        self.assertEqual(missing.status, 1)
        self.assertIn("no endpoint profile for * /admin/login", missing.err)
        self.assertEqual(
            self.rows("SELECT action, detail->>'pattern', detail->>'mode', detail->>'before'"
                      " FROM audit_log WHERE action LIKE 'waf.profile.%%' ORDER BY id"),
            [("waf.profile.set", "/static/*", "skip", None),
             ("waf.profile.set", "/admin/login", "deep", None),
             ("waf.profile.set", "/static/*", "deep", "skip"),
             ("waf.profile.delete", "/admin/login", "deep", None)])

    async def test_learned_profiles_listed_with_all(self) -> None:
        """Learned endpoints (mode normal) are listed only with --all."""
        execute(self.conninfo, "INSERT INTO endpoint_profiles (site_id, method, path_pattern,"
                " request_count) SELECT id, 'GET', '/products/{id}', 42 FROM sites")
        quiet = await self.ok("waf", "profiles", "shop.test")
        self.assertIn("has no endpoint profiles", quiet.out)
        everything = await self.ok("waf", "profiles", "shop.test", "--all")
        self.assertIn("/products/{id}", everything.out)
        self.assertIn("42", everything.out)

    async def test_bad_patterns(self) -> None:
        """Bad patterns, methods and modes are refused with a clear message."""
        cases = [
            (["healthz", "--mode", "skip"], "must start with /"),
            (["/a*b", "--mode", "skip"], "may have one *"),
            (["*.css*", "--mode", "skip"], "may have one *"),
            (["/a b", "--mode", "skip"], "must not contain spaces"),
            (["/api/x{id}", "--mode", "deep"], "must be a whole segment"),
            (["*{id}.css", "--mode", "deep"], "cannot have {name} segments"),
            (["/*", "--mode", "skip"], "turn inspection off for every request"),
            (["*", "--mode", "skip"], "turn inspection off for every request"),
            (["/x", "--mode", "fast"], "mode is one of normal, skip, deep"),
            (["/x", "--mode", "skip", "--method", "GET /"], "is not an HTTP method"),
        ]
        for argv, message in cases:
            result = await self.veil("waf", "profile", "shop.test", *argv)
            self.assertEqual(result.status, 1, argv)
            self.assertIn(message, result.err, argv)
        await self.ok("waf", "profile", "shop.test", "/*", "--mode", "deep")
        self.assertEqual(self.rows("SELECT path_pattern, mode FROM endpoint_profiles"),
                         [("/*", "deep")])

    async def test_policy_command(self) -> None:
        """C{veil waf policy} shows the whole policy as every process builds it."""
        await self.ok("sites", "set", "shop.test", "--paranoia", "3")
        await self.ok("waf", "exclude", "shop.test", "--rule", "920350")
        await self.ok("waf", "profile", "shop.test", "/healthz", "--mode", "skip")
        text = (await self.ok("waf", "policy", "shop.test")).out
        self.assertIn("mode block, paranoia 3, threshold 5", text)
        self.assertIn("inspect 64 KiB (Veil's default), beyond that inspect-prefix", text)
        self.assertIn("rule 920350", text)
        self.assertIn("* /healthz  skip", text)
        data = json.loads((await self.ok("waf", "policy", "shop.test", "--json")).out)
        self.assertEqual((data["paranoia"], data["inspect_body_limit"],
                          data["inspect_body_limit_is_default"], data["profiles"]),
                         (3, 65536, True, [{"method": "*", "pattern": "/healthz",
                                            "mode": "skip"}]))
        self.assertEqual(data["exclusions"][0]["rule"], 920350)


class LivePolicyTests(TestCase):
    """
    Changes made with the CLI reach the policy table of every running Veil
    within a second, through NOTIFY, without a restart.
    """

    timeout = 90

    async def veil_cli(self, *argv: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        status = await cli.run(reactor, list(argv), environ={"VEIL_DATABASE_URL": self.conninfo},
                               out=out, err=err)
        self.assertEqual(status, 0, err.getvalue())
        return out.getvalue()

    async def seen(self, condition: Callable[[SitePolicy], bool], what: str) -> None:
        """Both services see the change within a second of the command's end."""
        await until(lambda: all(condition(v.policies.get(self.site)) for v in self.veils),
                    1.0, what)

    async def test_two_services_follow_cli_changes(self) -> None:
        """Settings, exclusions and profiles changed by the CLI reach two running services."""
        self.conninfo = empty_database(self)
        self.veils = [await start_veil(self, self.conninfo) for _ in range(2)]
        await self.veil_cli("sites", "add", "shop.test", "--origin", "http://127.0.0.1:9",
                            "--verified")
        [(self.site,)] = execute(self.conninfo, "SELECT id FROM sites")
        await until(lambda: all(self.site in v.policies for v in self.veils), 1.0,
                    "the new site's policy")
        self.assertEqual(self.veils[0].policies.get(self.site), SitePolicy(self.site))

        await self.veil_cli("sites", "set", "shop.test", "--mode", "monitor", "--paranoia", "2",
                            "--threshold", "7", "--inspect-body-limit", "1MiB",
                            "--body-overflow", "block")
        await self.seen(lambda p: (p.mode, p.paranoia, p.threshold, p.inspect_body_limit,
                                   p.body_overflow) == ("monitor", 2, 7, 1048576, "block"),
                        "the new settings")

        out = await self.veil_cli("waf", "exclude", "shop.test", "--rule", "942100",
                                  "--target", "args:q")
        [exclusion_id] = [w.rstrip(".") for w in out.split()
                          if EXCLUSION_ID.fullmatch(w.rstrip("."))][:1]
        await self.seen(lambda p: p.exclusions == (
            Exclusion(exclusion_id, 942100, target="args:q"),), "the exclusion")
        self.assertIsNotNone(self.veils[1].policies.get(self.site).excluded(
            942100, "sqli", "/search", "args:q"))

        await self.veil_cli("waf", "profile", "shop.test", "/healthz", "--mode", "skip")
        await self.seen(lambda p: p.profile_for("GET", "/healthz") == "skip", "the profile")

        await self.veil_cli("waf", "unexclude", exclusion_id)
        await self.seen(lambda p: p.exclusions == (), "the exclusion removed")
        await self.veil_cli("waf", "unprofile", "shop.test", "/healthz")
        await self.seen(lambda p: p.profiles == (), "the profile removed")

        await self.veil_cli("sites", "remove", "shop.test")
        await until(lambda: all(len(v.policies) == 0 for v in self.veils), 1.0,
                    "the site's policy gone")
        self.assertIn("policy-table", [w.name for w in self.veils[0].workers])

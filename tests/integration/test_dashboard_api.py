"""
The dashboard's REST API over real HTTP on loopback, against a real
PostgreSQL: sites (validation, conflicts, settings, removal), onboarding by
DNS against a DNS server on loopback (C{twisted.names}), decisions, WAF
exclusions and profiles, the request log (filters, cursors, stats, the
streamed export and its escaping, "why was this blocked" and the
exclusion proposed from it with its 7-day count), members and invitations
through a loopback SMTP server, users and the audit log.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID

from twisted.trial.unittest import TestCase

from tests.integration.test_logquery import write
from tests.support import dns_server
from tests.support.dashboard import PASSWORD, Reply, start_dashboard
from tests.support.smtp import SmtpServer
from veil.store.logrows import LogRow

TOKEN_RE = r"token=([A-Za-z0-9_-]{43})"


def log_row(ts: datetime, site: UUID, n: int, **changes: Any) -> LogRow:
    base = LogRow(ts=ts, site_id=site, host="shop.example.com", method="GET", path="/",
                  query=None, status=200, bytes_in=100, bytes_out=1000, duration_ms=5.0,
                  origin_ms=4.0, client_ip="192.0.2.1", request_id=f"r{n}",
                  user_agent="curl/8", classification="benign")
    return base._replace(**changes)


def blocked(ts: datetime, site: UUID, n: int, path: str, query: str, rules: tuple[int, ...],
            score: int, client: str = "198.51.100.7") -> LogRow:
    excerpt = f"GET {path}?{query}\nhost: shop.example.com\nuser-agent: Mozilla/5.0"
    return log_row(ts, site, n, path=path, query=query, status=403, client_ip=client,
                   classification="malicious", classifier="signature", confidence=0.5,
                   attack_type="sqli", blocked=True, rule_ids=rules, anomaly_score=score,
                   excerpt=excerpt)


class ApiCase(TestCase):
    """An owner signed in, with a token; a stranger signed in."""

    timeout = 120

    async def start(self, env: dict[str, str] | None = None) -> None:
        self.running = await start_dashboard(self, env=env)
        self.owner_user = await self.running.user("owner@example.com")
        await self.running.user("stranger@example.com")
        self.owner = await self.running.sign_in("owner@example.com")
        self.stranger = await self.running.sign_in("stranger@example.com")
        reply = await self.owner.api("POST", "/api/v1/tokens", {"name": "script"})
        self.token = reply.json()["token"]
        self.bearer = self.running.browser()

    async def api(self, method: str, path: str, body: Any = None) -> Reply:
        """A call with the owner's API token."""
        return await self.bearer.api(method, path, body, token=self.token)

    async def new_site(self, domain: str = "shop.example.com",
                       origin: str = "http://192.0.2.10:8080") -> dict[str, Any]:
        reply = await self.api("POST", "/api/v1/sites", {"domain": domain, "origin": origin})
        self.assertEqual(reply.code, 201, reply.text)
        return reply.json()

    def fields(self, reply: Reply, status: int) -> dict[str, str]:
        self.assertEqual(reply.code, status, reply.text)
        body = reply.json()
        self.assertEqual(body["error"]["code"], "validation_failed")
        return {f["field"]: f["message"] for f in body["error"]["detail"]["fields"]}


class SitesTests(ApiCase):
    """Adding, reading, changing and removing sites."""

    async def test_create(self) -> None:
        """
        A new site answers 201 with its id, domain, pending status and the
        DNS records to create: the CNAME to Veil's host name and the TXT token.
        """
        await self.start()
        site = await self.new_site("Shop.Example.COM.")
        self.assertEqual(site["domain"], "shop.example.com")
        self.assertEqual(site["status"], "pending")
        self.assertEqual(site["origin"], "http://192.0.2.10:8080")
        self.assertEqual(site["role"], "owner")
        records = {(r["type"], r["name"]): r["value"] for r in site["dns"]["records"]}
        self.assertEqual(records[("CNAME", "shop.example.com")], "edge.veil.test")
        self.assertEqual(records[("TXT", "_veil.shop.example.com")], site["dns"]["token"])
        self.assertRegex(site["dns"]["token"], r"^[0-9a-f]{32}$")
        self.assertEqual([t["status"] for t in site["timeline"]], ["pending"])
        self.assertIsNotNone(site["verification"]["next_check_at"])
        self.assertIsNone(site["certificate"])
        listed = (await self.api("GET", "/api/v1/sites")).json()["items"]
        self.assertEqual([(s["domain"], s["role"]) for s in listed],
                         [("shop.example.com", "owner")])
        again = await self.api("GET", f"/api/v1/sites/{site['id']}")
        self.assertEqual(again.json()["dns"], site["dns"])
        created = await self.running.audit("site.create")
        self.assertEqual([(r[0], r[1]) for r in created], [(self.owner_user.id, site["id"])])

    async def test_validation(self) -> None:
        """
        The domain is checked as the command line checks it, the origin
        against the origin policy; each error names its field (422).
        """
        await self.start()
        cases = [
            ({"domain": "not a domain", "origin": "http://192.0.2.1"}, "domain"),
            ({"domain": "192.0.2.1", "origin": "http://192.0.2.1"}, "domain"),
            ({"domain": "*.example.com", "origin": "http://192.0.2.1"}, "domain"),
            ({"domain": "a" * 64 + ".example.com", "origin": "http://192.0.2.1"}, "domain"),
            ({"domain": "shop.example.com", "origin": "ftp://192.0.2.1"}, "origin"),
            ({"domain": "shop.example.com", "origin": "http://169.254.169.254"}, "origin"),
            ({"domain": "shop.example.com", "origin": "http://metadata.google.internal"},
             "origin"),
            ({"domain": "shop.example.com", "origin": "http://192.0.2.1/path"}, "origin"),
            ({"origin": "http://192.0.2.1"}, "domain"),
            ({"domain": 7}, "domain"),
            ({"domain": "shop.example.com", "colour": "red"}, "colour"),
        ]
        for body, field in cases:
            reply = await self.api("POST", "/api/v1/sites", body)
            self.assertIn(field, self.fields(reply, 422), body)
        metadata = await self.api("POST", "/api/v1/sites", {"domain": "shop.example.com",
                                                             "origin": "http://169.254.169.254"})
        self.assertIn("link-local", self.fields(metadata, 422)["origin"])
        self.assertEqual((await self.api("GET", "/api/v1/sites")).json()["items"], [])

    async def test_errors(self) -> None:
        """Malformed JSON is 400, another type 415, a big body 413, a taken domain 409."""
        await self.start()
        await self.new_site()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        reply = await self.bearer.request("POST", "/api/v1/sites", data=b'{"domain": ',
                                          headers={**headers,
                                                   "Content-Type": "application/json"})
        self.assertEqual((reply.code, reply.json()["error"]["code"]), (400, "invalid_json"))
        reply = await self.bearer.request("POST", "/api/v1/sites", data=b"domain=x",
                                          headers={**headers, "Content-Type": "text/plain"})
        self.assertEqual(reply.code, 415)
        big = json.dumps({"domain": "x" * 70000}).encode()
        reply = await self.bearer.request("POST", "/api/v1/sites", data=big,
                                          headers={**headers,
                                                   "Content-Type": "application/json"})
        self.assertEqual((reply.code, reply.json()["error"]["code"]), (413, "body_too_large"))
        taken = await self.stranger.api("POST", "/api/v1/sites",
                                        {"domain": "SHOP.example.com", "origin": "http://1.2.3.4"})
        self.assertEqual(taken.code, 409, taken.text)
        self.assertEqual(taken.json()["error"]["code"], "site_exists")
        self.assertEqual(taken.json()["error"]["detail"]["fields"][0]["field"], "domain")
        self.assertEqual((await self.stranger.api("GET", "/api/v1/sites")).json()["items"], [])

    async def test_settings(self) -> None:
        """
        PATCH changes only the fields given, in one transaction, each part
        audited; bad values are 422 naming the field and change nothing.
        """
        await self.start()
        site = await self.new_site()
        path = f"/api/v1/sites/{site['id']}"
        reply = await self.api("PATCH", path, {
            "origin": "https://origin.example.net:8443", "mode": "monitor", "paranoia": 2,
            "threshold": 12, "inspect_body_limit": 32768, "body_overflow": "block",
            "allow_plain_http": True, "origin_tls_verify": False, "maintenance": True,
            "max_body_size": 1048576, "allow_trace": True})
        self.assertEqual(reply.code, 200, reply.text)
        changed = reply.json()
        self.assertEqual(
            {k: changed[k] for k in ("origin", "mode", "paranoia", "threshold",
                                     "inspect_body_limit", "body_overflow", "allow_plain_http",
                                     "origin_tls_verify", "maintenance", "max_body_size",
                                     "allow_trace")},
            {"origin": "https://origin.example.net:8443", "mode": "monitor", "paranoia": 2,
             "threshold": 12, "inspect_body_limit": 32768, "body_overflow": "block",
             "allow_plain_http": True, "origin_tls_verify": False, "maintenance": True,
             "max_body_size": 1048576, "allow_trace": True})
        updates = await self.running.audit("site.update")
        changes: dict[str, Any] = {}
        for actor, target, detail, _ in updates:
            self.assertEqual((actor, target), (self.owner_user.id, site["id"]))
            changes.update(detail.get("changes", {}))
            changes.update({k: v for k, v in detail.items() if k != "changes"})
        self.assertEqual(changes["upstream"], {"from": "http://192.0.2.10:8080",
                                               "to": "https://origin.example.net:8443"})
        self.assertEqual(changes["paranoia_level"], {"from": 1, "to": 2})
        self.assertEqual(changes["maintenance"], True)
        self.assertEqual(changes["max_body_size"], 1048576)
        bad = await self.api("PATCH", path, {"mode": "maybe", "paranoia": 9, "origin": 5})
        self.assertEqual(set(self.fields(bad, 422)), {"mode", "paranoia", "origin"})
        refused = await self.api("PATCH", path, {"origin": "http://[fe80::1]", "mode": "block"})
        self.assertIn("origin", self.fields(refused, 422))
        empty = await self.api("PATCH", path, {})
        self.assertIn("(body)", self.fields(empty, 422))
        unchanged = (await self.api("GET", path)).json()
        self.assertEqual((unchanged["mode"], unchanged["origin"]),
                         ("monitor", "https://origin.example.net:8443"))
        default = await self.api("PATCH", path, {"inspect_body_limit": None})
        self.assertIsNone(default.json()["inspect_body_limit"])

    async def test_delete(self) -> None:
        """Only the owner removes a site; afterwards it is 404 and its audit row stays."""
        await self.start()
        site = await self.new_site()
        path = f"/api/v1/sites/{site['id']}"
        admin = await self.running.user("helper@example.com")
        await self.running.add_member(UUID(site["id"]), admin, "admin")
        helper = await self.running.sign_in("helper@example.com")
        self.assertEqual((await helper.api("DELETE", path)).code, 403)
        self.assertEqual((await self.stranger.api("DELETE", path)).code, 404)
        self.assertEqual((await self.owner.api("DELETE", path)).code, 204)
        self.assertEqual((await self.owner.api("GET", path)).code, 404)
        self.assertEqual(len(await self.running.audit("site.delete")), 1)

    async def test_site_limited_token(self) -> None:
        """A token limited to one site cannot add sites."""
        await self.start()
        site = await self.new_site()
        scoped = (await self.owner.api("POST", "/api/v1/tokens", {
            "name": "one", "site_id": site["id"]})).json()["token"]
        reply = await self.bearer.api("POST", "/api/v1/sites", {
            "domain": "blog.example.com", "origin": "http://192.0.2.1"}, token=scoped)
        self.assertEqual((reply.code, reply.json()["error"]["code"]), (403, "token_not_allowed"))


class OnboardingTests(ApiCase):
    """Create, follow the DNS instructions, verify: against a DNS server on loopback."""

    async def test_onboarding(self) -> None:
        """
        Without an origin, Veil proposes the domain's current address; the
        records missing are explained; once the CNAME and the TXT token are
        published, "Check now" makes the site active, and a second check at
        once is 429 with Retry-After.
        """
        server = dns_server.dns_server_for(self)
        world = server.world
        world.add_zone("example.com")
        world.add_zone("veil.test")
        world.add("shop.example.com", dns_server.a("203.0.113.7"))
        world.add("edge.veil.test", dns_server.a("198.51.100.1"))
        await self.start({"VEIL_DNS_RESOLVERS": server.address, "VEIL_DNS_TIMEOUT": "2"})
        reply = await self.api("POST", "/api/v1/sites", {"domain": "shop.example.com"})
        self.assertEqual(reply.code, 201, reply.text)
        site = reply.json()
        self.assertEqual(site["origin"], "http://203.0.113.7")
        self.assertEqual(site["origin_proposal"]["found"], ["A 203.0.113.7"])
        self.assertIn("203.0.113.7", site["origin_proposal"]["reason"])
        self.assertFalse(site["dns"]["apex"])
        token = site["dns"]["token"]
        verify = f"/api/v1/sites/{site['id']}/verify"

        first = await self.api("POST", verify)
        self.assertEqual(first.code, 200, first.text)
        check = first.json()
        self.assertEqual(check["status"], "pending")
        problems = {r["type"]: r["problem"] for r in check["report"]["records"]}
        self.assertEqual(problems["CNAME"], "cname_missing")
        self.assertEqual(problems["TXT"], "txt_missing")
        self.assertIn("_veil.shop.example.com", check["report"]["summary"] +
                      " ".join(r["explanation"] or "" for r in check["report"]["records"]))

        too_soon = await self.api("POST", verify)
        self.assertEqual(too_soon.code, 429, too_soon.text)
        self.assertEqual(too_soon.json()["error"]["code"], "too_soon")
        self.assertTrue(1 <= int(too_soon.header("retry-after")) <= 10)

        world.set("shop.example.com", dns_server.cname("edge.veil.test"))
        world.add("_veil.shop.example.com", dns_server.txt(token))
        await self.running.db.query("test.rewind", "UPDATE site_dns_checks SET"
                                    " last_manual_at = last_manual_at - interval '1 minute'")
        second = await self.api("POST", verify)
        self.assertEqual(second.code, 200, second.text)
        self.assertEqual((second.json()["status"], second.json()["changed"]), ("active", True))
        self.assertTrue(second.json()["report"]["ok"])
        detail = (await self.api("GET", f"/api/v1/sites/{site['id']}")).json()
        self.assertEqual(detail["status"], "active")
        self.assertIsNotNone(detail["dns_verified_at"])
        self.assertEqual([t["status"] for t in detail["timeline"]], ["pending", "active"])
        self.assertIsNone(detail["verification"]["next_check_at"])
        self.assertTrue(detail["verification"]["last_report"]["ok"])
        verified = await self.running.audit("site.dns_verified")
        self.assertEqual([(r[0], r[1]) for r in verified], [(self.owner_user.id, site["id"])])

    async def test_no_proposal(self) -> None:
        """A domain with no records gets no origin proposal: 422 on origin, with the reason."""
        server = dns_server.dns_server_for(self)
        server.world.add_zone("example.com")
        await self.start({"VEIL_DNS_RESOLVERS": server.address})
        reply = await self.api("POST", "/api/v1/sites", {"domain": "new.example.com"})
        self.assertIn("does not exist", self.fields(reply, 422)["origin"])


class RequestLogTests(ApiCase):
    """The request log of a site: list, stats, export, explanation, exclusion."""

    async def seed(self) -> tuple[str, list[int], datetime]:
        await self.start()
        site = await self.new_site()
        site_id = UUID(site["id"])
        now = datetime.now(UTC).replace(microsecond=0)
        rows = [
            log_row(now - timedelta(minutes=50), site_id, 1, path="/", status=200),
            log_row(now - timedelta(minutes=40), site_id, 2, path="/cart", status=404,
                    method="POST", client_ip="192.0.2.44"),
            log_row(now - timedelta(minutes=30), site_id, 3, path="/notes",
                    status=200, user_agent="=cmd|' /c calc'!A0",
                    query='q=<script>alert("x")</script>, "quoted"'),
            blocked(now - timedelta(minutes=20), site_id, 4, "/search",
                    "q=Union%20Select%20stuff", (3010,), 5),
            blocked(now - timedelta(minutes=10), site_id, 5, "/search",
                    "q=Union%20Select%20more", (3010,), 5, client="198.51.100.8"),
            blocked(now - timedelta(minutes=5), site_id, 6, "/search",
                    "q=1+union+select+2", (3001, 3010, 3043), 15),
            blocked(now - timedelta(minutes=4), site_id, 7, "/other",
                    "q=Union%20Select%20x", (3010,), 5),
            blocked(now - timedelta(days=8), site_id, 8, "/search",
                    "q=Union%20Select%20old", (3010,), 5),
        ]
        ids = write(self.running.conninfo, rows)
        other = await self.stranger.api("POST", "/api/v1/sites", {
            "domain": "blog.example.com", "origin": "http://192.0.2.2"})
        write(self.running.conninfo, [log_row(now - timedelta(minutes=1),
                                              UUID(other.json()["id"]), 99, path="/theirs")])
        return site["id"], ids, now

    async def test_list_and_filters(self) -> None:
        """Newest first, filtered by the query string, a page at a time by cursor."""
        site_id, _, now = await self.seed()
        base = f"/api/v1/sites/{site_id}/requests"
        everything = (await self.api("GET", base)).json()
        paths = [r["path"] for r in everything["items"]]
        self.assertEqual(paths[:3], ["/other", "/search", "/search"])
        self.assertEqual(len(paths), 8)
        self.assertNotIn("/theirs", paths)
        cases = {
            "status=4xx": ["/cart", "/search", "/search", "/search", "/other", "/search"],
            "blocked=true&path=/search": ["/search"] * 4,
            "client=192.0.2.0/24": ["/cart", "/notes", "/"],
            "method=post": ["/cart"],
            "attack_type=sqli&path=/oth": ["/other"],
            f"since={quote((now - timedelta(minutes=45)).isoformat())}&blocked=false":
                ["/notes", "/cart"],
        }
        for query, expected in cases.items():
            reply = await self.api("GET", f"{base}?{query}")
            self.assertEqual(reply.code, 200, reply.text)
            self.assertEqual(sorted(r["path"] for r in reply.json()["items"]), sorted(expected),
                             query)
        seen: list[str] = []
        cursor = None
        while True:
            page = (await self.api("GET", f"{base}?limit=3" + (f"&cursor={cursor}"
                                                                 if cursor else ""))).json()
            seen.extend(r["key"] for r in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        self.assertEqual(seen, [r["key"] for r in everything["items"]])
        for query, field in (("status=abc", "status"), ("client=nope", "client"),
                             ("since=yesterday", "since"), ("path=relative", "path"),
                             ("limit=9999", "limit"), ("cursor=zzz", "cursor")):
            reply = await self.api("GET", f"{base}?{query}")
            self.assertEqual(reply.code, 400, query)
            self.assertEqual(reply.json()["error"]["detail"]["fields"][0]["field"], field)

    async def test_stats(self) -> None:
        """Totals, error rate, latency percentiles, top lists over a range, per bucket."""
        site_id, _, now = await self.seed()
        since = quote((now - timedelta(hours=2)).isoformat())
        reply = await self.api("GET", f"/api/v1/sites/{site_id}/stats?since={since}&bucket=300")
        self.assertEqual(reply.code, 200, reply.text)
        stats = reply.json()
        self.assertEqual(stats["totals"]["requests"], 7)
        self.assertEqual(stats["totals"]["blocked"], 4)
        self.assertEqual(stats["totals"]["client_errors"], 5)
        self.assertEqual(stats["totals"]["error_rate"], 0.0)
        self.assertIsNotNone(stats["totals"]["p95_ms"])
        self.assertEqual(stats["top_paths"][0], {"key": "/search", "requests": 3})
        self.assertEqual(stats["top_attack_types"], [{"key": "sqli", "requests": 4}])
        self.assertEqual(sum(b["requests"] for b in stats["buckets"]), 7)
        default = (await self.api("GET", f"/api/v1/sites/{site_id}/stats")).json()
        self.assertEqual(default["totals"]["requests"], 7)
        bad = await self.api("GET", f"/api/v1/sites/{site_id}/stats?bucket=61")
        self.assertEqual(bad.code, 400)

    async def test_export(self) -> None:
        """
        CSV and JSON exports carry every matching row; CSV cells a
        spreadsheet would take for formulas are neutralised, quotes are
        quoted, and JSON is one valid array.
        """
        site_id, _, _ = await self.seed()
        reply = await self.owner.request(
            "GET", f"/api/v1/sites/{site_id}/requests/export?format=csv&blocked=false")
        self.assertEqual(reply.code, 200, reply.text)
        self.assertEqual(reply.header("content-type"), "text/csv; charset=utf-8")
        self.assertIn("attachment; filename=\"shop.example.com-requests-",
                      reply.header("content-disposition"))
        self.assertEqual(reply.header("x-content-type-options"), "nosniff")
        rows = list(csv.DictReader(io.StringIO(reply.text)))
        self.assertEqual([r["path"] for r in rows], ["/notes", "/cart", "/"])
        self.assertEqual(rows[0]["user_agent"], "'=cmd|' /c calc'!A0")
        self.assertEqual(rows[0]["query"], 'q=<script>alert("x")</script>, "quoted"')
        self.assertIn('"q=<script>alert(""x"")</script>, ""quoted"""', reply.text)
        every = await self.api("GET", f"/api/v1/sites/{site_id}/requests/export?format=json")
        data = json.loads(every.body)
        self.assertEqual(len(data), 8)
        self.assertEqual(data[0]["path"], "/other")
        self.assertEqual(every.header("content-type"), "application/json")
        bad = await self.api("GET", f"/api/v1/sites/{site_id}/requests/export?format=xls")
        self.assertEqual(bad.code, 400)

    async def test_exclusion_from_event(self) -> None:
        """
        A blocked request explained: the rule, its description and what it
        matched, the score against the threshold, the excerpt, and a
        proposed exclusion (rule x path) with the last 7 days' count of
        requests it would have let through; confirmed, it is audited.
        """
        site_id, _, _ = await self.seed()
        listing = (await self.api("GET", f"/api/v1/sites/{site_id}/requests?path=/search"
                                         "&blocked=true")).json()["items"]
        event = next(r for r in listing if r["request_id"] == "r4")
        reply = await self.api("GET", f"/api/v1/sites/{site_id}/requests/{event['key']}")
        self.assertEqual(reply.code, 200, reply.text)
        explained = reply.json()
        self.assertEqual(explained["verdict"]["score"], 5)
        self.assertEqual(explained["verdict"]["threshold"], 5)
        self.assertTrue(explained["verdict"]["blocked"])
        [rule] = explained["rules"]
        self.assertEqual(rule["rule_id"], 3010)
        self.assertIn("UNION SELECT", rule["description"])
        self.assertEqual(rule["severity_name"], "critical")
        self.assertEqual([h["target"] for h in rule["hits"]], ["args:q", "uri"])
        self.assertEqual(explained["analysis"], "complete")
        self.assertIn("Union%20Select%20stuff", explained["excerpt"])
        [proposal] = explained["proposals"]
        self.assertEqual((proposal["rule_id"], proposal["path_prefix"], proposal["target"]),
                         (3010, "/search", None))
        self.assertTrue(proposal["covers_this_request"])
        self.assertTrue(proposal["passes_after"])
        impact = proposal["impact"]
        self.assertEqual((impact["matched"], impact["let_through"], impact["clients"]),
                         (3, 2, 2))
        self.assertFalse(impact["target_counted"])
        narrower = await self.api("GET", f"/api/v1/sites/{site_id}/exclusions/impact"
                                         "?rule_id=3010&path_prefix=/")
        self.assertEqual(narrower.json()["let_through"], 3)
        unknown = await self.api("GET", f"/api/v1/sites/{site_id}/exclusions/impact"
                                        "?rule_id=1")
        self.assertEqual(unknown.code, 400)
        created = await self.api("POST", f"/api/v1/sites/{site_id}/exclusions", {
            "rule_id": 3010, "path_prefix": "/search", "comment": "search box false positive"})
        self.assertEqual(created.code, 201, created.text)
        exclusion = created.json()
        self.assertEqual(exclusion["description"], "rule 3010 under /search")
        again = await self.api("POST", f"/api/v1/sites/{site_id}/exclusions", {
            "rule_id": 3010, "path_prefix": "/search"})
        self.assertEqual((again.code, again.json()["id"]), (200, exclusion["id"]))
        audited = await self.running.audit("waf.exclusion.create")
        self.assertEqual(len(audited), 1)
        self.assertEqual(audited[0][0], self.owner_user.id)
        self.assertEqual(audited[0][2]["exclusion"]["rule"], 3010)
        site_audit = (await self.api("GET", f"/api/v1/sites/{site_id}/audit")).json()["items"]
        self.assertIn("waf.exclusion.create", [e["action"] for e in site_audit])
        missing = await self.api("GET", f"/api/v1/sites/{site_id}/requests/bm90LWEta2V5")
        self.assertEqual((missing.code, missing.json()["error"]["code"]),
                         (404, "request_not_found"))
        theirs = await self.stranger.api("GET", f"/api/v1/sites/{site_id}/requests/"
                                                f"{event['key']}")
        self.assertEqual((theirs.code, theirs.json()["error"]["code"]), (404, "not_found"))


class WafTests(ApiCase):
    """Exclusions and endpoint profiles of a site."""

    async def test_exclusions_and_profiles(self) -> None:
        """Add, list and remove exclusions and profiles; bad values are 422 by field."""
        await self.start()
        site = await self.new_site()
        other = await self.new_site("blog.example.com")
        base = f"/api/v1/sites/{site['id']}"
        bad = await self.api("POST", f"{base}/exclusions", {"rule_id": 942100,
                                                             "attack_class": "sqli"})
        self.assertIn("rule_id", self.fields(bad, 422))
        bad = await self.api("POST", f"{base}/exclusions", {"rule_id": 942100,
                                                             "path_prefix": "search"})
        self.assertIn("path_prefix", self.fields(bad, 422))
        bad = await self.api("POST", f"{base}/exclusions", {"rule_id": 942100,
                                                             "target": "nowhere:x"})
        self.assertIn("target", self.fields(bad, 422))
        made = await self.api("POST", f"{base}/exclusions", {"attack_class": "xss",
                                                              "target": "args:comment"})
        self.assertEqual(made.code, 201, made.text)
        listed = (await self.api("GET", f"{base}/exclusions")).json()["items"]
        self.assertEqual([e["id"] for e in listed], [made.json()["id"]])
        elsewhere = await self.api("DELETE", f"/api/v1/sites/{other['id']}/exclusions/"
                                             f"{made.json()['id']}")
        self.assertEqual(elsewhere.code, 404)
        self.assertEqual((await self.api("DELETE", f"{base}/exclusions/"
                                                   f"{made.json()['id']}")).code, 204)
        self.assertEqual((await self.api("GET", f"{base}/exclusions")).json()["items"], [])
        profile = await self.api("PUT", f"{base}/profiles", {"pattern": "/static/*",
                                                              "mode": "skip"})
        self.assertEqual((profile.code, profile.json()["mode"]), (200, "skip"), profile.text)
        bad = await self.api("PUT", f"{base}/profiles", {"pattern": "/*", "mode": "skip"})
        self.assertIn("pattern", self.fields(bad, 422))
        listed = (await self.api("GET", f"{base}/profiles")).json()["items"]
        self.assertEqual([(p["method"], p["pattern"]) for p in listed], [("*", "/static/*")])
        gone = await self.api("DELETE", f"{base}/profiles?pattern=/static/*")
        self.assertEqual(gone.code, 204, gone.text)
        again = await self.api("DELETE", f"{base}/profiles?pattern=/static/*")
        self.assertEqual((again.code, again.json()["error"]["code"]), (404, "profile_not_found"))


class DecisionsTests(ApiCase):
    """A site's IP decisions."""

    async def test_decisions(self) -> None:
        """Add (validated), list newest first, remove; another site's decision is 404."""
        await self.start()
        site = await self.new_site()
        other = await self.new_site("blog.example.com")
        base = f"/api/v1/sites/{site['id']}/decisions"
        for body, field in (({"target": "10.0.0.1/8", "type": "ban"}, "target"),
                            ({"target": "nope", "type": "ban"}, "target"),
                            ({"target": "10.0.0.1", "type": "nuke"}, "type"),
                            ({"target": "10.0.0.1", "type": "ban", "duration": "soon"},
                             "duration"),
                            ({"target": "10.0.0.1", "type": "ban", "reason": "a\u202eb"},
                             "reason")):
            self.assertIn(field, self.fields(await self.api("POST", base, body), 422), body)
        first = await self.api("POST", base, {"target": "203.0.113.0/24", "type": "block",
                                              "duration": "1h", "reason": "scanner"})
        self.assertEqual(first.code, 201, first.text)
        self.assertEqual((first.json()["target"], first.json()["source"]),
                         ("203.0.113.0/24", "api"))
        second = await self.owner.api("POST", base, {"target": "2001:db8::1", "type": "ban",
                                                      "duration": "forever"})
        self.assertEqual(second.json()["source"], "manual")
        self.assertIsNone(second.json()["expires_at"])
        listed = (await self.api("GET", base)).json()
        self.assertEqual([d["target"] for d in listed["items"]], ["2001:db8::1",
                                                                  "203.0.113.0/24"])
        page = (await self.api("GET", f"{base}?limit=1")).json()
        rest = (await self.api("GET", f"{base}?limit=1&cursor={page['next_cursor']}")).json()
        self.assertEqual([d["id"] for d in page["items"] + rest["items"]],
                         [d["id"] for d in listed["items"]])
        wrong = await self.api("DELETE", f"/api/v1/sites/{other['id']}/decisions/"
                                         f"{first.json()['id']}")
        self.assertEqual((wrong.code, wrong.json()["error"]["code"]), (404, "decision_not_found"))
        self.assertEqual((await self.api("DELETE", f"{base}/{first.json()['id']}")).code, 204)
        self.assertEqual(len((await self.api("GET", base)).json()["items"]), 1)
        self.assertEqual(len(await self.running.audit("decision.create")), 2)
        self.assertEqual(len(await self.running.audit("decision.delete")), 1)


class MembersTests(TestCase):
    """Members, roles and invitations by mail (a real SMTP server on loopback)."""

    timeout = 120

    async def test_invitation_mail_and_roles(self) -> None:
        """
        An owner invites an address: the mail goes out through SMTP with a
        link; the invitation is listed until withdrawn; roles change (audited)
        but never the owner's; a removed member loses the site at once.
        """
        smtp = SmtpServer(Path(self.mktemp()))
        smtp.start()
        self.addCleanup(smtp.stop)
        running = await start_dashboard(self, env=smtp.env())
        owner_user = await running.user("owner@example.com")
        site_id = await running.site(owner_user, "shop.example.com")
        owner = await running.sign_in("owner@example.com")
        base = f"/api/v1/sites/{site_id}"
        arrived = smtp.next_message()
        reply = await owner.api("POST", f"{base}/invitations", {"email": "new@example.com",
                                                                 "role": "admin"})
        self.assertEqual(reply.code, 201, reply.text)
        self.assertTrue(reply.json()["mail_sent"])
        message = await arrived
        self.assertEqual(message.recipients, ["new@example.com"])
        self.assertTrue(message.tls)
        self.assertIn("owner@example.com invited you", message.text)
        self.assertRegex(message.text, running.base + "/invitations/accept\\?" + TOKEN_RE)
        listed = (await owner.api("GET", f"{base}/invitations")).json()["items"]
        self.assertEqual([(i["email"], i["role"], i["state"]) for i in listed],
                         [("new@example.com", "admin", "open")])
        mine = await owner.api("POST", f"{base}/invitations", {"email": "OWNER@example.com",
                                                                "role": "viewer"})
        self.assertEqual(mine.json()["error"]["detail"]["fields"][0]["field"], "email")
        bad = await owner.api("POST", f"{base}/invitations", {"email": "nobody",
                                                               "role": "viewer"})
        self.assertEqual(bad.code, 422)
        gone = await owner.api("DELETE", f"{base}/invitations/{listed[0]['id']}")
        self.assertEqual(gone.code, 204)
        self.assertEqual((await owner.api("GET", f"{base}/invitations")).json()["items"], [])

        viewer_user = await running.user("viewer@example.com")
        await running.add_member(site_id, viewer_user, "viewer")
        viewer = await running.sign_in("viewer@example.com")
        members = (await owner.api("GET", f"{base}/members")).json()["items"]
        self.assertEqual([(m["email"], m["role"], m["owner"]) for m in members],
                         [("owner@example.com", "owner", True),
                          ("viewer@example.com", "viewer", False)])
        self.assertEqual((await viewer.api("GET", f"{base}/members")).code, 403)
        promoted = await owner.api("PATCH", f"{base}/members/{viewer_user.id}",
                                   {"role": "admin"})
        self.assertEqual(promoted.json()["role"], "admin")
        self.assertEqual((await viewer.api("GET", f"{base}/members")).code, 200)
        changes = await running.audit("site.member_role_changed")
        self.assertEqual(changes[0][2]["from"], "viewer")
        self.assertEqual(changes[0][2]["to"], "admin")
        fixed = await owner.api("PATCH", f"{base}/members/{owner_user.id}", {"role": "viewer"})
        self.assertEqual((fixed.code, fixed.json()["error"]["code"]), (409, "owner_role"))
        self.assertEqual((await owner.api("DELETE", f"{base}/members/{viewer_user.id}")).code,
                         204)
        self.assertEqual((await viewer.api("GET", base)).code, 404)
        self.assertEqual(len(await running.audit("site.member_removed")), 1)


class AdminTests(TestCase):
    """Users and the audit log, for global administrators only."""

    timeout = 120

    async def test_users_and_audit(self) -> None:
        """
        An administrator adds a user (password rules apply), disables it (its
        sessions end), and reads the audit log filtered by action; others get 403.
        """
        running = await start_dashboard(self)
        await running.user("root@example.com", admin=True)
        await running.user("someone@example.com")
        root = await running.sign_in("root@example.com")
        someone = await running.sign_in("someone@example.com")
        self.assertEqual((await someone.api("GET", "/api/v1/audit")).code, 403)
        self.assertEqual((await someone.api("GET", "/api/v1/users")).code, 403)
        weak = await root.api("POST", "/api/v1/users", {"email": "new@example.com",
                                                        "password": "password1234"})
        self.assertEqual(weak.json()["error"]["detail"]["fields"][0]["field"], "password")
        made = await root.api("POST", "/api/v1/users", {"email": "new@example.com",
                                                        "password": PASSWORD})
        self.assertEqual(made.code, 201, made.text)
        self.assertTrue(made.json()["has_password"])
        dup = await root.api("POST", "/api/v1/users", {"email": "NEW@example.com"})
        self.assertEqual(dup.code, 409)
        fresh = await running.sign_in("new@example.com")
        self.assertEqual((await fresh.api("GET", "/api/v1/me")).code, 200)
        off = await root.api("POST", f"/api/v1/users/{made.json()['id']}/disable")
        self.assertTrue(off.json()["disabled"])
        self.assertEqual((await fresh.api("GET", "/api/v1/me")).code, 401)
        me = (await root.api("GET", "/api/v1/me")).json()["id"]
        self.assertEqual((await root.api("POST", f"/api/v1/users/{me}/disable")).code, 409)
        log = (await root.api("GET", "/api/v1/audit?action=user.")).json()["items"]
        self.assertEqual([(e["action"], e["actor"], e["target_id"]) for e in log[:2]],
                         [("user.disable", "root@example.com", made.json()["id"]),
                          ("user.create", "root@example.com", made.json()["id"])])
        self.assertEqual({e["action"] for e in log}, {"user.disable", "user.create"})
        page = (await root.api("GET", "/api/v1/audit?limit=2")).json()
        following = (await root.api("GET", f"/api/v1/audit?limit=2&cursor="
                                           f"{page['next_cursor']}")).json()
        self.assertLess(following["items"][0]["id"], page["items"][-1]["id"])
        self.assertEqual((await root.api("GET", f"/api/v1/users/{uuid.uuid4()}/disable")).code,
                         405)

"""
The dashboard's pages as a browser without JavaScript uses them: plain
GET links and POST forms with the CSRF token, over real HTTP on loopback,
against a real PostgreSQL (and a loopback DNS server, and the mail outbox).
Attack payloads shown on the pages are escaped; no page carries inline
script or style, or loads anything from elsewhere.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID

from twisted.trial.unittest import TestCase

from tests.integration.test_dashboard_api import blocked, log_row
from tests.integration.test_logquery import write
from tests.support import dns_server
from tests.support.dashboard import PASSWORD, Browser, Reply, Running, start_dashboard

PAYLOAD = "<script>alert('pwned')</script>"


def assert_clean(testcase: TestCase, reply: Reply, where: str) -> None:
    """No inline script or style, nothing from another origin, the payload escaped."""
    text = reply.text
    testcase.assertNotRegex(text, r"(src|href|action)=\"(https?:)?//", where)
    testcase.assertNotRegex(text, r"<script(?![^>]*\bsrc=)", where)
    testcase.assertNotIn("<style", text, where)
    testcase.assertNotIn(" style=", text, where)
    testcase.assertNotRegex(text, r" on[a-z]+=", where)
    testcase.assertNotIn(PAYLOAD, text, where)


class PagesCase(TestCase):
    """An owner signed in, with a site."""

    timeout = 120

    async def start(self, env: dict[str, str] | None = None) -> None:
        self.running: Running = await start_dashboard(self, env=env)
        self.owner_user = await self.running.user("owner@example.com")
        self.owner: Browser = await self.running.sign_in("owner@example.com")

    async def page(self, browser: Browser, path: str, status: int = 200) -> Reply:
        reply = await browser.get(path)
        self.assertEqual(reply.code, status, f"{path}: {reply.text[:2000]}")
        assert_clean(self, reply, path)
        return reply


class WizardTests(PagesCase):
    """Adding a site from the browser, and checking its DNS."""

    async def test_add_site_and_check(self) -> None:
        """
        The wizard proposes the origin from DNS, creates the site, shows the
        records to create with the token; "Check now" reports what is wrong
        in words, then turns the site active once the records exist.
        """
        server = dns_server.dns_server_for(self)
        world = server.world
        world.add_zone("test")
        world.add("shop.test", dns_server.a("203.0.113.9"))
        world.add("edge.veil.test", dns_server.a("198.51.100.1"))
        await self.start({"VEIL_DNS_RESOLVERS": server.address, "VEIL_DNS_TIMEOUT": "2"})
        home = await self.page(self.owner, "/")
        self.assertIn("No sites yet", home.text)
        self.assertIn('href="/sites/new"', home.text)
        await self.page(self.owner, "/sites/new")
        bad = await self.owner.form("/sites/new", {"domain": "not a domain", "origin": ""})
        self.assertEqual(bad.code, 422)
        self.assertIn("is not a valid domain name", bad.text)
        step2 = await self.owner.form("/sites/new", {"domain": "Shop.Test", "origin": ""})
        self.assertEqual(step2.code, 200, step2.text)
        self.assertIn("A 203.0.113.9", step2.text)
        self.assertIn('value="http://203.0.113.9"', step2.text)
        refused = await self.owner.form("/sites/new", {"domain": "shop.test",
                                                       "origin": "http://169.254.169.254"})
        self.assertEqual(refused.code, 422)
        self.assertIn("link-local", refused.text)
        created = await self.owner.form("/sites/new", {"domain": "shop.test",
                                                       "origin": "http://203.0.113.9"})
        self.assertEqual(created.code, 303, created.text)
        location = created.header("location")
        site_id = re.fullmatch(r"/sites/([0-9a-f-]{36})/dns", location).group(1)
        dns = await self.page(self.owner, location)
        token = re.search(r'id="record-value-2">([0-9a-f]{32})<', dns.text).group(1)
        self.assertIn(">edge.veil.test<", dns.text)
        self.assertIn(">_veil.shop.test<", dns.text)
        self.assertIn("Waiting for DNS", dns.text)
        checked = await self.owner.form(f"/sites/{site_id}/verify", {})
        self.assertEqual(checked.code, 200, checked.text)
        self.assertIn("Not yet:", checked.text)
        self.assertIn("There is no TXT record at _veil.shop.test", checked.text)
        again = await self.owner.form(f"/sites/{site_id}/verify", {})
        self.assertEqual(again.code, 429)
        self.assertIn("checked moments ago", again.text)
        world.set("shop.test", dns_server.cname("edge.veil.test"))
        world.add("_veil.shop.test", dns_server.txt(token))
        await self.running.db.query("test.rewind", "UPDATE site_dns_checks SET"
                                    " last_manual_at = last_manual_at - interval '1 minute'")
        active = await self.owner.form(f"/sites/{site_id}/verify", {})
        self.assertEqual(active.code, 200, active.text)
        self.assertIn("shop.test is verified and active", active.text)
        self.assertIn('<span class="badge status-active">active</span>', active.text)
        listed = await self.page(self.owner, "/")
        self.assertIn(f'href="/sites/{site_id}"', listed.text)


class TrafficPageTests(PagesCase):
    """The overview, the explorer and "why was this blocked"."""

    async def seed(self) -> UUID:
        await self.start()
        site_id = await self.running.site(self.owner_user, "shop.example.com")
        now = datetime.now(UTC).replace(microsecond=0)
        write(self.running.conninfo, [
            log_row(now - timedelta(minutes=9), site_id, 1, path="/", status=200),
            log_row(now - timedelta(minutes=8), site_id, 2, path=f"/p/{PAYLOAD}",
                    query=f"x={PAYLOAD}", user_agent=PAYLOAD, status=404),
            blocked(now - timedelta(minutes=7), site_id, 3, "/search",
                    "q=Union%20Select%20stuff", (3010,), 5),
            blocked(now - timedelta(minutes=6), site_id, 4, "/search",
                    "q=Union%20Select%20other", (3010,), 5, client="198.51.100.9"),
        ])
        return site_id

    async def test_overview(self) -> None:
        """Counters, an SVG chart, top lists and the latest rows, payloads escaped."""
        site_id = await self.seed()
        reply = await self.page(self.owner, f"/sites/{site_id}")
        text = reply.text
        self.assertIn('id="count-requests">4<', text)
        self.assertIn('id="count-blocked">2<', text)
        self.assertIn('<svg viewBox="0 0 720 160"', text)
        self.assertIn('class="bar-block"', text)
        self.assertIn(f'data-stream="/api/v1/stream?site_id={site_id}"', text)
        self.assertIn("&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;", text)
        self.assertIn('<meter min="0" max="1" value="1.000"', text)
        for name in ("1h", "7d"):
            await self.page(self.owner, f"/sites/{site_id}?range={name}")
        self.assertEqual((await self.owner.get(f"/sites/{site_id}?range=1y")).code, 400)

    async def test_explorer(self) -> None:
        """Filters in the URL, each row linked to its detail; a bad filter is explained."""
        site_id = await self.seed()
        reply = await self.page(self.owner, f"/sites/{site_id}/requests?blocked=true")
        self.assertEqual(reply.text.count('class="row-blocked"'), 2)
        self.assertIn('value="true" selected', reply.text)
        self.assertIn(f"/api/v1/sites/{site_id}/requests/export?blocked=true&amp;format=csv",
                      reply.text)
        bad = await self.owner.get(f"/sites/{site_id}/requests?client=nope")
        self.assertEqual(bad.code, 400)
        self.assertIn("expected an IP address or a network", bad.text)
        everything = await self.page(self.owner, f"/sites/{site_id}/requests")
        self.assertIn("&lt;script&gt;", everything.text)

    async def test_why_blocked_and_exclude(self) -> None:
        """
        The detail explains the block (rule, description, what it matched,
        score against threshold, excerpt) and proposes an exclusion with its
        7-day count; the proposal can be edited and counted again, then
        created (audited) and listed on the WAF page.
        """
        site_id = await self.seed()
        listing = await self.page(self.owner, f"/sites/{site_id}/requests?blocked=true")
        key = re.search(rf'href="/sites/{site_id}/requests/([A-Za-z0-9_-]+)"',
                        listing.text).group(1)
        detail = await self.page(self.owner, f"/sites/{site_id}/requests/{key}")
        text = detail.text
        self.assertIn("Why it was blocked", text)
        self.assertIn("UNION SELECT", text)
        self.assertIn("<code>args:q</code>", text)
        self.assertIn("Anomaly score <strong>5</strong> against the site's threshold"
                      " <strong>5</strong>", text)
        self.assertIn("<strong>2</strong> of the last 7 days' requests would have been let"
                      " through", text)
        self.assertIn("GET /search?q=Union%20Select", text)
        narrower = await self.page(self.owner, f"/sites/{site_id}/requests/{key}?rule=3010"
                                               f"&path={quote('/search')}&target=args:q")
        self.assertIn("would not cover every part", narrower.text)
        self.assertIn('<option value="args:q" selected>', narrower.text)
        wrong = await self.page(self.owner, f"/sites/{site_id}/requests/{key}?rule=3010"
                                            "&path=nope")
        self.assertIn("must start with /", wrong.text)
        made = await self.owner.form(f"/sites/{site_id}/exclusions", {
            "rule_id": "3010", "path_prefix": "/search", "target": "",
            "comment": f"search box {PAYLOAD}", "back": f"/sites/{site_id}/requests/{key}"})
        self.assertEqual(made.code, 303, made.text)
        self.assertIn("done=excluded", made.header("location"))
        back = await self.page(self.owner, made.header("location"))
        self.assertIn("is in force on every Veil process", back.text)
        waf = await self.page(self.owner, f"/sites/{site_id}/waf")
        self.assertIn("rule <code>3010</code>", waf.text)
        self.assertIn("search box &lt;script&gt;", waf.text)
        self.assertEqual(len(await self.running.audit("waf.exclusion.create")), 1)
        removed = await self.owner.form(re.search(r'action="(/sites/[^"]+/remove)"',
                                                  waf.text).group(1), {})
        self.assertEqual(removed.code, 303)
        self.assertIn("No exclusions", (await self.page(self.owner, f"/sites/{site_id}/waf")).text)


    async def test_outcome_is_the_rows(self) -> None:
        """
        The explanation says what happened to the request as logged: a request
        blocked before the site went to monitor mode still reads as blocked,
        and a monitored one as logged, not blocked.
        """
        site_id = await self.seed()
        now = datetime.now(UTC).replace(microsecond=0)
        watched = blocked(now - timedelta(minutes=5), site_id, 5, "/watched",
                          "q=Union%20Select%20stuff", (3010,), 5)._replace(status=200,
                                                                           blocked=False)
        write(self.running.conninfo, [watched])
        await self.running.db.query("test.mode", "UPDATE sites SET mode = 'monitor'"
                                    " WHERE id = %s", (site_id,))
        listing = await self.page(self.owner, f"/sites/{site_id}/requests?attack_type=sqli")
        texts = {}
        for key in set(re.findall(rf'href="/sites/{site_id}/requests/([A-Za-z0-9_-]+)"',
                                  listing.text)):
            text = (await self.page(self.owner, f"/sites/{site_id}/requests/{key}")).text
            why = re.search(r'<section class="card" id="why">.*?</section>', text, re.S).group(0)
            texts["/watched" if "GET /watched" in text else "/search"] = why
        self.assertEqual(sorted(texts), ["/search", "/watched"])
        self.assertIn("Why it was blocked", texts["/search"])
        self.assertIn("and it was blocked", texts["/search"])
        self.assertNotIn("not blocked", texts["/search"])
        self.assertIn("Why it would have been blocked", texts["/watched"])
        self.assertIn("it was logged, not blocked (the site was in monitor mode)",
                      texts["/watched"])


class ManagementPageTests(PagesCase):
    """Decisions, settings, members and invitations, activity, administration."""

    async def test_decisions_and_settings(self) -> None:
        """Forms add and remove decisions and save settings; invalid input is shown, not saved."""
        await self.start()
        site_id = await self.running.site(self.owner_user, "shop.example.com")
        base = f"/sites/{site_id}"
        await self.page(self.owner, f"{base}/decisions")
        bad = await self.owner.form(f"{base}/decisions", {"target": "10.0.0.1/8",
                                                          "type": "block", "duration": "1h",
                                                          "reason": ""})
        self.assertEqual(bad.code, 422)
        self.assertIn("host bits set", bad.text)
        added = await self.owner.form(f"{base}/decisions", {
            "target": "203.0.113.7", "type": "ban", "duration": "24h", "reason": PAYLOAD})
        self.assertEqual(added.code, 303)
        listed = await self.page(self.owner, f"{base}/decisions?done=added")
        self.assertIn("<code>203.0.113.7</code>", listed.text)
        removal = re.search(r'action="(/sites/[^"]+/decisions/[^"]+/remove)"', listed.text)
        self.assertEqual((await self.owner.form(removal.group(1), {})).code, 303)
        self.assertIn("No decisions", (await self.page(self.owner, f"{base}/decisions")).text)

        settings = await self.page(self.owner, f"{base}/settings")
        self.assertIn('value="http://127.0.0.1:9"', settings.text)
        form = {"origin": "http://192.0.2.20:8080", "mode": "monitor", "paranoia": "2",
                "threshold": "10", "inspect_body_limit": "32k", "body_overflow": "block",
                "max_body_size": "10M", "allow_plain_http": "on", "origin_tls_verify": "on"}
        saved = await self.owner.form(f"{base}/settings", form)
        self.assertEqual(saved.code, 303, saved.text)
        site = await self.running.dashboard.services.sites.detail(site_id)
        self.assertEqual((site.upstream, site.mode, site.paranoia, site.threshold,
                          site.inspect_body_limit, site.body_overflow, site.max_body_size,
                          site.allow_plain_http, site.maintenance),
                         ("http://192.0.2.20:8080", "monitor", 2, 10, 32768, "block",
                          10 << 20, True, False))
        wrong = await self.owner.form(f"{base}/settings", {**form, "threshold": "0",
                                                           "max_body_size": "lots",
                                                           "origin": "http://[fe80::1]"})
        self.assertEqual(wrong.code, 422)
        for message in ("Give a whole number from 1 to 1000", "Give a number of bytes",
                        "link-local"):
            self.assertIn(message, wrong.text)
        self.assertEqual((await self.running.dashboard.services.sites.detail(site_id)).threshold,
                         10)
        keep = await self.owner.form(f"{base}/delete", {"confirm": "other.example.com"})
        self.assertEqual(keep.code, 422)
        gone = await self.owner.form(f"{base}/delete", {"confirm": "shop.example.com"})
        self.assertEqual((gone.code, gone.header("location")), (303, "/?done=site_removed"))

    async def test_invitation_to_a_new_account(self) -> None:
        """
        The owner invites an address (the mail lands in the outbox); its
        link's page consumes nothing when opened; the invitee creates an
        account there and lands on the site as its role; the link is spent.
        """
        await self.start()
        site_id = await self.running.site(self.owner_user, "shop.example.com")
        invited = await self.owner.form(f"/sites/{site_id}/invitations",
                                        {"email": "new@example.com", "role": "admin"})
        self.assertEqual(invited.code, 303, invited.text)
        outbox = Path(self.running.config.data_dir) / "outbox"
        await self.running.accounts.background()
        mails = list(outbox.glob("*.eml"))
        self.assertEqual(len(mails), 1)
        link = re.search(r"(/invitations/accept\?token=[A-Za-z0-9_-]{43})",
                         mails[0].read_text()).group(1)
        members = await self.page(self.owner, f"/sites/{site_id}/members")
        self.assertIn("new@example.com", members.text)
        stranger = self.running.browser()
        page = await self.page(stranger, link)
        self.assertEqual(page.header("referrer-policy"), "no-referrer")
        self.assertIn("Create account and join", page.text)
        page = await self.page(stranger, link)   # opening it twice consumes nothing
        token = link.rpartition("=")[2]
        weak = await stranger.form("/invitations/join", {"token": token, "password": "short",
                                                         "password_confirm": "short"})
        self.assertEqual(weak.code, 422)
        joined = await stranger.form("/invitations/join", {
            "token": token, "password": PASSWORD, "password_confirm": PASSWORD})
        self.assertEqual((joined.code, joined.header("location")), (303, f"/sites/{site_id}"))
        site = await self.page(stranger, f"/sites/{site_id}")
        self.assertIn("your role: admin", site.text)
        spent = await self.running.browser().get(link)
        self.assertEqual(spent.code, 400)
        self.assertIn("accepted already", spent.text)
        self.assertEqual(len(await self.running.audit("site.invitation_accepted")), 1)

    async def test_invitation_to_an_existing_account(self) -> None:
        """An existing account accepts signed in; signed in as someone else, it is refused."""
        await self.start()
        site_id = await self.running.site(self.owner_user, "shop.example.com")
        await self.running.user("friend@example.com")
        await self.owner.form(f"/sites/{site_id}/invitations", {"email": "friend@example.com",
                                                                "role": "viewer"})
        await self.running.accounts.background()
        outbox = Path(self.running.config.data_dir) / "outbox"
        link = re.search(r"(/invitations/accept\?token=[A-Za-z0-9_-]{43})",
                         next(outbox.glob("*.eml")).read_text()).group(1)
        token = link.rpartition("=")[2]
        anonymous = await self.page(self.running.browser(), link)
        self.assertIn("Sign in as friend@example.com", anonymous.text)
        other = await self.page(self.owner, link)
        self.assertIn("You are signed in as owner@example.com", other.text)
        refused = await self.owner.form("/invitations/accept", {"token": token})
        self.assertEqual(refused.code, 400)
        self.assertIn("for another e-mail address", refused.text)
        friend = await self.running.sign_in("friend@example.com")
        page = await self.page(friend, link)
        self.assertIn("Accept the invitation", page.text)
        accepted = await friend.form("/invitations/accept", {"token": token})
        self.assertEqual((accepted.code, accepted.header("location")), (303, f"/sites/{site_id}"))
        self.assertIn("your role: viewer", (await self.page(friend, f"/sites/{site_id}")).text)
        self.assertEqual((await friend.get(f"/sites/{site_id}/members")).code, 403)

    async def test_members_page(self) -> None:
        """The owner changes a role and removes a member; the owner's row has no controls."""
        await self.start()
        site_id = await self.running.site(self.owner_user, "shop.example.com")
        viewer = await self.running.user("viewer@example.com")
        await self.running.add_member(site_id, viewer, "viewer")
        page = await self.page(self.owner, f"/sites/{site_id}/members")
        self.assertNotIn(f"/members/{self.owner_user.id}/role", page.text)
        changed = await self.owner.form(f"/sites/{site_id}/members/{viewer.id}/role",
                                        {"role": "admin"})
        self.assertEqual(changed.code, 303)
        removed = await self.owner.form(f"/sites/{site_id}/members/{viewer.id}/remove", {})
        self.assertEqual(removed.code, 303)
        page = await self.page(self.owner, f"/sites/{site_id}/members?done=removed")
        self.assertNotIn("viewer@example.com", page.text)
        activity = await self.page(self.owner, f"/sites/{site_id}/activity")
        self.assertIn("site.member_removed", activity.text)
        self.assertIn("site.member_role_changed", activity.text)

    async def test_admin_pages(self) -> None:
        """Administrators add and disable users and read the audit log; others get 403."""
        await self.start()
        await self.running.user("root@example.com", admin=True)
        root = await self.running.sign_in("root@example.com")
        self.assertEqual((await self.owner.get("/admin/users")).code, 403)
        self.assertEqual((await self.owner.get("/admin/audit")).code, 403)
        users = await self.page(root, "/admin/users")
        self.assertIn("owner@example.com", users.text)
        self.assertIn('href="/admin/audit"', users.text)
        added = await root.form("/admin/users", {"email": "new@example.com", "password": ""})
        self.assertEqual(added.code, 303, added.text)
        dup = await root.form("/admin/users", {"email": "new@example.com", "password": ""})
        self.assertEqual(dup.code, 409)
        disable = re.search(rf'action="(/admin/users/{self.owner_user.id}/disable)"',
                            (await self.page(root, "/admin/users")).text).group(1)
        self.assertEqual((await root.form(disable, {})).code, 303)
        self.assertEqual((await self.owner.get("/")).code, 303)
        audit = await self.page(root, "/admin/audit?action=user.")
        self.assertIn("user.disable", audit.text)
        self.assertNotIn("auth.sign_in<", audit.text)


class EveryPageTests(PagesCase):
    """Every page a member can open renders cleanly, for each role."""

    async def test_every_page(self) -> None:
        """Each site page answers 200 to an owner and a viewer, or 403 where it needs more."""
        await self.start()
        site_id = await self.running.site(self.owner_user, "shop.example.com")
        viewer = await self.running.user("viewer@example.com")
        await self.running.add_member(site_id, viewer, "viewer")
        viewing = await self.running.sign_in("viewer@example.com")
        pages: list[tuple[str, str]] = [
            ("/", "viewer"), ("/sites/new", "viewer"), (f"/sites/{site_id}", "viewer"),
            (f"/sites/{site_id}/requests", "viewer"), (f"/sites/{site_id}/dns", "viewer"),
            (f"/sites/{site_id}/decisions", "viewer"), (f"/sites/{site_id}/waf", "viewer"),
            (f"/sites/{site_id}/settings", "admin"), (f"/sites/{site_id}/members", "admin"),
            (f"/sites/{site_id}/activity", "admin"), ("/account", "viewer")]
        for path, needs in pages:
            await self.page(self.owner, path)
            reply: Any = await viewing.get(path)
            self.assertEqual(reply.code, 200 if needs == "viewer" else 403, path)
            assert_clean(self, reply, path)

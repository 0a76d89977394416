"""
Signing in without GitHub, over real HTTP with a real PostgreSQL: the
password form, the first-run setup link, and magic links (the
confirmation page, single use, expiry, the requesting browser only, the
outbox when no mail server is configured, and a real SMTP server with
STARTTLS and AUTH on loopback).
"""

from __future__ import annotations

import email
import re
from pathlib import Path

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.integration.test_dashboard_sessions import _cookie
from tests.support.dashboard import PASSWORD, Browser, Running, start_dashboard
from tests.support.smtp import SmtpServer
from veil.auth.accounts import Client

LINK = re.compile(r"(http://127\.0\.0\.1:\d+)(/login/magic\?token=[A-Za-z0-9_-]{43})")
SETUP = re.compile(r"/setup\?token=[A-Za-z0-9_-]{43}")


class PasswordTests(TestCase):
    """The sign-in page and its form."""

    timeout = 60

    async def test_login_page(self) -> None:
        """The page has an e-mail field, a password field and a submit button."""
        running = await start_dashboard(self)
        page = await running.browser().get("/login")
        self.assertEqual(page.code, 200)
        self.assertRegex(page.text, r'<input id="email" name="email" type="email"')
        self.assertRegex(page.text, r'<input id="password" name="password" type="password"')
        self.assertRegex(page.text, r'<button type="submit"[^>]*>Sign in</button>')
        self.assertIn("E-mail me a sign-in link", page.text)
        self.assertNotIn("Sign in with GitHub", page.text)

    async def test_wrong_and_unknown_alike(self) -> None:
        """A wrong password and an unknown address get the same answer."""
        running = await start_dashboard(self)
        await running.user("lin@example.com")
        browser = running.browser()
        await browser.get("/login")
        wrong = await browser.form("/login", {"email": "lin@example.com", "password": "x" * 14})
        unknown = await browser.form("/login", {"email": "nobody@example.com",
                                                "password": "x" * 14})
        self.assertEqual((wrong.code, unknown.code), (401, 401))
        strip = re.compile(r'(csrf-token" content|csrf_token" value)="[^"]*"|<code>[0-9a-f]{32}'
                           r'</code>|value="[^"]*@example.com"|email=[a-z]+%40example.com')
        self.assertEqual(strip.sub("", wrong.text), strip.sub("", unknown.text))

    async def test_next(self) -> None:
        """After signing in the browser goes where it was going, on this site only."""
        running = await start_dashboard(self)
        await running.user("lin@example.com")
        browser = running.browser()
        await browser.get("/login?next=/account")
        reply = await browser.form("/login", {"email": "lin@example.com", "password": PASSWORD,
                                              "next": "/account"})
        self.assertEqual(reply.header("location"), "/account")
        other = running.browser()
        await other.get("/login")
        reply = await other.form("/login", {"email": "lin@example.com", "password": PASSWORD,
                                            "next": "//evil.example/"})
        self.assertEqual(reply.header("location"), "/")

    async def test_change_password(self) -> None:
        """Changing the password needs the current one and ends the other sessions."""
        running = await start_dashboard(self)
        await running.user("lin@example.com")
        first = await running.sign_in("lin@example.com")
        second = await running.sign_in("lin@example.com")
        new = "a brand new passphrase"
        wrong = await first.form("/account/password", {"current": "nope" * 4, "new": new,
                                                       "confirm": new, "end_others": "on"})
        self.assertEqual(wrong.code, 403)
        weak = await first.form("/account/password", {"current": PASSWORD, "new": "password1234",
                                                      "confirm": "password1234"})
        self.assertEqual(weak.code, 422)
        self.assertIn("too common", weak.text)
        ok = await first.form("/account/password", {"current": PASSWORD, "new": new,
                                                     "confirm": new, "end_others": "on"})
        self.assertEqual((ok.code, ok.header("location")), (303, "/account?done=password_changed"))
        self.assertEqual((await first.api("GET", "/api/v1/me")).code, 200)
        self.assertEqual((await second.api("GET", "/api/v1/me")).code, 401)
        await running.sign_in("lin@example.com", new)
        self.assertEqual(len(await running.audit("auth.password_changed")), 1)


    async def test_first_password(self) -> None:
        """
        An account without a password sets one without a current password,
        within ten minutes of signing in; later it must sign in again first.
        """
        running = await start_dashboard(self)
        user = await running.user("nopass@example.com", password=None)
        grant = await running.accounts.grant(user, "magic_link", Client("127.0.0.1"))
        browser = running.browser()
        browser.cookies.set_cookie(_cookie("veil_session", grant.token))
        page = await browser.get("/account")
        self.assertIn("Set a password", page.text)
        self.assertNotIn('name="current"', page.text)
        running.clock.advance(11 * 60)
        late = await browser.form("/account/password", {"new": PASSWORD, "confirm": PASSWORD})
        self.assertEqual(late.code, 403)
        self.assertIn("Sign out and in again", late.text)
        fresh = await running.accounts.grant(user, "magic_link", Client("127.0.0.1"))
        browser = running.browser()
        browser.cookies.set_cookie(_cookie("veil_session", fresh.token))
        await browser.get("/account")
        ok = await browser.form("/account/password", {"new": PASSWORD, "confirm": PASSWORD})
        self.assertEqual(ok.code, 303)
        await running.sign_in("nopass@example.com")


class SetupTests(TestCase):
    """The one-time setup link creates the first administrator."""

    timeout = 60

    async def _link(self, running: Running) -> str:
        url = await running.accounts.create_setup_link()
        self.assertIsNotNone(url)
        return SETUP.search(url).group(0)

    async def test_first_administrator(self) -> None:
        """The link's page creates an administrator and signs it in; the link then is done."""
        running = await start_dashboard(self)
        path = await self._link(running)
        browser = running.browser()
        page = await browser.get(path)
        self.assertEqual(page.code, 200)
        self.assertEqual(page.header("referrer-policy"), "no-referrer")
        token = path.rpartition("=")[2]
        reply = await browser.form("/setup", {"token": token, "email": "root@example.com",
                                              "password": PASSWORD, "password_confirm": PASSWORD})
        self.assertEqual((reply.code, reply.header("location")), (303, "/"))
        me = (await browser.api("GET", "/api/v1/me")).json()
        self.assertEqual((me["email"], me["admin"]), ("root@example.com", True))
        again = await running.browser().get(path)
        self.assertEqual(again.code, 400)
        self.assertIn("already has an administrator", again.text)
        replay = running.browser()
        await replay.get("/login")
        reply = await replay.form("/setup", {"token": token, "email": "evil@example.com",
                                             "password": PASSWORD, "password_confirm": PASSWORD})
        self.assertEqual(reply.code, 400)
        self.assertIsNone(await running.accounts.create_setup_link())
        [row] = await running.audit("auth.setup_used")
        self.assertEqual(row[3], "127.0.0.1")

    async def test_expired(self) -> None:
        """After an hour the link is refused."""
        running = await start_dashboard(self)
        path = await self._link(running)
        running.clock.advance(3601)
        browser = running.browser()
        page = await browser.get(path)
        self.assertEqual(page.code, 400)
        self.assertIn("expired", page.text)
        reply = await browser.form("/setup", {"token": path.rpartition("=")[2],
                                              "email": "root@example.com", "password": PASSWORD,
                                              "password_confirm": PASSWORD})
        self.assertEqual(reply.code, 400)
        self.assertEqual(await running.accounts.store.count_accounts(), 0)

    async def test_bad_input(self) -> None:
        """Weak or mismatched passwords and bad addresses show the form again; nothing is used."""
        running = await start_dashboard(self)
        path = await self._link(running)
        token = path.rpartition("=")[2]
        browser = running.browser()
        await browser.get(path)
        for fields, message in (
            ({"email": "root@example.com", "password": "short", "password_confirm": "short"},
             "at least 12"),
            ({"email": "root@example.com", "password": PASSWORD, "password_confirm": "other" * 3},
             "differ"),
            ({"email": "root@", "password": PASSWORD, "password_confirm": PASSWORD},
             "e-mail address like"),
            ({"email": "Operator@veil.invalid", "password": PASSWORD,
              "password_confirm": PASSWORD}, "reserved"),
        ):
            reply = await browser.form("/setup", {"token": token, **fields})
            self.assertEqual(reply.code, 422, fields)
            self.assertIn(message, reply.text)
        self.assertEqual(await running.accounts.store.count_accounts(), 0)
        self.assertEqual((await browser.get(path)).code, 200)

    async def test_not_when_accounts_exist(self) -> None:
        """With an account, there is no setup link; the command line's operator does not count."""
        running = await start_dashboard(self)
        await running.operator()
        self.assertIsNotNone(await running.accounts.create_setup_link())
        await running.user("someone@example.com")
        self.assertIsNone(await running.accounts.create_setup_link())


class MagicLinkTests(TestCase):
    """Sign-in links by e-mail: the outbox, the confirmation page, single use, expiry."""

    timeout = 60

    async def _ask(self, running: Running, address: str = "mo@example.com") -> Browser:
        browser = running.browser()
        await browser.get("/login/link")
        reply = await browser.form("/login/link", {"email": address})
        self.assertEqual(reply.code, 200)
        self.assertIn("Check your mail", reply.text)
        await running.accounts.background()
        return browser

    def _outbox(self, running: Running) -> list[Path]:
        outbox = running.config.data_dir / "outbox"
        return sorted(outbox.glob("*.eml")) if outbox.exists() else []

    async def test_outbox(self) -> None:
        """With no mail server the message is an .eml file (0600); the log names the file only."""
        running = await start_dashboard(self)
        await running.user("mo@example.com")
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await self._ask(running)
        [path] = self._outbox(running)
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)
        message = email.message_from_bytes(path.read_bytes())
        self.assertEqual(message["To"], "mo@example.com")
        self.assertEqual(message["Subject"], "Your Veil sign-in link")
        self.assertIsNotNone(LINK.search(message.get_payload()))
        texts = [formatEvent(e) for e in events]
        self.assertTrue(any(str(path) in t for t in texts))
        self.assertFalse(any("mo@example.com" in t for t in texts))
        self.assertFalse(any("token=" in t for t in texts))

    async def test_confirm_single_use(self) -> None:
        """GET and HEAD consume nothing; the POST signs in once; a second POST is refused."""
        running = await start_dashboard(self)
        await running.user("mo@example.com")
        browser = await self._ask(running)
        [path] = self._outbox(running)
        link = LINK.search(email.message_from_bytes(path.read_bytes()).get_payload()).group(2)
        for method in ("GET", "GET", "HEAD"):
            page = await browser.request(method, link)
            self.assertEqual(page.code, 200)
            self.assertEqual(page.header("referrer-policy"), "no-referrer")
        self.assertIn("Continue", (await browser.get(link)).text)
        token = link.rpartition("=")[2]
        reply = await browser.form("/login/magic", {"token": token})
        self.assertEqual((reply.code, reply.header("location")), (303, "/"))
        self.assertEqual((await browser.api("GET", "/api/v1/me")).json()["email"], "mo@example.com")
        again = running.browser()
        await again.get(link)
        self.assertEqual((await again.get(link)).code, 400)
        await browser.get(link)
        second = await browser.form("/login/magic", {"token": token})
        self.assertEqual(second.code, 400)
        self.assertIn("used already", second.text)

    async def test_expiry(self) -> None:
        """After 10 minutes the link is refused."""
        running = await start_dashboard(self)
        await running.user("mo@example.com")
        browser = await self._ask(running)
        [path] = self._outbox(running)
        token = LINK.search(path.read_text()).group(2).rpartition("=")[2]
        running.clock.advance(601)
        page = await browser.get(f"/login/magic?token={token}")
        self.assertEqual(page.code, 400)
        self.assertIn("expired", page.text)
        reply = await browser.form("/login/magic", {"token": token})
        self.assertEqual(reply.code, 400)

    async def test_other_browser(self) -> None:
        """
        Another browser (a mail scanner that submits forms, a leaked link)
        cannot use the link, and does not spend it.
        """
        running = await start_dashboard(self)
        await running.user("mo@example.com")
        browser = await self._ask(running)
        [path] = self._outbox(running)
        link = LINK.search(path.read_text()).group(2)
        token = link.rpartition("=")[2]
        scanner = running.browser()
        await scanner.get(link)
        reply = await scanner.form("/login/magic", {"token": token})
        self.assertEqual(reply.code, 403)
        self.assertIn("only in the browser where you asked", reply.text)
        self.assertIsNone(scanner.cookie("veil_session"))
        await browser.get(link)
        self.assertEqual((await browser.form("/login/magic", {"token": token})).code, 303)

    async def test_concurrent_use(self) -> None:
        """Sixteen simultaneous uses of one link: exactly one signs in."""
        running = await start_dashboard(self)
        await running.user("mo@example.com")
        browser = await self._ask(running)
        [path] = self._outbox(running)
        link = LINK.search(path.read_text()).group(2)
        await browser.get(link)
        token = link.rpartition("=")[2]
        replies = await gatherResults([
            Deferred.fromCoroutine(browser.form("/login/magic", {"token": token}))
            for _ in range(16)])
        self.assertEqual(sorted(r.code for r in replies), [303] + [400] * 15)

    async def test_unknown_and_disabled(self) -> None:
        """Unknown addresses get the same answer and no mail; so do disabled accounts."""
        running = await start_dashboard(self)
        await running.user("off@example.com")
        await running.accounts.store.disable_user("off@example.com", None, running.accounts.now())
        known = await self._ask(running, "off@example.com")
        unknown = await self._ask(running, "nobody@example.com")
        self.assertIsNotNone(known)
        self.assertIsNotNone(unknown)
        self.assertEqual(self._outbox(running), [])

    async def test_limited_per_address(self) -> None:
        """A fourth request for one address within 5 minutes sends nothing, silently."""
        running = await start_dashboard(self)
        await running.user("mo@example.com")
        for _ in range(4):
            await self._ask(running)
        self.assertEqual(len(self._outbox(running)), 3)
        limited = await running.audit("auth.rate_limited")
        self.assertEqual(len(limited), 1)
        self.assertNotIn("mo@", str(limited))

    async def test_turned_off(self) -> None:
        """With auth.magic_links = false the page does not offer it and the request is refused."""
        running = await start_dashboard(self, env={"VEIL_AUTH_MAGIC_LINKS": "false"})
        browser = running.browser()
        page = await browser.get("/login")
        self.assertNotIn("sign-in link", page.text)
        reply = await browser.form("/login/link", {"email": "mo@example.com"})
        self.assertEqual(reply.code, 404)


class SmtpTests(TestCase):
    """Mail through a real SMTP server on loopback, with STARTTLS and AUTH."""

    timeout = 60

    async def test_delivered_over_tls(self) -> None:
        """The link arrives over STARTTLS after AUTH, and signs in."""
        smtp = SmtpServer(Path(self.mktemp()))
        smtp.start()
        self.addCleanup(smtp.stop)
        running = await start_dashboard(self, env=smtp.env())
        await running.user("mo@example.com")
        browser = running.browser()
        await browser.get("/login/link")
        arriving = smtp.next_message()
        await browser.form("/login/link", {"email": "mo@example.com"})
        received = await arriving
        self.assertTrue(received.tls)
        self.assertTrue(received.authenticated)
        self.assertEqual(received.recipients, ["mo@example.com"])
        self.assertEqual(received.sender, "veil@example.test")
        link = LINK.search(received.text).group(2)
        await browser.get(link)
        reply = await browser.form("/login/magic", {"token": link.rpartition("=")[2]})
        self.assertEqual(reply.code, 303)
        await running.accounts.background()
        self.assertFalse((running.config.data_dir / "outbox").exists())

    async def test_untrusted_server(self) -> None:
        """A server whose certificate is not trusted gets nothing; the failure is logged without the address."""
        smtp = SmtpServer(Path(self.mktemp()))
        smtp.start()
        self.addCleanup(smtp.stop)
        env = smtp.env()
        del env["VEIL_SMTP_CA_BUNDLE"]
        running = await start_dashboard(self, env=env)
        await running.user("mo@example.com")
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        browser = running.browser()
        await browser.get("/login/link")
        reply = await browser.form("/login/link", {"email": "mo@example.com"})
        self.assertEqual(reply.code, 200)
        await running.accounts.background()
        self.assertEqual(smtp.messages, [])
        texts = [formatEvent(e) for e in events]
        self.assertTrue(any("did not take the message" in t for t in texts))
        self.assertFalse(any("mo@example.com" in t for t in texts))

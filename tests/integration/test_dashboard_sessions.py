"""
Sessions over real HTTP on loopback with a real PostgreSQL: the cookie,
what the database keeps, rotation at sign-in, idle and absolute expiry by
the injected clock, signing out (one, all others), the 20-session cap,
and a disabled user's sessions ending at once.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from twisted.internet import threads
from twisted.trial.unittest import TestCase

from tests.support.dashboard import PASSWORD, Browser, Running, start_dashboard

EMAIL = "ada@example.com"


class CookieTests(TestCase):
    """The session cookie and what is stored for it."""

    timeout = 60

    async def test_cookie_attributes(self) -> None:
        """HttpOnly, SameSite=Lax, Path=/, no Domain, Max-Age = the lifetime; no Secure on http."""
        running = await start_dashboard(self)
        await running.user(EMAIL)
        browser = running.browser()
        page = await browser.get("/login")
        pre = [c for c in page.set_cookies() if c.startswith("veil_pre=")]
        self.assertEqual(len(pre), 1)
        reply = await browser.form("/login", {"email": EMAIL, "password": PASSWORD})
        self.assertEqual(reply.code, 303)
        self.assertEqual(reply.header("location"), "/")
        session = [c for c in reply.set_cookies() if c.startswith("veil_session=")]
        self.assertEqual(len(session), 1)
        parts = [p.strip() for p in session[0].split(";")]
        self.assertIn("HttpOnly", parts)
        self.assertIn("SameSite=lax", parts)
        self.assertIn("Path=/", parts)
        self.assertIn("Max-Age=43200", parts)
        self.assertNotIn("Secure", parts)
        self.assertFalse(any(p.lower().startswith("domain=") for p in parts))
        # The pre-session cookie is dropped at sign-in.
        self.assertTrue(any(c.startswith("veil_pre=;") for c in reply.set_cookies()))

    async def test_only_the_hash_is_stored(self) -> None:
        """The cookie's value appears nowhere in the sessions table; its SHA-256 does."""
        running = await start_dashboard(self)
        await running.user(EMAIL)
        browser = await running.sign_in(EMAIL)
        value = browser.cookie("veil_session")
        self.assertRegex(value, r"^[A-Za-z0-9_-]{43}$")
        with psycopg.connect(running.conninfo) as conn:
            rows = conn.execute("SELECT row_to_json(s)::text, id_hash,"
                                " sha256(convert_to(%s, 'UTF8')) FROM sessions s",
                                (value,)).fetchall()
        self.assertEqual(len(rows), 1)
        text, stored, expected = rows[0]
        self.assertNotIn(value, text)
        self.assertEqual(bytes(stored), bytes(expected))
        self.assertNotIn(value, browser.csrf or "")

    async def test_page_has_csrf_token_not_session(self) -> None:
        """The page carries the CSRF token, never the session id."""
        running = await start_dashboard(self)
        await running.user(EMAIL)
        browser = await running.sign_in(EMAIL)
        page = await browser.get("/account")
        self.assertNotIn(browser.cookie("veil_session"), page.text)
        self.assertIn(browser.csrf, page.text)


class LifetimeTests(TestCase):
    """Rotation, idle and absolute expiry, signing out."""

    timeout = 60

    async def _signed_in(self) -> tuple[Running, Browser]:
        running = await start_dashboard(self)
        await running.user(EMAIL)
        return running, await running.sign_in(EMAIL)

    async def test_new_id_at_every_sign_in(self) -> None:
        """Signing in again gives a new id and ends the session the browser had."""
        running, browser = await self._signed_in()
        first = browser.cookie("veil_session")
        await browser.get("/login")
        reply = await browser.form("/login", {"email": EMAIL, "password": PASSWORD})
        self.assertEqual(reply.code, 303)
        second = browser.cookie("veil_session")
        self.assertNotEqual(first, second)
        old = Browser(running.base)
        old.cookies.set_cookie(_cookie("veil_session", first))
        self.assertEqual((await old.api("GET", "/api/v1/me")).code, 401)
        self.assertEqual((await browser.api("GET", "/api/v1/me")).code, 200)

    async def test_pre_session_does_not_become_session(self) -> None:
        """A planted pre-session value is no session (fixation)."""
        running, _ = await self._signed_in()
        attacker = running.browser()
        await attacker.get("/login")
        planted = attacker.cookie("veil_pre")
        victim = Browser(running.base)
        victim.cookies.set_cookie(_cookie("veil_session", planted))
        self.assertEqual((await victim.api("GET", "/api/v1/me")).code, 401)

    async def test_idle_expiry(self) -> None:
        """Unused for the idle timeout (30 min), the session is over; used, it lives on."""
        running, browser = await self._signed_in()
        running.clock.advance(25 * 60)
        self.assertEqual((await browser.api("GET", "/api/v1/me")).code, 200)
        running.clock.advance(25 * 60)
        self.assertEqual((await browser.api("GET", "/api/v1/me")).code, 200)
        running.clock.advance(30 * 60 + 1)
        self.assertEqual((await browser.api("GET", "/api/v1/me")).code, 401)
        page = await browser.get("/account")
        self.assertEqual(page.code, 303)
        self.assertEqual(page.header("location"), "/login?next=/account")
        with psycopg.connect(running.conninfo) as conn:
            self.assertEqual(conn.execute("SELECT count(*) FROM sessions").fetchone()[0], 0)

    async def test_absolute_expiry(self) -> None:
        """Even in use, a session ends 12 hours after sign-in."""
        running, browser = await self._signed_in()
        for _ in range(47):
            running.clock.advance(15 * 60)
            self.assertEqual((await browser.api("GET", "/api/v1/me")).code, 200)
        running.clock.advance(15 * 60)
        self.assertEqual((await browser.api("GET", "/api/v1/me")).code, 401)

    async def test_sign_out(self) -> None:
        """Signing out ends the session server-side: the cookie replayed is refused."""
        running, browser = await self._signed_in()
        value = browser.cookie("veil_session")
        reply = await browser.form("/logout", {})
        self.assertEqual(reply.code, 303)
        self.assertEqual(reply.header("location"), "/login?notice=signed_out")
        self.assertEqual(reply.header("clear-site-data"), '"cache", "storage"')
        replay = Browser(running.base)
        replay.cookies.set_cookie(_cookie("veil_session", value))
        self.assertEqual((await replay.api("GET", "/api/v1/me")).code, 401)
        [row] = await running.audit("auth.sign_out")
        self.assertEqual(row[3], "127.0.0.1")

    async def test_your_sessions(self) -> None:
        """The account page lists the sessions; one can be signed out, or all the others."""
        running, first = await self._signed_in()
        second = await running.sign_in(EMAIL)
        third = await running.sign_in(EMAIL)
        listed = (await first.api("GET", "/api/v1/sessions")).json()["items"]
        self.assertEqual(len(listed), 3)
        self.assertEqual(sum(s["current"] for s in listed), 1)
        current = next(s for s in listed if s["current"])
        others = [s["id"] for s in listed if not s["current"]]
        page = await first.get("/account")
        for session in listed:
            self.assertIn(f'/account/sessions/{session["id"]}/end', page.text)
        reply = await first.form(f"/account/sessions/{others[0]}/end", {})
        self.assertEqual((reply.code, reply.header("location")),
                         (303, "/account?done=session_ended"))
        codes = sorted([(await b.api("GET", "/api/v1/me")).code for b in (second, third)])
        self.assertEqual(codes, [200, 401])
        reply = await first.form("/account/sessions/end-others", {})
        self.assertEqual(reply.code, 303)
        for other in (second, third):
            self.assertEqual((await other.api("GET", "/api/v1/me")).code, 401)
        remaining = (await first.api("GET", "/api/v1/sessions")).json()["items"]
        self.assertEqual([s["id"] for s in remaining], [current["id"]])
        # Another user's session id is not found, and not ended.
        self.assertEqual((await first.api("DELETE", f"/api/v1/sessions/{others[0]}")).code, 404)

    async def test_cap(self) -> None:
        """The 21st session ends the oldest."""
        running, first = await self._signed_in()
        for _ in range(20):
            await running.sign_in(EMAIL)
        self.assertEqual((await first.api("GET", "/api/v1/me")).code, 401)
        with psycopg.connect(running.conninfo) as conn:
            self.assertEqual(conn.execute("SELECT count(*) FROM sessions").fetchone()[0], 20)

    async def test_disabled_user(self) -> None:
        """Disabling a user ends its sessions and revokes its tokens at once."""
        running, browser = await self._signed_in()
        created = await browser.api("POST", "/api/v1/tokens", {"name": "ci"})
        token = created.json()["token"]
        self.assertEqual((await browser.api("GET", "/api/v1/me", token=token)).code, 200)
        operator = await running.operator()
        await running.accounts.store.disable_user(EMAIL, operator, running.accounts.now())
        self.assertEqual((await browser.api("GET", "/api/v1/me")).code, 401)
        self.assertEqual((await browser.api("GET", "/api/v1/me", token=token)).code, 401)
        again = running.browser()
        await again.get("/login")
        reply = await again.form("/login", {"email": EMAIL, "password": PASSWORD})
        self.assertEqual(reply.code, 401)
        self.assertIn("E-mail address or password is incorrect", reply.text)


def _cookie(name: str, value: str):
    from http.cookiejar import Cookie

    return Cookie(0, name, value, None, False, "127.0.0.1", False, False, "/", True, False,
                  None, False, None, None, {})


class NotifyTests(TestCase):
    """Ending a session or revoking a token is announced, for live streams to close."""

    timeout = 60

    async def test_channels(self) -> None:
        """Signing out notifies veil_sessions with the session's id; revoking, veil_api_tokens."""
        running = await start_dashboard(self)
        await running.user(EMAIL)
        browser = await running.sign_in(EMAIL)
        [session] = (await browser.api("GET", "/api/v1/sessions")).json()["items"]
        token = (await browser.api("POST", "/api/v1/tokens", {"name": "x"})).json()
        await running.accounts.flush_token_uses()
        conn = psycopg.connect(running.conninfo, autocommit=True)
        self.addCleanup(conn.close)
        for channel in ("veil_sessions", "veil_api_tokens"):
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        await running.browser().api("GET", "/api/v1/me", token=token["token"])
        await running.accounts.flush_token_uses()
        await browser.api("DELETE", f"/api/v1/tokens/{token['id']}")
        await browser.form("/logout", {})

        def collect() -> list[tuple[str, str]]:
            return [(n.channel, n.payload) for n in conn.notifies(timeout=2.0)]

        received = await threads.deferToThread(collect)
        self.assertEqual(received, [("veil_api_tokens", token["id"]),
                                    ("veil_sessions", session["id"])])

"""
API tokens over real HTTP with a real PostgreSQL: shown once and stored
hashed, bearer authentication, scope, read-only, expiry, revocation at
once, last use recorded in batches, and what a token may not do.
"""

from __future__ import annotations

import re

import psycopg
from twisted.trial.unittest import TestCase

from tests.support.dashboard import Browser, Running, start_dashboard
from veil.auth.credentials import digest

EMAIL = "grace@example.com"


class TokenTests(TestCase):
    """Bearer tokens for scripts and the CLI."""

    timeout = 60

    async def _start(self) -> tuple[Running, Browser]:
        running = await start_dashboard(self)
        await running.user(EMAIL)
        return running, await running.sign_in(EMAIL)

    async def test_created_once_stored_hashed(self) -> None:
        """The value is in the creation answer only; the database has its SHA-256."""
        running, browser = await self._start()
        reply = await browser.api("POST", "/api/v1/tokens", {"name": "deploy", "expires": "30d"})
        self.assertEqual(reply.code, 201)
        created = reply.json()
        token = created["token"]
        self.assertRegex(token, r"^veil_pat_")
        self.assertEqual(created["prefix"], token[:15])
        listed = await browser.api("GET", "/api/v1/tokens")
        self.assertNotIn(token, listed.text)
        self.assertEqual([t["id"] for t in listed.json()["items"]], [created["id"]])
        page = await browser.get("/account")
        self.assertNotIn(token, page.text)
        with psycopg.connect(running.conninfo) as conn:
            dump = conn.execute("SELECT row_to_json(t)::text, token_hash FROM api_tokens t"
                                ).fetchone()
        self.assertNotIn(token, dump[0])
        self.assertEqual(bytes(dump[1]), digest(token))
        [row] = await running.audit("auth.token_created")
        self.assertNotIn(token, str(row))

    async def test_bearer(self) -> None:
        """A token signs API calls as its user; cookies are not needed."""
        running, browser = await self._start()
        token = (await browser.api("POST", "/api/v1/tokens", {"name": "x"})).json()["token"]
        script = running.browser()
        me = await script.api("GET", "/api/v1/me", token=token)
        self.assertEqual((me.code, me.json()["email"], me.json()["via"]), (200, EMAIL, "token"))
        for header in ("Basic abc", "Bearer", "Bearer " + token[:-1] + "x", "Bearer nonsense"):
            reply = await script.api("GET", "/api/v1/me", headers={"Authorization": header})
            self.assertEqual(reply.code, 401, header)
            self.assertIn("Bearer", reply.header("www-authenticate"))

    async def test_not_for_pages_and_account(self) -> None:
        """A token cannot mint tokens or list sessions; pages ignore it."""
        running, browser = await self._start()
        token = (await browser.api("POST", "/api/v1/tokens", {"name": "x"})).json()["token"]
        script = running.browser()
        reply = await script.api("POST", "/api/v1/tokens", {"name": "y"}, token=token)
        self.assertEqual((reply.code, reply.json()["error"]["code"]), (403, "token_not_allowed"))
        self.assertEqual((await script.api("GET", "/api/v1/sessions", token=token)).code, 403)
        page = await script.get("/account", headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(page.code, 303)

    async def test_read_only(self) -> None:
        """A read-only token reads, and is refused any write."""
        running, browser = await self._start()
        ro = (await browser.api("POST", "/api/v1/tokens", {"name": "ro", "read_only": True})
              ).json()
        script = running.browser()
        self.assertEqual((await script.api("GET", "/api/v1/tokens", token=ro["token"])).code, 200)
        reply = await script.api("DELETE", f"/api/v1/tokens/{ro['id']}", token=ro["token"])
        self.assertEqual((reply.code, reply.json()["error"]["code"]), (403, "read_only_token"))

    async def test_revoked_at_once(self) -> None:
        """Revoking (from the page) stops the token on the very next request."""
        running, browser = await self._start()
        created = (await browser.api("POST", "/api/v1/tokens", {"name": "x"})).json()
        script = running.browser()
        self.assertEqual((await script.api("GET", "/api/v1/me", token=created["token"])).code, 200)
        await browser.get("/account")
        reply = await browser.form(f"/account/tokens/{created['id']}/revoke", {})
        self.assertEqual((reply.code, reply.header("location")),
                         (303, "/account?done=token_revoked"))
        self.assertEqual((await script.api("GET", "/api/v1/me", token=created["token"])).code, 401)
        self.assertEqual(len(await running.audit("auth.token_revoked")), 1)
        again = await browser.api("DELETE", f"/api/v1/tokens/{created['id']}")
        self.assertEqual(again.code, 404)

    async def test_expiry(self) -> None:
        """A token stops working when it expires; lifetimes are bounded."""
        running, browser = await self._start()
        token = (await browser.api("POST", "/api/v1/tokens", {"name": "x", "expires": "1d"})
                 ).json()["token"]
        for expires in ("2y", "forever", "soon"):
            reply = await browser.api("POST", "/api/v1/tokens", {"name": "x", "expires": expires})
            self.assertEqual(reply.code, 422, expires)
            self.assertEqual(reply.json()["error"]["detail"]["fields"][0]["field"], "expires")
        never = await browser.api("POST", "/api/v1/tokens", {"name": "x", "expires": "never"})
        self.assertIsNone(never.json()["expires_at"])
        script = running.browser()
        running.clock.advance(86400 - 60)
        self.assertEqual((await script.api("GET", "/api/v1/me", token=token)).code, 200)
        running.clock.advance(120)
        self.assertEqual((await script.api("GET", "/api/v1/me", token=token)).code, 401)
        self.assertEqual((await script.api("GET", "/api/v1/me", token=never.json()["token"])
                          ).code, 200)

    async def test_site_scope_needs_membership(self) -> None:
        """A token can be limited to a site of the user's only."""
        running, browser = await self._start()
        other = await running.user("other@example.com")
        site_id = await running.site(other, "theirs.example.com")
        reply = await browser.api("POST", "/api/v1/tokens", {"name": "x", "site_id": str(site_id)})
        self.assertEqual(reply.code, 422)
        self.assertEqual(reply.json()["error"]["detail"]["fields"][0]["field"], "site_id")

    async def test_last_use_batched(self) -> None:
        """Uses are recorded by one write per flush, not one per request."""
        running, browser = await self._start()
        created = (await browser.api("POST", "/api/v1/tokens", {"name": "x"})).json()
        script = running.browser()
        for _ in range(3):
            await script.api("GET", "/api/v1/me", token=created["token"])

        def last_used() -> object:
            with psycopg.connect(running.conninfo) as conn:
                return conn.execute("SELECT last_used_at FROM api_tokens").fetchone()[0]

        self.assertIsNone(last_used())
        self.assertEqual(await running.accounts.flush_token_uses(), 1)
        first = last_used()
        self.assertIsNotNone(first)
        await script.api("GET", "/api/v1/me", token=created["token"])
        self.assertEqual(await running.accounts.flush_token_uses(), 0)
        running.clock.advance(61)
        await script.api("GET", "/api/v1/me", token=created["token"])
        self.assertEqual(await running.accounts.flush_token_uses(), 1)
        self.assertGreater(last_used(), first)
        listed = (await browser.api("GET", "/api/v1/tokens")).json()["items"][0]
        self.assertIsNotNone(listed["last_used_at"])

    async def test_pagination(self) -> None:
        """The token list pages by cursor, newest first, without repeats or gaps."""
        _running, browser = await self._start()
        made = [(await browser.api("POST", "/api/v1/tokens", {"name": f"t{i}"})).json()["id"]
                for i in range(5)]
        seen, cursor = [], None
        while True:
            path = "/api/v1/tokens?limit=2" + (f"&cursor={cursor}" if cursor else "")
            page = (await browser.api("GET", path)).json()
            seen.extend(t["id"] for t in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        self.assertEqual(seen, list(reversed(made)))
        bad = await browser.api("GET", "/api/v1/tokens?cursor=nonsense")
        self.assertEqual((bad.code, bad.json()["error"]["code"]), (400, "invalid_cursor"))

    async def test_bad_tokens_limited(self) -> None:
        """Guessing tokens from one address runs into 429 with Retry-After."""
        running, _ = await self._start()
        script = running.browser()
        codes = []
        for _ in range(32):
            reply = await script.api("GET", "/api/v1/me", token="veil_pat_nope")
            codes.append(reply.code)
        self.assertEqual(codes[:30], [401] * 30)
        self.assertEqual(codes[30:], [429, 429])
        self.assertIsNotNone(reply.header("retry-after"))

    async def test_account_page_token(self) -> None:
        """The account page creates a token and shows it once."""
        running, browser = await self._start()
        await browser.get("/account")
        reply = await browser.form("/account/tokens", {"name": "deploy", "expires": "30d",
                                                        "read_only": "on"})
        self.assertEqual(reply.code, 201)
        [token] = re.findall(r"veil_pat_[A-Za-z0-9_-]{43}_[0-9A-Za-z]{6}",
                                            reply.text)
        me = await running.browser().api("GET", "/api/v1/me", token=token)
        self.assertEqual(me.code, 200)
        listed = (await browser.api("GET", "/api/v1/tokens")).json()["items"][0]
        self.assertTrue(listed["read_only"])
        again = await browser.get("/account")
        self.assertNotIn(token, again.text)
        bad = await browser.form("/account/tokens", {"name": "", "expires": "30d"})
        self.assertEqual(bad.code, 422)

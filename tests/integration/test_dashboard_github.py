"""
Signing in with GitHub against a local fake GitHub that speaks GitHub's
wire format (tests/support/fake_github.py), through Veil's production
code: state and PKCE, consent denied, unverified addresses, linking by
verified e-mail address and then by GitHub id, and the failures.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import treq
from twisted.trial.unittest import TestCase

from tests.support.dashboard import Browser, Reply, Running, start_dashboard
from tests.support.fake_github import FakeGithub, GithubUser


class GithubTests(TestCase):
    """The OAuth web flow with state and PKCE."""

    timeout = 60

    async def _start(self) -> tuple[Running, FakeGithub]:
        fake = FakeGithub()
        fake.start()
        self.addCleanup(fake.stop)
        running = await start_dashboard(self, env=fake.env())
        return running, fake

    async def _to_github(self, browser: Browser, next_path: str = "/") -> str:
        """Press "Sign in with GitHub": the URL the browser is sent to."""
        page = await browser.get("/login")
        self.assertIn("Sign in with GitHub", page.text)
        reply = await browser.form("/auth/github/start", {"next": next_path})
        self.assertEqual(reply.code, 303)
        return reply.header("location")

    async def _at_github(self, url: str) -> str:
        """What the person does at GitHub (as the fake decides): where GitHub sends them back."""
        response = await treq.get(url, allow_redirects=False, persistent=False)
        await treq.content(response)
        self.assertEqual(response.code, 302)
        return response.headers.getRawHeaders("location")[0]

    async def _back(self, browser: Browser, callback: str) -> Reply:
        parts = urlsplit(callback)
        return await browser.get(f"{parts.path}?{parts.query}")

    async def _sign_in(self, running: Running, fake: FakeGithub,
                       browser: Browser | None = None) -> tuple[Browser, Reply]:
        browser = browser or running.browser()
        callback = await self._at_github(await self._to_github(browser))
        return browser, await self._back(browser, callback)

    async def test_authorize_request(self) -> None:
        """Veil asks for read:user user:email with state, an S256 challenge and no sign-up."""
        running, fake = await self._start()
        url = await self._to_github(running.browser())
        self.assertTrue(url.startswith(fake.base_url + "/login/oauth/authorize?"))
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        self.assertEqual(query["client_id"], fake.client_id)
        self.assertEqual(query["scope"], "read:user user:email")
        self.assertEqual(query["code_challenge_method"], "S256")
        self.assertEqual(query["allow_signup"], "false")
        self.assertEqual(query["redirect_uri"], running.base + "/auth/github/callback")
        self.assertRegex(query["state"], r"^[A-Za-z0-9_-]{43}$")
        self.assertRegex(query["code_challenge"], r"^[A-Za-z0-9_-]{43}$")
        page = await running.browser().get("/login")
        self.assertIn(f"form-action 'self' {fake.base_url}",
                      page.header("content-security-policy"))

    async def test_links_by_verified_address_then_id(self) -> None:
        """
        The first sign-in links the account whose address GitHub has verified;
        later sign-ins find it by GitHub id, even after the address changes.
        """
        running, fake = await self._start()
        await running.user("octocat@example.com")
        fake.user = GithubUser(583231, "octocat", [("old@example.net", False, False),
                                                   ("octocat@example.com", True, True)])
        browser, reply = await self._sign_in(running, fake)
        self.assertEqual((reply.code, reply.header("location")), (303, "/"))
        me = (await browser.api("GET", "/api/v1/me")).json()
        self.assertEqual((me["email"], me["github_login"]), ("octocat@example.com", "octocat"))
        self.assertEqual(len(await running.audit("auth.github_linked")), 1)
        # The exchange sent the verifier, the client secret and asked for JSON.
        [exchange] = [r for r in fake.requests if r[1] == "/login/oauth/access_token"]
        self.assertEqual(exchange[2]["accept"], "application/json")
        self.assertRegex(exchange[3]["code_verifier"], r"^[A-Za-z0-9_-]{43}$")
        self.assertEqual(exchange[3]["client_secret"], fake.client_secret)
        api_calls = [r for r in fake.requests if r[1].startswith("/api/v3/")]
        self.assertEqual([r[2]["x-github-api-version"] for r in api_calls], ["2022-11-28"] * 2)
        fake.user = GithubUser(583231, "octo-renamed", [("new@example.org", True, True)])
        browser, reply = await self._sign_in(running, fake)
        self.assertEqual(reply.code, 303)
        me = (await browser.api("GET", "/api/v1/me")).json()
        self.assertEqual((me["email"], me["github_login"]), ("octocat@example.com",
                                                             "octo-renamed"))

    async def test_return_to(self) -> None:
        """The page asked for before signing in is where the browser lands."""
        running, _fake = await self._start()
        await running.user("octocat@example.com")
        browser = running.browser()
        callback = await self._at_github(await self._to_github(browser, "/account"))
        reply = await self._back(browser, callback)
        self.assertEqual(reply.header("location"), "/account")

    async def test_bad_state(self) -> None:
        """A callback whose state is missing, wrong, replayed or from another browser is refused."""
        running, _fake = await self._start()
        await running.user("octocat@example.com")
        browser = running.browser()
        callback = await self._at_github(await self._to_github(browser))
        parts = urlsplit(callback)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        other = running.browser()
        await other.get("/login")
        stolen = await self._back(other, callback)
        self.assertEqual(stolen.code, 400)
        self.assertIn("not started here", stolen.text)
        wrong = await browser.get(f"{parts.path}?code={query['code']}&state={'A' * 43}")
        self.assertEqual(wrong.code, 400)
        missing = await browser.get(f"{parts.path}?code={query['code']}")
        self.assertEqual(missing.code, 400)
        # The real callback still works once (the failures above did not spend it)...
        first = await self._back(browser, callback)
        self.assertEqual(first.code, 303)
        # ...and only once.
        await browser.get("/login")
        replay = await self._back(browser, callback)
        self.assertEqual(replay.code, 400)

    async def test_expired_flow(self) -> None:
        """A flow older than 10 minutes is refused."""
        running, _fake = await self._start()
        await running.user("octocat@example.com")
        browser = running.browser()
        callback = await self._at_github(await self._to_github(browser))
        running.clock.advance(601)
        self.assertEqual((await self._back(browser, callback)).code, 400)

    async def test_denied_consent(self) -> None:
        """Declining at GitHub brings the person back to a page that says so."""
        running, fake = await self._start()
        await running.user("octocat@example.com")
        fake.consent = "deny"
        browser, reply = await self._sign_in(running, fake)
        self.assertEqual(reply.code, 403)
        self.assertIn("did not allow Veil", reply.text)
        self.assertIsNone(browser.cookie("veil_session"))
        self.assertFalse([r for r in fake.requests if r[1] == "/login/oauth/access_token"])

    async def test_unverified_address(self) -> None:
        """An account GitHub has verified no address for is refused, and nothing is linked."""
        running, fake = await self._start()
        await running.user("octocat@example.com")
        fake.user = GithubUser(7, "sneaky", [("octocat@example.com", True, False)])
        _, reply = await self._sign_in(running, fake)
        self.assertEqual(reply.code, 403)
        self.assertIn("no verified", reply.text)
        self.assertEqual(await running.audit("auth.github_linked"), [])
        fake.unverified_primary = True
        fake.user = GithubUser(8, "other", [("octocat@example.com", True, True)])
        _browser, reply = await self._sign_in(running, fake)
        self.assertEqual(reply.code, 403)

    async def test_scope_downgraded(self) -> None:
        """A token without user:email (the person unticked it) is refused."""
        running, fake = await self._start()
        await running.user("octocat@example.com")
        fake.granted_scope = "read:user"
        _, reply = await self._sign_in(running, fake)
        self.assertEqual(reply.code, 403)
        self.assertIn("verified e-mail addresses", reply.text)

    async def test_no_account(self) -> None:
        """Nobody is signed up by GitHub: no matching account, no session."""
        running, fake = await self._start()
        _browser, reply = await self._sign_in(running, fake)
        self.assertEqual(reply.code, 403)
        self.assertIn("No Veil account matches", reply.text)
        self.assertEqual(await running.accounts.store.count_accounts(), 0)
        failures = await running.audit("auth.sign_in_failed")
        self.assertEqual(failures[-1][2]["reason"], "no_account")

    async def test_linked_elsewhere(self) -> None:
        """An account linked to one GitHub id is not taken over by another with the same address."""
        running, fake = await self._start()
        await running.user("octocat@example.com")
        await self._sign_in(running, fake)
        fake.user = GithubUser(999, "impostor", [("octocat@example.com", True, True)])
        _, reply = await self._sign_in(running, fake)
        self.assertEqual(reply.code, 403)
        self.assertIn("linked to another GitHub account", reply.text)

    async def test_wrong_client_secret(self) -> None:
        """GitHub's error in a 200 answer is a failure; the page says to try again."""
        fake = FakeGithub()
        fake.start()
        self.addCleanup(fake.stop)
        env = {**fake.env(), "VEIL_GITHUB_CLIENT_SECRET": "wrong"}
        running = await start_dashboard(self, env=env)
        await running.user("octocat@example.com")
        _, reply = await self._sign_in(running, fake)
        self.assertEqual(reply.code, 502)
        failures = await running.audit("auth.sign_in_failed")
        self.assertEqual(failures[-1][2]["reason"], "incorrect_client_credentials")

    async def test_not_configured(self) -> None:
        """Without GitHub settings the button is absent and the routes answer 404."""
        running = await start_dashboard(self)
        browser = running.browser()
        self.assertNotIn("GitHub", (await browser.get("/login")).text)
        reply = await browser.form("/auth/github/start", {})
        self.assertEqual(reply.code, 404)

"""
The live stream mounted on the dashboard (C{GET /api/v1/stream}), over real
HTTP on loopback: with a bearer token and with a session cookie, hydrated
from a real PostgreSQL and fed by the hub, resumed, capped, refused to
non-members, and ended at once when the principal's right ends (signing
out, a revoked token, a disabled user, a removed membership, a deleted
site), through the NOTIFY channels every process follows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from twisted.trial.unittest import TestCase

from tests.integration.test_dashboard_api import log_row
from tests.integration.test_logquery import write
from tests.support.dashboard import Browser, Running, start_dashboard
from tests.support.sse import SSEClient
from veil.auth.store import User


class StreamCase(TestCase):
    """A dashboard with a listener, an owner with a site and a token."""

    timeout = 90

    async def start(self, **options: object) -> None:
        self.running: Running = await start_dashboard(
            self, listen=True, live_options={"coalesce": 0.01, **options})
        self.owner_user: User = await self.running.user("owner@example.com")
        self.site_id: UUID = await self.running.site(self.owner_user, "shop.example.com")
        self.owner: Browser = await self.running.sign_in("owner@example.com")
        reply = await self.owner.api("POST", "/api/v1/tokens", {"name": "watch"})
        self.token_id, self.token = reply.json()["id"], reply.json()["token"]
        self.now = datetime.now(UTC).replace(microsecond=0)

    def url(self, site: UUID | None = None, extra: str = "") -> str:
        return f"{self.running.base}/api/v1/stream?site_id={site or self.site_id}{extra}"

    async def connect(self, headers: dict[str, str], site: UUID | None = None,
                      extra: str = "") -> SSEClient:
        client = SSEClient(self.url(site, extra), headers)
        await client.open()
        self.addCleanup(client.close)
        return client

    def bearer(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    @staticmethod
    def cookie(browser: Browser) -> dict[str, str]:
        return {"Cookie": f"veil_session={browser.cookie('veil_session')}"}

    def publish(self, n: int, site: UUID | None = None, **changes: object) -> None:
        self.running.hub.publish(log_row(self.now + timedelta(seconds=n), site or self.site_id,
                                         n, path=f"/live/{n}", **changes))


class StreamTests(StreamCase):
    """Watching a site's requests."""

    async def test_bearer_token(self) -> None:
        """
        A token's stream starts with the latest rows from the database, then
        gets each request of the site (not of other sites) as it happens.
        """
        await self.start()
        write(self.running.conninfo, [
            log_row(self.now - timedelta(minutes=2), self.site_id, 1, path="/old/1"),
            log_row(self.now - timedelta(minutes=1), self.site_id, 2, path="/old/2")])
        client = await self.connect(self.bearer())
        self.assertEqual(client.status, 200)
        headers = client.response.headers
        self.assertEqual(headers.getRawHeaders("content-type"),
                         ["text/event-stream; charset=utf-8"])
        self.assertIn("default-src 'self'",
                      headers.getRawHeaders("content-security-policy")[0])
        self.assertTrue(headers.getRawHeaders("x-request-id"))
        hydrate = await client.wait_for("hydrate")
        self.assertEqual([r["path"] for r in hydrate.json()["rows"]], ["/old/1", "/old/2"])
        self.publish(3, user_agent="<img src=x onerror=alert(1)>")
        other = await self.running.site(self.owner_user, "blog.example.com")
        self.publish(4, site=other)
        self.publish(5)
        first = await client.wait_for("request")
        second = await client.wait_for("request")
        self.assertEqual([first.json()["path"], second.json()["path"]], ["/live/3", "/live/5"])
        self.assertEqual(first.json()["user_agent"], "<img src=x onerror=alert(1)>")

    async def test_session_and_resume(self) -> None:
        """
        A signed-in browser's stream works with its cookie; reconnecting with
        Last-Event-ID (or ?after=) resumes exactly: what was published while
        away comes, nothing twice, no new hydration.
        """
        await self.start()
        client = await self.connect(self.cookie(self.owner))
        await client.wait_for("hydrate")
        self.publish(1)
        await client.wait_for("request")
        last = client.last_id
        await client.close()
        self.publish(2)
        self.publish(3)
        again = await self.connect({**self.cookie(self.owner), "Last-Event-ID": last})
        events = await again.wait(2)
        self.assertEqual([(e.kind, e.json()["path"]) for e in events],
                         [("request", "/live/2"), ("request", "/live/3")])
        await again.close()
        self.publish(4)
        after = await self.connect(self.cookie(self.owner), extra=f"&after={again.last_id}")
        [event] = await after.wait(1)
        self.assertEqual((event.kind, event.json()["path"]), ("request", "/live/4"))

    async def test_refused(self) -> None:
        """
        A non-member gets 404 (as for a site that does not exist), nobody
        401, a token limited to another site 404, and past the per-user cap 429.
        """
        await self.start(max_per_user=2)
        await self.running.user("stranger@example.com")
        stranger = await self.running.sign_in("stranger@example.com")
        refused = await self.connect(self.cookie(stranger))
        self.assertEqual((refused.status, refused.error()["error"]["code"]), (404, "not_found"))
        nobody = await self.connect({})
        self.assertEqual(nobody.status, 401)
        other = await self.running.site(self.owner_user, "blog.example.com")
        scoped = (await self.owner.api("POST", "/api/v1/tokens", {
            "name": "blog", "site_id": str(other)})).json()["token"]
        self.assertEqual((await self.connect(self.bearer(scoped))).status, 404)
        self.assertEqual((await self.connect(self.bearer(scoped), site=other)).status, 200)
        self.assertEqual((await self.connect(self.bearer())).status, 200)
        capped = await self.connect(self.bearer())
        self.assertEqual(capped.status, 429)
        self.assertEqual(capped.error()["error"]["code"], "too_many_streams")
        self.assertEqual(capped.response.headers.getRawHeaders("retry-after"), ["30"])


class RevocationTests(StreamCase):
    """A stream ends at once when its principal's right to it ends."""

    async def ended(self, client: SSEClient) -> None:
        event = await client.wait_for("end", within=10)
        self.assertEqual(event.json(), {"reason": "revoked"})
        await client.closed

    async def test_revoked_token(self) -> None:
        """Revoking the token ends its stream (and it is refused afterwards); others go on."""
        await self.start()
        by_token = await self.connect(self.bearer())
        by_session = await self.connect(self.cookie(self.owner))
        await by_token.wait_for("hydrate")
        await by_session.wait_for("hydrate")
        reply = await self.owner.api("DELETE", f"/api/v1/tokens/{self.token_id}")
        self.assertEqual(reply.code, 200)
        await self.ended(by_token)
        self.assertEqual((await self.connect(self.bearer())).status, 401)
        self.publish(1)
        event = await by_session.wait_for("request")
        self.assertEqual(event.json()["path"], "/live/1")

    async def test_sign_out(self) -> None:
        """Signing out ends the session's streams."""
        await self.start()
        client = await self.connect(self.cookie(self.owner))
        await client.wait_for("hydrate")
        reply = await self.owner.form("/logout", {})
        self.assertEqual(reply.code, 303)
        await self.ended(client)

    async def test_session_ended_elsewhere(self) -> None:
        """Ending a session from another browser ends that session's streams."""
        await self.start()
        client = await self.connect(self.cookie(self.owner))
        await client.wait_for("hydrate")
        other = await self.running.sign_in("owner@example.com")
        reply = await other.form("/account/sessions/end-others", {})
        self.assertEqual(reply.code, 303)
        await self.ended(client)

    async def test_disabled_user(self) -> None:
        """Disabling a user ends every stream it has, by session and by token."""
        await self.start()
        await self.running.user("root@example.com", admin=True)
        root = await self.running.sign_in("root@example.com")
        by_token = await self.connect(self.bearer())
        by_session = await self.connect(self.cookie(self.owner))
        await by_token.wait_for("hydrate")
        await by_session.wait_for("hydrate")
        reply = await root.api("POST", f"/api/v1/users/{self.owner_user.id}/disable")
        self.assertEqual(reply.code, 200, reply.text)
        await self.ended(by_token)
        await self.ended(by_session)

    async def test_membership_removed(self) -> None:
        """A member removed from the site loses its stream of that site."""
        await self.start()
        viewer = await self.running.user("viewer@example.com")
        await self.running.add_member(self.site_id, viewer, "viewer")
        browser = await self.running.sign_in("viewer@example.com")
        client = await self.connect(self.cookie(browser))
        await client.wait_for("hydrate")
        reply = await self.owner.api("DELETE",
                                     f"/api/v1/sites/{self.site_id}/members/{viewer.id}")
        self.assertEqual(reply.code, 204)
        await self.ended(client)
        mine = await self.connect(self.cookie(self.owner))
        self.assertEqual(mine.status, 200)

    async def test_site_deleted(self) -> None:
        """Deleting the site ends its streams."""
        await self.start()
        client = await self.connect(self.cookie(self.owner))
        await client.wait_for("hydrate")
        reply = await self.owner.api("DELETE", f"/api/v1/sites/{self.site_id}")
        self.assertEqual(reply.code, 204)
        await self.ended(client)


class RecheckTests(StreamCase):
    """After the listener reconnects (notifications may be lost), streams are checked again."""

    async def start(self, **options: object) -> None:
        self.running = await start_dashboard(self, live_options={"coalesce": 0.01})
        self.owner_user = await self.running.user("owner@example.com")
        self.site_id = await self.running.site(self.owner_user, "shop.example.com")
        self.owner = await self.running.sign_in("owner@example.com")
        reply = await self.owner.api("POST", "/api/v1/tokens", {"name": "watch"})
        self.token_id, self.token = reply.json()["id"], reply.json()["token"]
        self.now = datetime.now(UTC).replace(microsecond=0)

    async def test_recheck_all(self) -> None:
        """
        With no listener to hear it, a revoked token's stream goes on; checking
        every stream again ends it, and the session's stream, still valid, stays.
        """
        await self.start()
        by_token = await self.connect(self.bearer())
        by_session = await self.connect(self.cookie(self.owner))
        await by_token.wait_for("hydrate")
        await by_session.wait_for("hydrate")
        await self.owner.api("DELETE", f"/api/v1/tokens/{self.token_id}")
        self.assertEqual(self.running.live.streams, 2)
        ended = await self.running.live.recheck_all()
        self.assertEqual(ended, 1)
        event = await by_token.wait_for("end")
        self.assertEqual(event.json(), {"reason": "revoked"})
        self.publish(1)
        self.assertEqual((await by_session.wait_for("request")).json()["path"], "/live/1")
        await self.running.db.query("test.unmember", "DELETE FROM site_members"
                                    " WHERE user_id = %s", (self.owner_user.id,))
        self.assertEqual(await self.running.live.recheck_all(), 1)
        await by_session.wait_for("end")

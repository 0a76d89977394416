"""
Authorization and CSRF, table-driven over the dashboard's route table.

L{site_requests} turns every site-scoped route of a running dashboard into
a request against a given site, so routes added later by other modules are
walked without changing these tests: a non-member gets 404 on every one of
them (exactly as for a site that does not exist), a viewer gets 403 on
those that need more, a token limited to another site gets 404.  The CSRF
sweep sends every state-changing route without a token and expects 403.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from twisted.trial.unittest import TestCase

from tests.support.dashboard import PASSWORD, Browser, Reply, Running, start_dashboard
from veil.dashboard.dashboard import Route
from veil.dashboard.schema import Object, Uuid
from veil.dashboard.web import Call, route, site_read, site_write


class SiteProbe:
    """Test-only site routes: a write, and a read that names its site in the query."""

    @route("POST", "/api/v1/sites/<uuid:site_id>/probe", access=site_write("admin"),
           summary="A site write")
    def write(self, call: Call) -> Any:
        return {"site": call.site.id, "role": call.site.role}

    @route("POST", "/sites/<uuid:site_id>/probe", access=site_write("owner"),
           summary="A site page form")
    def form(self, call: Call) -> Any:
        return {"site": call.site.id}

    @route("GET", "/api/v1/probe-stream", access=site_read("viewer", site_from="query"),
           query=Object({"site_id": Uuid()}), summary="A site read by query")
    def stream(self, call: Call) -> Any:
        return {"site": call.site.id}


def site_requests(running: Running, site_id: UUID) -> Iterator[tuple[Route, str, str]]:
    """
    Every site-scoped route as C{(route, method, path)} against C{site_id};
    other path parameters get made-up values.  Deleting the site itself
    comes last.
    """
    def deletes_site(entry: Route) -> bool:
        return entry.spec.method == "DELETE" and entry.spec.path.endswith("<uuid:site_id>")

    for entry in sorted(running.dashboard.site_routes(), key=deletes_site):
        spec = entry.spec
        values: dict[str, Any] = {}
        for name, converter in spec.parameters():
            values[name] = site_id if name == "site_id" else (
                uuid.uuid4() if converter == "uuid" else 1 if converter == "int" else "x")
        path = spec.concrete(values)
        if spec.access.site_from == "query":
            path += ("&" if "?" in path else "?") + f"site_id={site_id}"
        yield entry, spec.method, path


async def call(browser: Browser, entry: Route, method: str, path: str,
               token: str | None = None) -> Reply:
    """
    One request as the route expects it: JSON for the API, a form for
    pages, only the status and headers of a stream.
    """
    if entry.spec.streams:
        return await browser.status(method, path, token=token)
    if entry.spec.api or token is not None:
        body = {} if entry.spec.write else None
        return await browser.api(method, path, body, token=token)
    if entry.spec.write:
        return await browser.form(path, {}, headers={"Accept": "application/json"})
    return await browser.request(method, path, headers={"Accept": "application/json"})


def authorized(reply: Reply) -> bool:
    """
    Whether a request got past authorization: not 401 or 403, and not the
    404 of a site the caller may not see (a missing thing of a site the
    caller sees has its own code: decision_not_found, ...).
    """
    if reply.code in (401, 403):
        return False
    if reply.code == 404:
        return reply.json()["error"]["code"] != "not_found"
    return True


class SiteAuthorizationTests(TestCase):
    """Every site-scoped route checks membership server-side, and hides other sites."""

    timeout = 120

    async def _world(self) -> tuple[Running, UUID, Browser, Browser, Browser]:
        running = await start_dashboard(self, extra_groups=[SiteProbe()])
        owner = await running.user("owner@example.com")
        await running.user("stranger@example.com")
        viewer = await running.user("viewer@example.com")
        site_id = await running.site(owner, "shop.example.com")
        await running.add_member(site_id, viewer, "viewer")
        return (running, site_id, await running.sign_in("owner@example.com"),
                await running.sign_in("stranger@example.com"),
                await running.sign_in("viewer@example.com"))

    async def test_routes_exist(self) -> None:
        """The walk covers real routes (and this test's probes)."""
        running, site_id, *_ = await self._world()
        paths = {(e.spec.method, e.spec.path) for e, _, _ in site_requests(running, site_id)}
        for method, path in (
                ("GET", "/api/v1/sites/<uuid:site_id>/membership"),
                ("POST", "/api/v1/sites/<uuid:site_id>/probe"),
                ("GET", "/api/v1/stream"), ("GET", "/api/v1/sites/<uuid:site_id>"),
                ("PATCH", "/api/v1/sites/<uuid:site_id>"),
                ("DELETE", "/api/v1/sites/<uuid:site_id>"),
                ("POST", "/api/v1/sites/<uuid:site_id>/verify"),
                ("GET", "/api/v1/sites/<uuid:site_id>/requests/export"),
                ("GET", "/api/v1/sites/<uuid:site_id>/requests/<key>"),
                ("POST", "/api/v1/sites/<uuid:site_id>/invitations"),
                ("DELETE", "/api/v1/sites/<uuid:site_id>/decisions/<uuid:decision_id>"),
                ("POST", "/api/v1/sites/<uuid:site_id>/exclusions"),
                ("GET", "/sites/<uuid:site_id>"), ("POST", "/sites/<uuid:site_id>/settings"),
                ("POST", "/sites/<uuid:site_id>/delete"),
                ("POST", "/sites/<uuid:site_id>/members/<uuid:user_id>/role")):
            self.assertIn((method, path), paths)
        self.assertGreater(len(paths), 50)

    async def test_non_member_gets_404(self) -> None:
        """
        A signed-in non-member gets 404 on every site route, the same answer
        as for a site that does not exist.
        """
        running, site_id, _, stranger, _ = await self._world()
        missing = uuid.uuid4()
        for entry, method, path in site_requests(running, site_id):
            reply = await call(stranger, entry, method, path)
            self.assertEqual(reply.code, 404, f"{method} {path}: {reply.text}")
            self.assertEqual(reply.json()["error"]["code"], "not_found")
            nothing = await call(stranger, entry, method, path.replace(str(site_id),
                                                                        str(missing)))
            self.assertEqual(nothing.code, 404)
            self.assertEqual(nothing.json()["error"], reply.json()["error"])

    async def test_owner_allowed(self) -> None:
        """The owner gets past authorization on every site route."""
        running, site_id, owner, _, _ = await self._world()
        for entry, method, path in site_requests(running, site_id):
            reply = await call(owner, entry, method, path)
            self.assertTrue(authorized(reply), f"{method} {path}: {reply.code} {reply.text}")

    async def test_roles(self) -> None:
        """A viewer reads, and gets 403 (not 404: it sees the site) where more is needed."""
        running, site_id, _, _, viewer = await self._world()
        for entry, method, path in site_requests(running, site_id):
            reply = await call(viewer, entry, method, path)
            if entry.spec.access.role == "viewer":
                self.assertTrue(authorized(reply), f"{method} {path}: {reply.text}")
            else:
                self.assertEqual(reply.code, 403, f"{method} {path}: {reply.text}")
                self.assertEqual(reply.json()["error"]["code"], "forbidden")
        membership = await viewer.api("GET", f"/api/v1/sites/{site_id}/membership")
        self.assertEqual(membership.json()["role"], "viewer")
        self.assertFalse(membership.json()["can_write"])

    async def test_role_change_applies_at_once(self) -> None:
        """Promoting a viewer to admin takes effect on the very next request."""
        running, site_id, _, _, viewer = await self._world()
        path = f"/api/v1/sites/{site_id}/probe"
        self.assertEqual((await viewer.api("POST", path, {})).code, 403)
        await running.db.query("test.promote", "UPDATE site_members SET role = 'admin'"
                               " WHERE site_id = %s AND role = 'viewer'", (site_id,))
        reply = await viewer.api("POST", path, {})
        self.assertEqual((reply.code, reply.json()["role"]), (200, "admin"))

    async def test_global_admin(self) -> None:
        """A global administrator who is not a member acts as owner."""
        running, site_id, *_ = await self._world()
        await running.user("root@example.com", admin=True)
        admin = await running.sign_in("root@example.com")
        sites = (await admin.api("GET", "/api/v1/sites")).json()["items"]
        self.assertEqual([(s["domain"], s["role"]) for s in sites], [("shop.example.com", None)])
        for entry, method, path in site_requests(running, site_id):
            reply = await call(admin, entry, method, path)
            self.assertTrue(authorized(reply), f"{method} {path}: {reply.text}")
        writes = [r for r in site_requests(running, site_id) if r[0].spec.write]
        overrides = await running.audit("authz.admin_override")
        self.assertEqual(len(overrides), len(writes))
        self.assertEqual({o[1] for o in overrides}, {str(site_id)})

    async def test_tokens(self) -> None:
        """
        A token limited to another site gets 404 on this one; a read-only
        token gets 403 on writes; an unauthenticated call gets 401.
        """
        running, site_id, owner, _, _ = await self._world()
        owner_user = (await running.accounts.store.user_by_email("owner@example.com"))[0]
        other_site = await running.site(owner_user, "blog.example.com")
        scoped = (await owner.api("POST", "/api/v1/tokens",
                                  {"name": "blog", "site_id": str(other_site)})).json()["token"]
        reading = (await owner.api("POST", "/api/v1/tokens",
                                   {"name": "ro", "read_only": True})).json()["token"]
        anonymous = running.browser()
        for entry, method, path in site_requests(running, site_id):
            if not entry.spec.api:
                continue
            reply = await call(anonymous, entry, method, path, token=scoped)
            self.assertEqual(reply.code, 404, f"{method} {path}")
            reply = await call(anonymous, entry, method, path, token=reading)
            if entry.spec.write:
                self.assertEqual(reply.code, 403, f"{method} {path}")
                self.assertEqual(reply.json()["error"]["code"], "read_only_token")
            else:
                self.assertTrue(authorized(reply), f"{method} {path}: {reply.text}")
            if entry.spec.streams:
                reply = await anonymous.status(method, path)
            else:
                reply = await anonymous.api(method, path, {} if entry.spec.write else None,
                                            csrf=False)
            self.assertEqual(reply.code, 401)
        listed = (await anonymous.api("GET", "/api/v1/sites", token=scoped)).json()["items"]
        self.assertEqual([s["domain"] for s in listed], ["blog.example.com"])

    async def test_pages_send_to_sign_in(self) -> None:
        """Signed-in pages redirect a visitor to the sign-in page, keeping where it was going."""
        running = await start_dashboard(self)
        reply = await running.browser().get("/account")
        self.assertEqual((reply.code, reply.header("location")), (303, "/login?next=/account"))


class CsrfTests(TestCase):
    """Every state-changing request with cookies needs the CSRF token and a same-origin fetch."""

    timeout = 120

    async def _admin(self) -> tuple[Running, Browser, UUID]:
        running = await start_dashboard(self, extra_groups=[SiteProbe()])
        admin = await running.user("admin@example.com", admin=True)
        site_id = await running.site(admin, "shop.example.com")
        return running, await running.sign_in("admin@example.com"), site_id

    async def test_sweep(self) -> None:
        """Every write route in the table, without a token, is refused with 403 csrf_failed."""
        running, browser, site_id = await self._admin()
        writes = [e for e in running.dashboard.routes if e.spec.write and e.spec.csrf]
        self.assertGreater(len(writes), 10)
        for entry in writes:
            spec = entry.spec
            values = {name: site_id if name == "site_id" else uuid.uuid4()
                      for name, _ in spec.parameters()}
            path = spec.concrete(values)
            if spec.api:
                reply = await browser.api(spec.method, path, {}, csrf=False)
            else:
                reply = await browser.form(path, {}, csrf=False,
                                           headers={"Accept": "application/json"})
            self.assertEqual(reply.code, 403, f"{spec.method} {path}: {reply.text}")
            self.assertEqual(reply.json()["error"]["code"], "csrf_failed")
        self.assertGreater(len(await running.audit("auth.csrf_refused")), 5)

    async def test_token_and_fetch_metadata(self) -> None:
        """
        The right token passes; a wrong one, a cross-site or same-site
        fetch, or a foreign Origin is refused even with the right token.
        """
        running, browser, site_id = await self._admin()
        path = f"/api/v1/sites/{site_id}/probe"
        self.assertEqual((await browser.api("POST", path, {})).code, 200)
        self.assertEqual((await browser.api("POST", path, {}, headers={
            "X-CSRF-Token": "x" * 43})).code, 403)
        for site in ("cross-site", "same-site"):
            reply = await browser.api("POST", path, {}, headers={"Sec-Fetch-Site": site})
            self.assertEqual(reply.code, 403, site)
        for site in ("same-origin", "none"):
            reply = await browser.api("POST", path, {}, headers={"Sec-Fetch-Site": site})
            self.assertEqual(reply.code, 200, site)
        reply = await browser.api("POST", path, {}, headers={"Origin": "https://evil.example"})
        self.assertEqual(reply.code, 403)
        reply = await browser.api("POST", path, {}, headers={"Origin": running.base})
        self.assertEqual(reply.code, 200)
        form = await browser.form(f"/sites/{site_id}/probe", {},
                                  headers={"Accept": "application/json"})
        self.assertEqual(form.code, 200)

    async def test_bearer_needs_no_token_and_ignores_cookies(self) -> None:
        """A bearer request needs no CSRF token; with a bad token the cookie does not help."""
        running, browser, site_id = await self._admin()
        token = (await browser.api("POST", "/api/v1/tokens", {"name": "t"})).json()["token"]
        path = f"/api/v1/sites/{site_id}/probe"
        plain = running.browser()
        self.assertEqual((await plain.api("POST", path, {}, token=token)).code, 200)
        reply = await browser.api("POST", path, {}, token="veil_pat_" + "x" * 50)
        self.assertEqual(reply.code, 401)
        self.assertEqual(reply.json()["error"]["code"], "invalid_token")

    async def test_sign_in_form(self) -> None:
        """The sign-in form needs the pre-session token: a cross-site login is refused."""
        running = await start_dashboard(self)
        await running.user("ann@example.com")
        cold = running.browser()
        reply = await cold.form("/login", {"email": "ann@example.com", "password": PASSWORD},
                                headers={"Accept": "application/json"})
        self.assertEqual(reply.code, 403)
        forged = running.browser()
        await forged.get("/login")
        reply = await forged.form("/login", {"email": "ann@example.com", "password": PASSWORD,
                                             "csrf_token": "A" * 43})
        self.assertEqual(reply.code, 403)
        self.assertIsNone(forged.cookie("veil_session"))



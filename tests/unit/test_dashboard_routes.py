"""Tests for route declarations (L{veil.dashboard.web}): what the dashboard refuses to start with."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from veil.config import load
from veil.dashboard.dashboard import Dashboard, content_security_policy
from veil.dashboard.schema import Object, Uuid
from veil.dashboard.services import Services
from veil.dashboard.web import (
    ANONYMOUS,
    Access,
    RouteError,
    route,
    safe_next,
    site_read,
    site_write,
    user_read,
    user_write,
)


def build(*groups: object) -> Dashboard:
    services = Services(load(None, {}), clock=Clock(), reactor=None)
    return Dashboard(services, list(groups))


class DeclarationTests(SynchronousTestCase):
    """A route without a proper declaration stops the dashboard from starting."""

    def test_access_is_required(self) -> None:
        """route() without access= is an error where it is written."""
        with self.assertRaises(TypeError):
            route("GET", "/x", summary="x")  # type: ignore[call-arg]

    def test_not_an_access(self) -> None:
        """Anything but an Access is refused at start-up."""
        class Group:
            @route("GET", "/x", access="anyone", summary="x")  # type: ignore[arg-type]
            def x(self, call: Any) -> None: ...

        with self.assertRaises(RouteError):
            build(Group())

    def test_mode_matches_method(self) -> None:
        """A GET declared write, or a POST declared read, is refused."""
        class Get:
            @route("GET", "/x", access=user_write(), summary="x")
            def x(self, call: Any) -> None: ...

        class Post:
            @route("POST", "/x", access=user_read(), summary="x")
            def x(self, call: Any) -> None: ...

        for group in (Get(), Post()):
            with self.assertRaises(RouteError):
                build(group)

    def test_site_routes_name_their_site(self) -> None:
        """A site route needs <uuid:site_id> in its path, or site_id in its query."""
        class NoId:
            @route("GET", "/api/v1/sites/<site>/x", access=site_read(), summary="x")
            def x(self, call: Any) -> None: ...

        class Query:
            @route("GET", "/api/v1/stream", access=site_read(site_from="query"),
                   query=Object({"site_id": Uuid()}), summary="x")
            def x(self, call: Any) -> None: ...

        with self.assertRaises(RouteError):
            build(NoId())
        dashboard = build(Query())
        self.assertEqual([r.spec.path for r in dashboard.site_routes()], ["/api/v1/stream"])

    def test_roles(self) -> None:
        """Only owner, admin and viewer are roles."""
        class Group:
            @route("POST", "/api/v1/sites/<uuid:site_id>/x", access=site_write("member"),
                   summary="x")
            def x(self, call: Any) -> None: ...

        with self.assertRaises(RouteError):
            build(Group())

    def test_twice(self) -> None:
        """The same method and path twice is refused."""
        class Group:
            @route("GET", "/x", access=ANONYMOUS, summary="x")
            def x(self, call: Any) -> None: ...

            @route("GET", "/x", access=ANONYMOUS, summary="y")
            def y(self, call: Any) -> None: ...

        with self.assertRaises(RouteError):
            build(Group())

    def test_summary_required(self) -> None:
        """Every route documents itself."""
        class Group:
            @route("GET", "/x", access=Access("user", "read"), summary="")
            def x(self, call: Any) -> None: ...

        with self.assertRaises(RouteError):
            build(Group())


class SafeNextTests(SynchronousTestCase):
    """Where to go after signing in is always a path on the dashboard."""

    def test_local_paths(self) -> None:
        """Paths are kept; anything that could leave the site becomes /."""
        self.assertEqual(safe_next("/account?x=1"), "/account?x=1")
        for bad in ("//evil.example", "https://evil.example", "/\\evil.example", "evil",
                    "/x\r\nSet-Cookie: a=b", "", None, "/" + "a" * 3000):
            self.assertEqual(safe_next(bad), "/", repr(bad))


class PolicyTests(SynchronousTestCase):
    """The Content-Security-Policy."""

    def test_strict(self) -> None:
        """Only this origin, no inline code, no framing; GitHub only as a form target."""
        policy = content_security_policy(("https://github.com",))
        self.assertIn("default-src 'self'", policy)
        self.assertIn("frame-ancestors 'none'", policy)
        self.assertIn("object-src 'none'", policy)
        self.assertIn("form-action 'self' https://github.com", policy)
        self.assertNotIn("unsafe", policy)
        self.assertEqual(policy.count("github"), 1)

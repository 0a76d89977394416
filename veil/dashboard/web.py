"""
How dashboard routes are declared, what a handler receives, and what it
returns.

A route is a method of a handler group (any object), declared with
L{route}; L{veil.dashboard.dashboard.Dashboard} binds the groups it is
given into one Klein app per instance.  Every route says who may call it
(L{Access}); there is no default, and the dashboard refuses to start with
a route whose declaration is missing or inconsistent (a C{GET} declared as
a write, a site route without a site id, ...)::

    class SitePages:
        def __init__(self, services: Services) -> None:
            self.services = services

        @route("GET", "/api/v1/sites/<uuid:site_id>/members", access=site_read("viewer"),
               summary="The members of a site", query=paging.QUERY,
               responses=[Response(200, "a page of members", paging.page_of(MEMBER))])
        async def members(self, call: Call) -> dict:
            page = Paging.from_query(call.query)
            ...  # call.site is the site, already checked: the caller is a member

Path syntax is Werkzeug's (C{<uuid:site_id>}, C{<int:n>}, C{<path:name>}).
Paths under C{/api/} speak JSON (bodies must be C{application/json});
the others are pages (bodies are HTML forms).

Handlers get a L{Call} and return a dict or list (JSON, 200), L{Json},
L{Html} (usually from C{call.render(...)}), L{Redirect} or L{Raw}; they
raise L{veil.errors.ApiError} (or L{HttpError}) for errors, which become
C{{"error": {"code", "message", "detail"}, "request_id"}} with the status
(an HTML page for a browser on a page route).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs
from twisted.web.iweb import IRequest

from veil.dashboard.schema import Object, Response, ValidationFailed
from veil.errors import ApiError

if TYPE_CHECKING:
    from veil.auth.accounts import Client, SessionGrant
    from veil.auth.store import SessionRecord, SiteAccess, TokenGrant, User
    from veil.dashboard.dashboard import Dashboard

#: Site roles, weakest first.
ROLES = ("viewer", "admin", "owner")
SAFE_METHODS = ("GET", "HEAD")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class RouteError(Exception):
    """A route declaration is missing or wrong: the dashboard does not start."""


# -- who may call a route -----------------------------------------------------------


@attrs.frozen
class Access:
    """
    What a route needs.

    @ivar who: C{anonymous}, C{user} (signed in), C{admin} (global
        administrator) or C{site} (a member of the site named in the path's
        C{site_id}, or in the query's with C{site_from="query"}).
    @ivar mode: C{read} (GET and HEAD only) or C{write} (POST, PUT,
        PATCH, DELETE only); C{any} for anonymous routes.  Read-only API
        tokens may call read routes only.
    @ivar role: for site routes, the weakest role allowed.
    @ivar tokens: whether API tokens may call it (account management is
        for signed-in people only).
    """

    who: str
    mode: str
    role: str | None = None
    tokens: bool = True
    site_from: str = "path"


ANONYMOUS = Access("anonymous", "any", tokens=False)


def user_read(*, tokens: bool = True) -> Access:
    return Access("user", "read", tokens=tokens)


def user_write(*, tokens: bool = True) -> Access:
    return Access("user", "write", tokens=tokens)


def admin_read(*, tokens: bool = True) -> Access:
    return Access("admin", "read", tokens=tokens)


def admin_write(*, tokens: bool = True) -> Access:
    return Access("admin", "write", tokens=tokens)


def site_read(role: str = "viewer", *, site_from: str = "path") -> Access:
    return Access("site", "read", role, site_from=site_from)


def site_write(role: str = "admin", *, site_from: str = "path") -> Access:
    return Access("site", "write", role, site_from=site_from)


# -- route declarations ---------------------------------------------------------------


_PARAM = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")


@attrs.frozen
class RouteSpec:
    """
    One route as declared: everything the framework, the OpenAPI
    description and the table-driven tests need.

    @ivar pre_session: an anonymous form page: give the browser a
        pre-session cookie (the sign-in forms' CSRF token is bound to it).
    @ivar csrf: check the CSRF token on writes (always, unless a route
        has another proof, such as a signature).
    @ivar referrer: the C{Referrer-Policy} (C{no-referrer} for pages with
        a secret in their URL).
    @ivar max_body: bytes a request body may have.
    @ivar idle_refresh: whether a call keeps the session alive (streams
        and background polls do not).
    """

    method: str
    path: str
    access: Access
    summary: str
    description: str = ""
    body: Object | None = None
    query: Object | None = None
    responses: tuple[Response, ...] = ()
    pre_session: bool = False
    csrf: bool = True
    referrer: str = "same-origin"
    max_body: int = 64 * 1024
    idle_refresh: bool = True
    tags: tuple[str, ...] = ()
    #: The answer is a stream that stays open (Server-Sent Events).
    streams: bool = False

    @property
    def api(self) -> bool:
        return self.path.startswith("/api/")

    @property
    def write(self) -> bool:
        return self.method in UNSAFE_METHODS

    def parameters(self) -> list[tuple[str, str]]:
        """The path's parameters: C{(name, converter)} in order."""
        return [(name, converter or "default") for converter, name in _PARAM.findall(self.path)]

    def concrete(self, values: Mapping[str, Any]) -> str:
        """The path with its parameters filled in from C{values} (tests, links)."""
        def fill(match: re.Match[str]) -> str:
            return str(values[match.group(2)])

        return _PARAM.sub(fill, self.path)

    def check(self) -> None:
        """@raise RouteError: when the declaration is inconsistent."""
        where = f"{self.method} {self.path}"
        access = self.access
        if not isinstance(access, Access):
            raise RouteError(f"{where}: no access declaration (access=...)")
        if self.method not in SAFE_METHODS + UNSAFE_METHODS:
            raise RouteError(f"{where}: method {self.method} is not supported")
        if access.who not in ("anonymous", "user", "admin", "site"):
            raise RouteError(f"{where}: unknown access {access.who!r}")
        if access.who != "anonymous":
            if access.mode == "read" and self.write:
                raise RouteError(f"{where}: declared read, but {self.method} changes state")
            if access.mode == "write" and not self.write:
                raise RouteError(f"{where}: declared write, but GET and HEAD never change state")
            if access.mode not in ("read", "write"):
                raise RouteError(f"{where}: mode must be read or write")
        if access.who == "site":
            if access.role not in ROLES:
                raise RouteError(f"{where}: site role must be one of {', '.join(ROLES)}")
            if access.site_from == "path":
                if ("site_id", "uuid") not in self.parameters():
                    raise RouteError(f"{where}: a site route needs <uuid:site_id> in its path")
            elif access.site_from == "query":
                if self.query is None or "site_id" not in self.query.fields:
                    raise RouteError(f"{where}: a site route needs site_id in its query")
            else:
                raise RouteError(f"{where}: site_from must be path or query")
        if self.body is not None and not self.write:
            raise RouteError(f"{where}: GET and HEAD take no body")
        if not self.summary:
            raise RouteError(f"{where}: a summary is required (it documents the API)")


def route(method: str, path: str, *, access: Access, summary: str,
          **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a handler method as the route C{method path} (see L{RouteSpec})."""
    responses = tuple(options.pop("responses", ()))
    spec = RouteSpec(method.upper(), path, access, summary, responses=responses, **options)

    def declare(fn: Callable[..., Any]) -> Callable[..., Any]:
        existing = getattr(fn, "__veil_routes__", ())
        fn.__veil_routes__ = (*existing, spec)  # type: ignore[attr-defined]
        return fn

    return declare


def declared_routes(group: object) -> list[tuple[RouteSpec, Callable[..., Any]]]:
    """The routes of a handler group, bound to it."""
    found = []
    for name in dir(type(group)):
        attribute = getattr(type(group), name, None)
        for spec in getattr(attribute, "__veil_routes__", ()):
            found.append((spec, getattr(group, name)))
    return found


@attrs.frozen
class Mounted:
    """A resource mounted beside the app (the operational endpoints)."""

    path: str
    summary: str
    methods: tuple[str, ...] = ("GET", "HEAD")
    access: Access = ANONYMOUS


@attrs.frozen
class NavItem:
    """A link in the page header; C{admin} items are for global administrators."""

    label: str
    href: str
    admin: bool = False


# -- what handlers receive and return -----------------------------------------------


@attrs.frozen
class Principal:
    """Who is calling: a signed-in session, or an API token acting for its user."""

    user: User
    session: SessionRecord | None = None
    token: TokenGrant | None = None


class HttpError(ApiError):
    """An L{ApiError} with response headers (C{Retry-After}, C{WWW-Authenticate}, ...)."""

    def __init__(self, code: str, message: str, detail: object = None, status: int = 400,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(code, message, detail, status)
        self.headers = dict(headers or {})


def not_found() -> HttpError:
    return HttpError("not_found", "There is nothing here.", status=404)


def missing(what: str) -> HttpError:
    """
    A 404 for a thing of a site the caller may see (a decision, a
    request, ...): C{decision_not_found}, distinct from the C{not_found} of
    a site the caller may not see.
    """
    return HttpError(f"{what.replace(' ', '_')}_not_found",
                     f"There is no such {what} on this site.", status=404)


def invalid(field: str, message: str, code: str = "invalid", status: int = 422) -> HttpError:
    """A validation error on one field, shaped like the framework's own (400 or 422)."""
    return HttpError("validation_failed", "Some fields are not valid.",
                     {"fields": [{"field": field, "code": code, "message": message}]},
                     status=status)


@attrs.frozen
class Json:
    value: Any
    status: int = 200
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Html:
    body: bytes
    status: int = 200
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Redirect:
    """A redirect to a path on the dashboard (never elsewhere: see L{safe_next})."""

    location: str
    status: int = 303


@attrs.frozen
class Raw:
    body: bytes
    content_type: bytes
    status: int = 200
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Delegate:
    """
    Answer with a C{twisted.web} resource that writes the response itself,
    over time (a live stream, a streamed export): the route's checks have
    run and the security headers are set; the resource sets the rest.
    """

    resource: Any


def safe_next(value: str | None, default: str = "/") -> str:
    """
    A local path to go to after signing in: C{value} when it is a path on
    this dashboard (C{/...}, not C{//host} nor C{/\\host}), else C{default}.
    """
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if any(ord(c) < 0x20 or c == "\x7f" for c in value) or len(value) > 2000:
        return default
    return value


@attrs.define(eq=False)
class Call:
    """
    One request to a route, as its handler sees it.

    @ivar params: the path's parameters (converted: a C{uuid} is a UUID).
    @ivar query: the validated query fields, when the route declares a query.
    @ivar body: the validated body, when the route declares one.
    @ivar invalid: for pages (HTML forms), what was wrong with the body:
        the handler shows the form again with the messages.  API routes
        never get here with an invalid body (they answer 422).
    @ivar site: for site routes, the site and the caller's role on it.
    """

    dashboard: Dashboard
    route: RouteSpec
    request: IRequest
    params: dict[str, Any]
    request_id: str
    client: Client
    query: dict[str, Any] = attrs.field(factory=dict)
    body: dict[str, Any] | None = None
    invalid: ValidationFailed | None = None
    principal: Principal | None = None
    site: SiteAccess | None = None
    _pre_session: str | None = None

    @property
    def user(self) -> User:
        assert self.principal is not None, "route is anonymous"
        return self.principal.user

    @property
    def session(self) -> SessionRecord | None:
        return None if self.principal is None else self.principal.session

    @property
    def services(self) -> Any:
        return self.dashboard.services

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.dashboard.services.clock.seconds(), UTC)

    def cookie(self, name: str) -> str | None:
        raw = self.request.getCookie(name.encode("ascii"))
        return None if raw is None else raw.decode("ascii", "replace")

    @property
    def secure(self) -> bool:
        return bool(self.request.isSecure())

    @property
    def session_cookie(self) -> str | None:
        """The raw session cookie the browser sent (ended when it signs in again)."""
        return self.cookie(self.dashboard.cookie_name("session", self.secure))

    @property
    def pre_session(self) -> str | None:
        return self._pre_session or self.cookie(self.dashboard.cookie_name("pre", self.secure))

    @property
    def csrf_token(self) -> str:
        """The token this page's forms must send back (session-bound, or pre-session)."""
        return self.dashboard.csrf_token(self)

    def render(self, template: str, status: int = 200, **context: Any) -> Html:
        """A page from C{template}, with the layout's context added."""
        return Html(self.dashboard.render_page(self, template, context), status)

    def redirect(self, location: str, status: int = 303) -> Redirect:
        return Redirect(safe_next(location), status)

    def sign_in(self, grant: SessionGrant) -> None:
        """Give the browser the new session's cookie (and forget its pre-session)."""
        self.dashboard.set_session_cookie(self, grant)

    def forget_session(self) -> None:
        """Expire the session cookie (after signing out)."""
        self.dashboard.clear_session_cookie(self)


def parse_uuid(value: str | None) -> UUID | None:
    if value is None:
        return None
    try:
        return UUID(value)
    except ValueError:
        return None


__all__ = [
    "ANONYMOUS",
    "ROLES",
    "Access",
    "Call",
    "Delegate",
    "Html",
    "HttpError",
    "Json",
    "Mounted",
    "NavItem",
    "Principal",
    "Raw",
    "Redirect",
    "RouteError",
    "RouteSpec",
    "admin_read",
    "admin_write",
    "declared_routes",
    "invalid",
    "missing",
    "not_found",
    "parse_uuid",
    "route",
    "safe_next",
    "site_read",
    "site_write",
    "user_read",
    "user_write",
]

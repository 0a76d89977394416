"""
The dashboard: one Klein app per instance, built from handler groups, and
the pipeline every request goes through.

For every response, whatever answers it (a route, a 404, a 413, the
operational endpoints mounted beside the app, an unexpected exception):
an C{X-Request-Id}, the security headers (a strict Content-Security-Policy
with no inline script and C{frame-ancestors 'none'}, C{nosniff}, a
C{Referrer-Policy}, no framing, C{Cache-Control: no-store} except for
versioned static files, HSTS over TLS).

For every route, in order: the request body's size (413) and type (415);
who is calling (a bearer token on API routes, else the session cookie);
whether they may (401, 403, and 404 for a site they may not see, so that
its existence is not disclosed); on writes, the CSRF defences (a
cross-site or same-site C{Sec-Fetch-Site}, or a foreign C{Origin}, is
refused; then the form field C{csrf_token} or the C{X-CSRF-Token} header
must carry the token bound to the session, or for the sign-in forms to the
pre-session cookie); then the body's and the query's declared fields (400,
422); then the handler.  Errors are C{{"error": {"code", "message",
"detail"}, "request_id"}} (a page for browsers on page routes); an
unexpected exception is a 500 naming the request id, logged with its
traceback.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from datetime import datetime
from io import BytesIO
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit
from uuid import UUID

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound

from veil import __version__
from veil.auth.accounts import Client, SessionGrant, SignInRefused
from veil.auth.credentials import new_secret, same
from veil.auth.passwords import HasherBusy
from veil.auth.ratelimit import retry_after_header
from veil.dashboard import render as rendering
from veil.dashboard.schema import JSON, TEXT, FieldError, ValidationFailed
from veil.dashboard.web import (
    ANONYMOUS,
    ROLES,
    Call,
    Delegate,
    Html,
    HttpError,
    Json,
    Mounted,
    NavItem,
    Principal,
    Raw,
    Redirect,
    RouteError,
    RouteSpec,
    declared_routes,
    not_found,
    parse_uuid,
    route,
    safe_next,
)
from veil.edge.plain import VeilRequest, WebSite
from veil.errors import ApiError, StoreUnavailable
from veil.proxy.headers import RequestIds

_log = Logger()

#: No request body is read beyond this, whatever the route (routes declare less).
HARD_BODY_LIMIT = 1 << 20
HSTS = "max-age=31536000; includeSubDomains"
PRE_SESSION_LIFETIME = 3600


def content_security_policy(form_targets: Sequence[str] = ()) -> str:
    """
    The policy of every response: this origin only, no inline script or
    style, no plugins, no framing, no C{<base>}; forms may also post to
    C{form_targets} (GitHub, for the sign-in redirect).
    """
    form = " ".join(("'self'", *form_targets))
    return ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self';"
            " font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none';"
            f" form-action {form}; frame-ancestors 'none'")


class DashboardRequest(VeilRequest):
    """
    A request whose body is never kept beyond L{HARD_BODY_LIMIT}: a bigger
    body is read and dropped, and the request is answered 413.
    """

    body_size = 0
    body_too_large = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > HARD_BODY_LIMIT:
            self.body_too_large = True
            self.content = BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self.body_size += len(data)
        if self.body_too_large:
            return
        if self.body_size > HARD_BODY_LIMIT:
            self.body_too_large = True
            self.content = BytesIO()
            return
        super().handleContentChunk(data)


def dashboard_site(resource: IResource, *, host: str | None = None, timeout: float = 60.0,
                   clock: Any = None) -> WebSite:
    """A twisted.web site for the dashboard: no access log, bounded bodies."""
    site = WebSite(resource, host=host, timeout=timeout, clock=clock)
    site.requestFactory = DashboardRequest
    return site


def _body_size(request: IRequest) -> int:
    size = getattr(request, "body_size", None)
    if isinstance(size, int) and size:
        return size
    content = request.content
    if content is None:
        return 0
    position = content.tell()
    content.seek(0, 2)
    end = content.tell()
    content.seek(position)
    return end


#: Reason phrases twisted.web does not know.
_REASONS = {422: b"Unprocessable Content", 429: b"Too Many Requests"}


def set_status(request: IRequest, code: int) -> None:
    request.setResponseCode(code, _REASONS.get(code))


def prefers_html(request: IRequest) -> bool:
    accept = (request.getHeader(b"accept") or b"").decode("latin-1").lower()
    return "text/html" in accept


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def to_json(value: Any) -> bytes:
    return json.dumps(value, default=_json_default, ensure_ascii=False).encode("utf-8") + b"\n"


@attrs.define(eq=False)
class Route:
    """A declared route bound to its handler."""

    spec: RouteSpec
    handler: Any


class _Root(Resource):
    """
    The dashboard's root: headers and request id on every response, the
    413 for oversized bodies, the mounted resources, then the Klein app.
    """

    isLeaf = True

    def __init__(self, dashboard: Dashboard) -> None:
        super().__init__()
        self._dashboard = dashboard

    def render(self, request: IRequest) -> Any:
        dashboard = self._dashboard
        dashboard.prepare(request)
        if getattr(request, "body_too_large", False):
            return dashboard.write_error(request, None, HttpError(
                "body_too_large", f"The request body is larger than {HARD_BODY_LIMIT} bytes.",
                status=413))
        mounted = dashboard.mounted.get(request.path)
        if mounted is not None:
            return mounted.render(request)
        return dashboard.klein_resource.render(request)


class Dashboard:
    """
    The dashboard's application.

    @param services: what handlers use (L{veil.dashboard.services.Services});
        its C{accounts} may arrive after start-up (until then routes that
        need it answer 503).
    @param groups: handler groups: objects whose methods are declared with
        L{veil.dashboard.web.route}.
    @param mounted: resources served beside the app, by exact path (the
        operational endpoints), each with its L{Mounted} description.
    @param nav: the header's links.
    """

    def __init__(self, services: Any, groups: Sequence[object],
                 mounted: Sequence[tuple[Mounted, IResource]] = (),
                 nav: Sequence[NavItem] = ()) -> None:
        self.services = services
        self.nav = tuple(nav)
        self.static = rendering.load_static()
        self.templates = rendering.templates(self.static)
        self.request_ids = RequestIds()
        github = services.config.github
        self.csp = content_security_policy(
            (_origin(github.base_url),) if github.enabled else ())
        self.mounted_routes = tuple(m for m, _ in mounted)
        self.mounted = {m.path.encode("ascii"): resource for m, resource in mounted}
        self.routes: list[Route] = []
        self.app = Klein()
        for group in (*groups, _FrameworkRoutes(self)):
            for spec, handler in declared_routes(group):
                self._add(spec, handler)
        self.app.handle_errors(NotFound)(self._not_found)
        self.app.handle_errors(MethodNotAllowed)(self._not_allowed)
        self.klein_resource = self.app.resource()
        self.root = _Root(self)
        #: For the edge's twisted.web site (L{veil.edge.apps}).
        self.root.request_factory = DashboardRequest

    def resource(self) -> IResource:
        return self.root

    def site(self, timeout: float = 60.0, clock: Any = None) -> WebSite:
        return dashboard_site(self.root, timeout=timeout, clock=clock)

    # -- the route table ----------------------------------------------------------

    def _add(self, spec: RouteSpec, handler: Any) -> None:
        spec.check()
        for existing in self.routes:
            if existing.spec.method == spec.method and existing.spec.path == spec.path:
                raise RouteError(f"{spec.method} {spec.path} is declared twice")
        if spec.path.encode("ascii") in self.mounted:
            raise RouteError(f"{spec.path} is mounted already")
        self.routes.append(Route(spec, handler))
        endpoint = f"{spec.method} {spec.path}"

        def serve(request: IRequest, **params: Any) -> Deferred[Any]:
            return Deferred.fromCoroutine(self._serve(spec, handler, request, params))

        self.app.route(spec.path, methods=[spec.method], endpoint=endpoint)(serve)

    def site_routes(self) -> list[Route]:
        """Every route that acts on one site (the authorization tests walk them)."""
        return [r for r in self.routes if r.spec.access.who == "site"]

    # -- every response ---------------------------------------------------------------

    def prepare(self, request: IRequest) -> str:
        """Give C{request} its id and the headers every response carries."""
        request_id = self.request_ids()
        request.veil_request_id = request_id
        headers = {
            b"x-request-id": request_id.encode("ascii"),
            b"content-security-policy": self.csp.encode("ascii"),
            b"x-content-type-options": b"nosniff",
            b"x-frame-options": b"DENY",
            b"referrer-policy": b"same-origin",
            b"cross-origin-opener-policy": b"same-origin",
            b"cross-origin-resource-policy": b"same-origin",
            b"permissions-policy": b"camera=(), microphone=(), geolocation=(), payment=(), usb=()",
            b"cache-control": b"no-store",
        }
        if request.isSecure():
            headers[b"strict-transport-security"] = HSTS.encode("ascii")
        if request.method not in (b"GET", b"HEAD"):
            headers[b"vary"] = b"Sec-Fetch-Site, Origin"
        for name, value in headers.items():
            request.setHeader(name, value)
        return request_id

    @staticmethod
    def cookie_name(kind: str, secure: bool) -> str:
        """C{__Host-veil_session} over TLS (host-only, Secure, Path=/), else C{veil_session}."""
        return f"__Host-veil_{kind}" if secure else f"veil_{kind}"

    def _set_cookie(self, request: IRequest, kind: str, value: str, max_age: int) -> None:
        secure = bool(request.isSecure())
        request.addCookie(self.cookie_name(kind, secure).encode("ascii"), value.encode("ascii"),
                          path=b"/", secure=secure, httpOnly=True, sameSite="lax",
                          max_age=str(max_age))

    def set_session_cookie(self, call: Call, grant: SessionGrant) -> None:
        # A new session always has the whole lifetime; the server's check is what counts.
        seconds = int(self.services.config.auth.session_lifetime)
        self._set_cookie(call.request, "session", grant.token, seconds)
        if call.pre_session is not None:
            self._set_cookie(call.request, "pre", "", 0)

    def clear_session_cookie(self, call: Call) -> None:
        self._set_cookie(call.request, "session", "", 0)

    def _ensure_pre_session(self, call: Call) -> None:
        if call.pre_session is None:
            value = new_secret()
            self._set_cookie(call.request, "pre", value, PRE_SESSION_LIFETIME)
            call._pre_session = value

    def csrf_token(self, call: Call) -> str:
        accounts = self.services.accounts
        if call.session is not None:
            return accounts.csrf_token(call.session)
        if call.pre_session is not None and accounts is not None:
            return accounts.pre_csrf_token(call.pre_session)
        return ""

    # -- pages ------------------------------------------------------------------------

    def render_page(self, call: Call | None, template: str, context: dict[str, Any],
                    request: IRequest | None = None) -> bytes:
        principal = None if call is None else call.principal
        user = None if principal is None else principal.user
        path = (call.request if call is not None else request).path.decode("latin-1")
        config = self.services.config
        base = {
            "user": user,
            "csrf_token": "" if call is None else call.csrf_token,
            "nav": [n for n in self.nav if user is not None and (user.is_admin or not n.admin)],
            "path": path,
            "request_id": (call.request_id if call is not None
                           else getattr(request, "veil_request_id", "")),
            "version": __version__,
            "github_enabled": config.github.enabled,
            "magic_links": config.auth.magic_links,
        }
        base.update(context)
        return rendering.render(self.templates, template, base)

    # -- the pipeline ---------------------------------------------------------------

    async def _serve(self, spec: RouteSpec, handler: Any, request: IRequest,
                     params: dict[str, Any]) -> Any:
        request_id = getattr(request, "veil_request_id", None) or self.prepare(request)
        ip = request.getClientAddress()
        client = Client(getattr(ip, "host", None),
                        (request.getHeader(b"user-agent") or b"").decode("latin-1")[:300] or None)
        call = Call(self, spec, request, params, request_id, client)
        if spec.referrer != "same-origin":
            request.setHeader(b"referrer-policy", spec.referrer.encode("ascii"))
        try:
            needs_accounts = spec.access.who != "anonymous" or spec.pre_session or spec.write
            if needs_accounts and self.services.accounts is None:
                raise HttpError("starting", "Veil is starting; try again in a moment.",
                                    status=503, headers={"Retry-After": "5"})
            await self._authenticate(call)
            await self._authorize(call)
            raw = self._read_body(call)
            if spec.write and spec.csrf:
                await self._check_csrf(call, raw)
            if spec.pre_session and not spec.write:
                self._ensure_pre_session(call)
            self._validate(call, raw)
            result = handler(call)
            if inspect.isawaitable(result):
                result = await result
            return self._write(call, result)
        except CancelledError:
            raise
        except Redirected as redirect:
            return self._write(call, redirect.target)
        except Exception as e:  # noqa: BLE001 - every failure becomes an answer
            return self.write_error(request, call, self._as_http_error(call, e))

    def _as_http_error(self, call: Call, error: Exception) -> HttpError:
        if isinstance(error, HttpError):
            return error
        if isinstance(error, ValidationFailed):
            status = 422 if call.route.write else 400
            return HttpError("validation_failed", "Some fields are not valid.",
                             {"fields": [e.as_json() for e in error.errors]}, status=status)
        if isinstance(error, SignInRefused):
            headers = ({"Retry-After": retry_after_header(error.retry_after)}
                       if error.retry_after is not None else {})
            return HttpError(error.code, error.message, status=error.status, headers=headers)
        if isinstance(error, ApiError):
            return HttpError(error.code, error.message, error.detail, error.status)
        if isinstance(error, HasherBusy):
            return HttpError("busy", "Too many sign-ins at once; try again in a few seconds.",
                             status=503, headers={"Retry-After": "5"})
        if isinstance(error, StoreUnavailable):
            return HttpError("store_unavailable", "The database does not answer; try again"
                             " shortly.", status=503, headers={"Retry-After": "5"})
        _log.failure("Dashboard request {request_id} to {method} {route} failed",
                     Failure(error), request_id=call.request_id, method=call.route.method,
                     route=call.route.path)
        return HttpError("internal_error", "Something went wrong on Veil's side. If it goes on,"
                         f" give this request id to your administrator: {call.request_id}.",
                         status=500)

    async def _authenticate(self, call: Call) -> None:
        spec, request = call.route, call.request
        if spec.access.who == "anonymous":
            return
        accounts = self.services.accounts
        authorization = request.getHeader(b"authorization")
        if spec.api and authorization is not None:
            scheme, _, value = authorization.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise HttpError("unauthenticated", "Send an API token as"
                                " 'Authorization: Bearer <token>'.", status=401,
                                headers={"WWW-Authenticate": 'Bearer realm="veil"'})
            grant = await accounts.token(value.strip(), call.client)
            if grant is None:
                raise HttpError("invalid_token", "The API token is not valid: it may be"
                                " mistyped, expired or revoked.", status=401,
                                headers={"WWW-Authenticate":
                                         'Bearer realm="veil", error="invalid_token"'})
            call.principal = Principal(grant.user, token=grant)
            return
        session = await accounts.session(call.session_cookie, call.client,
                                         touch=spec.idle_refresh)
        if session is not None:
            call.principal = Principal(session.user, session=session)

    async def _authorize(self, call: Call) -> None:
        spec, access = call.route, call.route.access
        if access.who == "anonymous":
            return
        principal = call.principal
        if principal is None:
            if not spec.api and call.request.method in (b"GET", b"HEAD"):
                raise Redirected(Redirect("/login?next=" + quote(
                    call.request.uri.decode("latin-1"), safe="/?=&")))
            raise HttpError("unauthenticated", "Sign in first.", status=401,
                            headers={"WWW-Authenticate": 'Bearer realm="veil"'} if spec.api
                            else {})
        token = principal.token
        if token is not None:
            if not access.tokens:
                raise HttpError("token_not_allowed", "API tokens cannot do this: sign in to"
                                " the dashboard.", status=403)
            if token.read_only and spec.write:
                raise HttpError("read_only_token", "This API token is read-only.", status=403)
        if access.who == "admin" and not principal.user.is_admin:
            raise HttpError("forbidden", "Only administrators can do this.", status=403)
        if access.who == "site":
            await self._authorize_site(call)

    async def _authorize_site(self, call: Call) -> None:
        access = call.route.access
        principal = call.principal
        assert principal is not None
        if access.site_from == "path":
            site_id = call.params.get("site_id")
        else:
            site_id = parse_uuid(call.request.args.get(b"site_id", [b""])[0].decode(
                "latin-1", "replace").strip() or None)
        if not isinstance(site_id, UUID):
            raise not_found()
        if principal.token is not None and principal.token.site_id not in (None, site_id):
            raise not_found()
        found = await self.services.accounts.store.site_access(principal.user.id, site_id)
        if found is None:
            raise not_found()
        role = found.role
        if role is None:
            if not principal.user.is_admin:
                raise not_found()
            role = "owner"
            if call.route.write:
                # An administrator changing a site it is not a member of.
                await self.services.accounts.store.audit(
                    "authz.admin_override", actor=principal.user.id, target_type="site",
                    target_id=str(site_id), ip=call.client.ip,
                    detail={"route": f"{call.route.method} {call.route.path}"})
        if ROLES.index(role) < ROLES.index(access.role):
            raise HttpError("forbidden", f"Your role on this site ({role}) does not allow"
                            " this.", status=403)
        call.site = attrs.evolve(found, role=role)

    def _read_body(self, call: Call) -> Any:
        spec, request = call.route, call.request
        if not spec.write:
            return None
        size = _body_size(request)
        if size > spec.max_body:
            raise HttpError("body_too_large", f"The request body is larger than {spec.max_body}"
                            " bytes.", status=413)
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        media = content_type.split(";")[0].strip().lower()
        request.content.seek(0)
        data = request.content.read(spec.max_body + 1)
        if spec.api:
            if not data and spec.body is None:
                return {}
            if media != "application/json":
                raise HttpError("unsupported_media_type", "Send the body as application/json.",
                                status=415)
            try:
                return json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise HttpError("invalid_json", "The body is not valid JSON.",
                                {"reason": str(e)[:200]}, status=400) from None
        if not data and spec.body is None:
            return {}
        if media != "application/x-www-form-urlencoded":
            raise HttpError("unsupported_media_type",
                            "Send the form as application/x-www-form-urlencoded.", status=415)
        try:
            pairs = parse_qsl(data.decode("utf-8"), keep_blank_values=True, max_num_fields=100,
                              strict_parsing=bool(data))
        except (UnicodeDecodeError, ValueError):
            raise HttpError("invalid_form", "The form data is malformed.", status=400) from None
        form: dict[str, str] = {}
        for name, value in pairs:
            form.setdefault(name, value)
        return form

    async def _check_csrf(self, call: Call, raw: Any) -> None:
        principal = call.principal
        if principal is not None and principal.token is not None:
            return
        request = call.request
        site = (request.getHeader(b"sec-fetch-site") or b"").decode("latin-1").strip().lower()
        reason = None
        if site:
            if site not in ("same-origin", "none"):
                reason = f"sec-fetch-site {site}"
        else:
            origin = request.getHeader(b"origin")
            if origin is not None and origin.decode("latin-1") != self._own_origin(request):
                reason = "foreign origin"
        if reason is None:
            expected = call.csrf_token
            given = request.getHeader(b"x-csrf-token")
            if given is None and isinstance(raw, dict) and not call.route.api:
                given = raw.get("csrf_token")
            elif isinstance(given, bytes):
                given = given.decode("latin-1")
            if not expected or not isinstance(given, str) or not same(given, expected):
                reason = "token missing or wrong"
        if reason is None:
            return
        if call.session is not None:
            await self.services.accounts.store.audit(
                "auth.csrf_refused", actor=call.user.id, ip=call.client.ip,
                detail={"route": f"{call.route.method} {call.route.path}", "reason": reason})
        raise HttpError("csrf_failed", "This request did not come from a Veil page (its"
                        " CSRF check failed). Reload the page and try again.", status=403)

    @staticmethod
    def _own_origin(request: IRequest) -> str:
        scheme = "https" if request.isSecure() else "http"
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        return f"{scheme}://{host}"

    def _validate(self, call: Call, raw: Any) -> None:
        spec = call.route
        if spec.query is not None:
            args = {k.decode("latin-1"): v[0].decode("utf-8", "replace")
                    for k, v in call.request.args.items() if v}
            call.query = spec.query.parse(args, TEXT)
        if spec.body is None:
            if isinstance(raw, dict):
                call.body = {k: v for k, v in raw.items() if k != "csrf_token"}
            return
        source = JSON if spec.api else TEXT
        if spec.api and not isinstance(raw, dict):
            raise ValidationFailed([FieldError("(body)", "type",
                                               "The body must be a JSON object.")])
        if not spec.api:
            raw = {k: v for k, v in raw.items() if k != "csrf_token"}
        try:
            call.body = spec.body.parse(raw, source)
        except ValidationFailed as e:
            if spec.api:
                raise
            # A form: the handler shows it again, filled with what was typed.
            call.invalid = e
            call.body = {k: v for k, v in raw.items() if isinstance(v, str)}

    # -- answers --------------------------------------------------------------------

    def _write(self, call: Call, result: Any) -> Any:
        request = call.request
        if isinstance(result, Delegate):
            return result.resource
        if isinstance(result, Redirect):
            set_status(request, result.status)
            request.setHeader(b"location", safe_next(result.location).encode("latin-1"))
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b""
        if isinstance(result, Html):
            set_status(request, result.status)
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            for name, value in result.headers.items():
                request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
            return result.body
        if isinstance(result, Raw):
            set_status(request, result.status)
            request.setHeader(b"content-type", result.content_type)
            for name, value in result.headers.items():
                request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
            return result.body
        if not isinstance(result, Json):
            result = Json(result)
        set_status(request, result.status)
        request.setHeader(b"content-type", b"application/json")
        for name, value in result.headers.items():
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        return b"" if result.status == 204 else to_json(result.value)

    def write_error(self, request: IRequest, call: Call | None, error: ApiError) -> bytes:
        """Answer C{request} with C{error}: JSON, or a page for a browser on a page route."""
        request_id = getattr(request, "veil_request_id", "")
        set_status(request, error.status)
        for name, value in getattr(error, "headers", {}).items():
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        api = request.path.startswith(b"/api/")
        if not api and prefers_html(request):
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            try:
                return self.render_page(call, "error.html", {
                    "status": error.status, "code": error.code, "message": error.message,
                }, request=request)
            except Exception:  # noqa: BLE001 - fall back to JSON below
                _log.failure("Rendering the error page failed")
        request.setHeader(b"content-type", b"application/json")
        return to_json({"error": {"code": error.code, "message": error.message,
                                  "detail": error.detail}, "request_id": request_id})

    def _not_found(self, request: IRequest, failure: Failure) -> bytes:
        return self.write_error(request, None, not_found())

    def _not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        allowed = sorted(getattr(failure.value, "valid_methods", None) or [])
        error = HttpError("method_not_allowed", "This method is not allowed here.",
                          {"allowed": allowed}, status=405, headers={"Allow": ", ".join(allowed)})
        return self.write_error(request, None, error)


class Redirected(Exception):
    """Stop the pipeline and answer with a redirect (to the sign-in page)."""

    def __init__(self, target: Redirect) -> None:
        self.target = target


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class _FrameworkRoutes:
    """Routes every dashboard has: static files and the API's description."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    @route("GET", "/static/<name>", access=ANONYMOUS, summary="A static file (CSS, JavaScript,"
           " icons)", tags=("static",))
    def static(self, call: Call) -> Raw:
        found = self.dashboard.static.get(call.params["name"])
        if found is None:
            raise not_found()
        request = call.request
        version = request.args.get(b"v", [b""])[0].decode("latin-1")
        cache = ("public, max-age=31536000, immutable" if version == found.version
                 else "no-cache")
        headers = {"Cache-Control": cache, "ETag": found.etag.decode("ascii")}
        if request.getHeader(b"if-none-match") == found.etag:
            return Raw(b"", found.content_type, 304, headers)
        return Raw(found.data, found.content_type, 200, headers)

    @route("GET", "/api/v1/openapi.json", access=ANONYMOUS,
           summary="This API's description (OpenAPI 3)", tags=("meta",))
    def openapi(self, call: Call) -> Json:
        from veil.dashboard.openapi import describe

        return Json(describe(self.dashboard))


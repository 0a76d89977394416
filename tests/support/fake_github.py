"""
A local stand-in for GitHub's OAuth web flow and the two REST calls Veil
makes, on 127.0.0.1, speaking GitHub's wire format (github/docs:
C{authorizing-oauth-apps.md}, C{troubleshooting-*-errors.md}, the REST
reference for C{/user} and C{/user/emails}; PKCE per GitHub's changelog of
2025-07-14).  Veil's production code talks to it unchanged: the test sets
C{github.base_url} to L{FakeGithub.base_url} and C{github.api_url} to
L{FakeGithub.api_url} (GitHub Enterprise's layout, C{/api/v3}).

  - C{GET /login/oauth/authorize}: stands for the person at GitHub.  It
    checks the client id, the redirect URI against the registered callback
    (host and port exactly, path within), and C{code_challenge_method=S256};
    then, as the test decided (L{FakeGithub.consent}), redirects back with
    C{?code=...&state=...} or C{?error=access_denied&error_description=...
    &error_uri=...&state=...}.
  - C{POST /login/oauth/access_token}: form-encoded input; JSON out with
    C{Accept: application/json}, else form-encoded; errors
    (C{incorrect_client_credentials}, C{redirect_uri_mismatch},
    C{bad_verification_code}, C{unverified_user_email}) in the body with
    status 200, as GitHub does.  Codes are single use and live 10 minutes;
    the PKCE verifier must match the challenge.
  - C{GET /api/v3/user}, C{GET /api/v3/user/emails}: C{Authorization:
    Bearer} (or C{token}) required (401 C{Bad credentials}), a
    C{User-Agent} required (403), C{user:email} scope required for emails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

DOCS = "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors"


@attrs.define
class GithubUser:
    id: int
    login: str
    #: (address, primary, verified)
    emails: list[tuple[str, bool, bool]]
    name: str | None = None

    def user_json(self) -> dict[str, Any]:
        public = next((e for e, primary, verified in self.emails if primary and verified), None)
        return {
            "login": self.login, "id": self.id, "node_id": f"U_kgDO{self.id:08d}",
            "avatar_url": f"https://avatars.githubusercontent.com/u/{self.id}?v=4",
            "gravatar_id": "", "url": f"https://api.github.com/users/{self.login}",
            "html_url": f"https://github.com/{self.login}", "type": "User",
            "site_admin": False, "name": self.name, "company": None, "blog": "",
            "location": None, "email": public, "hireable": None, "bio": None,
            "twitter_username": None, "public_repos": 3, "public_gists": 0,
            "followers": 1, "following": 0, "created_at": "2015-03-01T10:00:00Z",
            "updated_at": "2026-11-01T10:00:00Z",
        }

    def emails_json(self) -> list[dict[str, Any]]:
        return [{"email": e, "primary": p, "verified": v,
                 "visibility": "private" if p else None} for e, p, v in self.emails]


@attrs.define
class _Grant:
    user: GithubUser
    redirect_uri: str
    challenge: str | None
    scope: str
    issued: float
    used: bool = False


class FakeGithub:
    """
    @ivar consent: what the person at GitHub does: C{"approve"} or C{"deny"}.
    @ivar user: who is signed in at GitHub.
    @ivar granted_scope: the scope the token gets (GitHub lets people grant
        less than asked).
    @ivar requests: every request, as C{(method, path, headers, form)}.
    """

    def __init__(self, client_id: str = "Iv1.fakeclientid", client_secret: str = "fake-secret",
                 callback: str = "http://127.0.0.1/auth/github/callback") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.callback = callback
        self.consent = "approve"
        self.user = GithubUser(583231, "octocat", [("octocat@example.com", True, True)])
        self.granted_scope = "read:user,user:email"
        self.unverified_primary = False
        self.requests: list[tuple[str, str, dict[str, str], dict[str, str]]] = []
        self._codes: dict[str, _Grant] = {}
        self._tokens: dict[str, _Grant] = {}
        self.port: Any = None

    def start(self) -> None:
        self.port = reactor.listenTCP(0, Site(_Root(self)), interface="127.0.0.1")

    def stop(self) -> Any:
        return self.port.stopListening()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/v3"

    def env(self) -> dict[str, str]:
        """The C{VEIL_GITHUB_*} settings that point Veil here."""
        return {"VEIL_GITHUB_CLIENT_ID": self.client_id,
                "VEIL_GITHUB_CLIENT_SECRET": self.client_secret,
                "VEIL_GITHUB_BASE_URL": self.base_url, "VEIL_GITHUB_API_URL": self.api_url}

    # -- the endpoints ----------------------------------------------------------------

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        redirect = query.get("redirect_uri") or self.callback
        if query.get("client_id") != self.client_id:
            return 404, {"Content-Type": "text/html"}, b"<h1>404</h1>"
        if not _redirect_allowed(self.callback, redirect):
            return _back(self.callback, {
                "error": "redirect_uri_mismatch",
                "error_description": "The redirect_uri MUST match the registered callback URL"
                                     " for this application.",
                "error_uri": DOCS, "state": query.get("state", "")})
        challenge = query.get("code_challenge")
        if challenge is not None and query.get("code_challenge_method") != "S256":
            return 400, {"Content-Type": "text/plain"}, b"code_challenge_method must be S256"
        state = query.get("state", "")
        if self.consent == "deny":
            return _back(redirect, {
                "error": "access_denied",
                "error_description": "The user has denied your application access.",
                "error_uri": DOCS, "state": state})
        code = secrets.token_hex(10)
        self._codes[code] = _Grant(self.user, redirect, challenge, self.granted_scope,
                                   reactor.seconds())
        return _back(redirect, {"code": code, "state": state})

    def access_token(self, form: dict[str, str], accept: str) -> tuple[int, dict[str, str], bytes]:
        def answer(fields: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
            if "application/json" in accept:
                return 200, {"Content-Type": "application/json; charset=utf-8"}, \
                    json.dumps(fields).encode()
            return 200, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, \
                urlencode(fields).encode()

        def error(code: str, description: str) -> tuple[int, dict[str, str], bytes]:
            return answer({"error": code, "error_description": description,
                           "error_uri": f"{DOCS}#{code.replace('_', '-')}"})

        if form.get("client_id") != self.client_id or \
                form.get("client_secret") != self.client_secret:
            return error("incorrect_client_credentials",
                         "The client_id and/or client_secret passed are incorrect.")
        grant = self._codes.get(form.get("code", ""))
        if grant is None or grant.used or reactor.seconds() - grant.issued > 600:
            return error("bad_verification_code", "The code passed is incorrect or expired.")
        grant.used = True
        if form.get("redirect_uri") and form["redirect_uri"] != grant.redirect_uri:
            return error("redirect_uri_mismatch", "The redirect_uri MUST match the registered"
                                                  " callback URL for this application.")
        if grant.challenge is not None:
            verifier = form.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            if digest.rstrip(b"=").decode() != grant.challenge:
                return error("bad_verification_code", "The code passed is incorrect or expired.")
        if self.unverified_primary:
            return error("unverified_user_email", "The user must have a verified primary email.")
        token = "gho_" + secrets.token_urlsafe(27).replace("-", "a").replace("_", "b")[:36]
        self._tokens[token] = grant
        return answer({"access_token": token, "scope": grant.scope, "token_type": "bearer"})

    def api(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        def reply(status: int, value: Any) -> tuple[int, dict[str, str], bytes]:
            return status, {"Content-Type": "application/json; charset=utf-8",
                            "X-GitHub-Media-Type": "github.v3; format=json"}, \
                json.dumps(value).encode()

        if not headers.get("user-agent"):
            return reply(403, {"message": "Request forbidden by administrative rules. Please"
                                          " make sure your request has a User-Agent header"})
        scheme, _, token = headers.get("authorization", "").partition(" ")
        grant = self._tokens.get(token) if scheme.lower() in ("bearer", "token") else None
        if grant is None:
            return reply(401, {"message": "Bad credentials",
                               "documentation_url": "https://docs.github.com/rest",
                               "status": "401"})
        route = urlsplit(path).path
        if route == "/api/v3/user":
            return reply(200, grant.user.user_json())
        if route == "/api/v3/user/emails":
            scopes = {s.strip() for s in grant.scope.split(",")}
            if not scopes & {"user", "user:email"}:
                return reply(404, {"message": "Not Found",
                                   "documentation_url": "https://docs.github.com/rest"})
            return reply(200, grant.user.emails_json())
        return reply(404, {"message": "Not Found",
                           "documentation_url": "https://docs.github.com/rest"})


def _redirect_allowed(callback: str, redirect: str) -> bool:
    """GitHub's rule: host and port exactly (loopback: any port), path within the callback's."""
    want, got = urlsplit(callback), urlsplit(redirect)
    if (want.scheme, want.hostname) != (got.scheme, got.hostname):
        return False
    if want.hostname not in ("127.0.0.1", "::1") and want.port != got.port:
        return False
    return got.path == want.path or got.path.startswith(want.path.rstrip("/") + "/")


def _back(url: str, fields: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    return 302, {"Location": f"{url}?{urlencode(fields)}"}, b""


class _Root(Resource):
    isLeaf = True

    def __init__(self, fake: FakeGithub) -> None:
        super().__init__()
        self.fake = fake

    def render(self, request: Any) -> bytes:
        path = request.uri.decode()
        method = request.method.decode()
        headers = {k.decode().lower(): v[0].decode() for k, v in
                   request.requestHeaders.getAllRawHeaders()}
        form: dict[str, str] = {}
        if method == "POST":
            request.content.seek(0)
            form = dict(parse_qsl(request.content.read().decode()))
        self.fake.requests.append((method, path, headers, form))
        route = urlsplit(path).path
        if method == "GET" and route == "/login/oauth/authorize":
            status, out, body = self.fake.authorize(dict(parse_qsl(urlsplit(path).query)))
        elif method == "POST" and route == "/login/oauth/access_token":
            status, out, body = self.fake.access_token(form, headers.get("accept", ""))
        elif method == "GET" and route.startswith("/api/v3/"):
            status, out, body = self.fake.api(path, headers)
        else:
            status, out, body = 404, {"Content-Type": "text/plain"}, b"Not Found"
        request.setResponseCode(status)
        for name, value in out.items():
            request.setHeader(name.encode(), value.encode())
        return body

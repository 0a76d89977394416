"""
The pages of signing in and out: password (C{/login}), e-mail link
(C{/login/link}, C{/login/magic}), GitHub (C{/auth/github/...}), the first
run (C{/setup}) and signing out (C{/logout}).

They are anonymous form pages: the browser gets a pre-session cookie on
the first GET, the forms carry a CSRF token bound to it, and signing in
replaces it with the session cookie.  Pages with a secret in their URL (the
setup and e-mail links) are served with C{Referrer-Policy: no-referrer}.
"""

from __future__ import annotations

from typing import Any

from veil.auth.accounts import SignInRefused
from veil.auth.emails import InvalidEmail
from veil.auth.passwords import WeakPassword
from veil.auth.ratelimit import retry_after_header
from veil.auth.store import SetupUnavailable
from veil.dashboard.schema import Object, String
from veil.dashboard.services import Services
from veil.dashboard.web import (
    ANONYMOUS,
    Call,
    Html,
    Raw,
    Redirect,
    route,
    safe_next,
    user_write,
)

EMAIL = String(max_length=254, description="e-mail address")
#: Passwords are taken as typed: no trimming.  The rules for new ones are in veil.auth.passwords.
PASSWORD = String(max_length=1024, strip=False)
NEXT = String(max_length=2000)
TOKEN = String(max_length=100)

LOGIN = Object({"email": EMAIL, "password": PASSWORD, "next": NEXT},
               required=("email", "password"))
LINK_REQUEST = Object({"email": EMAIL}, required=("email",))
LINK_USE = Object({"token": TOKEN}, required=("token",))
GITHUB_START = Object({"next": NEXT})
GITHUB_CALLBACK = Object({"code": String(max_length=200), "state": String(max_length=100),
                          "error": String(max_length=100),
                          "error_description": String(max_length=500),
                          "error_uri": String(max_length=500)})
SETUP = Object({"token": TOKEN, "email": EMAIL, "password": PASSWORD,
                "password_confirm": PASSWORD},
               required=("token", "email", "password", "password_confirm"))
TOKEN_QUERY = Object({"token": TOKEN})
LOGIN_QUERY = Object({"next": NEXT, "email": String(max_length=254),
                      "notice": String(max_length=40)})

NOTICES = {
    "signed_out": "You are signed out.",
    "signed_out_everywhere": "You are signed out on every device.",
    "password_changed": "Your password is changed. Sign in with the new one.",
}


def _refused_page(call: Call, template: str, error: SignInRefused, **context: Any) -> Html:
    page = call.render(template, status=error.status, error=error.message, **context)
    if error.retry_after is not None:
        return Html(page.body, page.status, {"Retry-After": retry_after_header(error.retry_after)})
    return page


class SignInPages:
    def __init__(self, services: Services) -> None:
        self.services = services

    # -- password ---------------------------------------------------------------------

    def _login(self, call: Call, status: int = 200, **context: Any) -> Html:
        context.setdefault("email", "")
        context.setdefault("next", "/")
        context.setdefault("error", None)
        context.setdefault("notice", None)
        return call.render("login.html", status=status, **context)

    @route("GET", "/login", access=ANONYMOUS, pre_session=True, query=LOGIN_QUERY,
           summary="The sign-in page")
    def login_page(self, call: Call) -> Html:
        return self._login(call, next=safe_next(call.query.get("next")),
                           email=call.query.get("email", ""),
                           notice=NOTICES.get(call.query.get("notice", "")))

    @route("POST", "/login", access=ANONYMOUS, pre_session=True, body=LOGIN,
           summary="Sign in with e-mail address and password")
    async def login(self, call: Call) -> Html | Redirect:
        body = call.body or {}
        next_path = safe_next(body.get("next"))
        if call.invalid is not None:
            return self._login(call, 422, email=body.get("email", ""), next=next_path,
                               error="Enter your e-mail address and your password.")
        try:
            grant = await self.services.accounts.sign_in_password(
                body["email"], body["password"], call.client, replaces=call.session_cookie)
        except SignInRefused as e:
            return _refused_page(call, "login.html", e, email=body["email"], next=next_path,
                                 notice=None)
        call.sign_in(grant)
        return Redirect(next_path)

    # -- e-mail links ---------------------------------------------------------------

    @route("GET", "/login/link", access=ANONYMOUS, pre_session=True, query=LOGIN_QUERY,
           summary="The page that asks for a sign-in link by e-mail")
    def link_page(self, call: Call) -> Html:
        return call.render("login_link.html", email=call.query.get("email", ""), error=None,
                           sent=False)

    @route("POST", "/login/link", access=ANONYMOUS, pre_session=True, body=LINK_REQUEST,
           summary="Send a sign-in link by e-mail (the same answer whether or not the address"
                   " has an account)")
    async def send_link(self, call: Call) -> Html:
        body = call.body or {}
        if call.invalid is not None:
            return call.render("login_link.html", status=422, email=body.get("email", ""),
                               error="Enter your e-mail address.", sent=False)
        try:
            await self.services.accounts.request_magic_link(body["email"], call.pre_session,
                                                            call.client)
        except InvalidEmail as e:
            return call.render("login_link.html", status=422, email=body["email"],
                               error=str(e), sent=False)
        except SignInRefused as e:
            return _refused_page(call, "login_link.html", e, email=body["email"], sent=False)
        return call.render("login_link.html", email=body["email"], error=None, sent=True)

    @route("GET", "/login/magic", access=ANONYMOUS, pre_session=True, query=TOKEN_QUERY,
           referrer="no-referrer",
           summary="The page an e-mail link opens: asks for a click, consumes nothing")
    async def magic_page(self, call: Call) -> Html:
        token = call.query.get("token", "")
        state = await self.services.accounts.magic_link_state(token)
        messages = {
            "used": "This sign-in link has been used already.",
            "expired": "This sign-in link has expired: links work for 10 minutes.",
            "unknown": "This sign-in link is not valid.",
        }
        return call.render("magic.html", status=200 if state == "valid" else 400, token=token,
                           valid=state == "valid", error=messages.get(state))

    @route("POST", "/login/magic", access=ANONYMOUS, pre_session=True, body=LINK_USE,
           referrer="no-referrer", summary="Sign in with an e-mail link (single use)")
    async def use_link(self, call: Call) -> Html | Redirect:
        body = call.body or {}
        if call.invalid is not None:
            return call.render("magic.html", status=400, token="", valid=False,
                               error="This sign-in link is not valid.")
        try:
            grant = await self.services.accounts.use_magic_link(
                body["token"], call.pre_session, call.client, replaces=call.session_cookie)
        except SignInRefused as e:
            return _refused_page(call, "magic.html", e, token="", valid=False)
        call.sign_in(grant)
        return Redirect("/")

    # -- GitHub -----------------------------------------------------------------------

    @route("POST", "/auth/github/start", access=ANONYMOUS, pre_session=True, body=GITHUB_START,
           summary="Start signing in with GitHub (redirects to GitHub)")
    async def github_start(self, call: Call) -> Raw | Html:
        body = call.body or {}
        try:
            url = await self.services.accounts.github_start(
                call.pre_session, safe_next(body.get("next")), call.client)
        except SignInRefused as e:
            return _refused_page(call, "login.html", e, email="", next="/", notice=None)
        return Raw(b"", b"text/plain; charset=utf-8", 303, {"Location": url})

    @route("GET", "/auth/github/callback", access=ANONYMOUS, pre_session=True,
           query=GITHUB_CALLBACK, referrer="no-referrer",
           summary="Where GitHub sends the browser back")
    async def github_callback(self, call: Call) -> Html | Redirect:
        query = call.query
        try:
            grant, return_to = await self.services.accounts.github_finish(
                query.get("state"), query.get("code"), query.get("error"), call.pre_session,
                call.client, replaces=call.session_cookie)
        except SignInRefused as e:
            return _refused_page(call, "login.html", e, email="", next="/", notice=None)
        call.sign_in(grant)
        return Redirect(safe_next(return_to))

    # -- first run ------------------------------------------------------------------

    def _setup(self, call: Call, state: str, token: str, status: int = 200,
               **context: Any) -> Html:
        context.setdefault("email", "")
        context.setdefault("error", None)
        context.setdefault("field_errors", {})
        return call.render("setup.html", status=status, state=state, token=token, **context)

    @route("GET", "/setup", access=ANONYMOUS, pre_session=True, query=TOKEN_QUERY,
           referrer="no-referrer", summary="The first-run page that creates the first"
                                           " administrator")
    async def setup_page(self, call: Call) -> Html:
        token = call.query.get("token", "")
        state = await self.services.accounts.setup_state(token)
        return self._setup(call, state, token, 200 if state == "valid" else 400)

    @route("POST", "/setup", access=ANONYMOUS, pre_session=True, body=SETUP,
           referrer="no-referrer", summary="Create the first administrator (single use)")
    async def setup(self, call: Call) -> Html | Redirect:
        body = call.body or {}
        token, email = body.get("token", ""), body.get("email", "")
        if call.invalid is not None:
            fields = {e.field: e.message for e in call.invalid.errors}
            return self._setup(call, "valid", token, 422, email=email, field_errors=fields,
                               error="Fill in every field.")
        if body["password"] != body["password_confirm"]:
            return self._setup(call, "valid", token, 422, email=email,
                               field_errors={"password_confirm": "The two passwords differ."})
        accounts = self.services.accounts
        try:
            grant = await accounts.complete_setup(token, email, body["password"], call.client)
        except InvalidEmail as e:
            return self._setup(call, "valid", token, 422, email=email,
                               field_errors={"email": str(e)})
        except WeakPassword as e:
            return self._setup(call, "valid", token, 422, email=email,
                               field_errors={"password": str(e)})
        except SetupUnavailable as e:
            return self._setup(call, "unavailable", token, 400, error=str(e))
        except SignInRefused as e:
            return _refused_page(call, "setup.html", e, state="valid", token=token,
                                 email=email, field_errors={})
        call.sign_in(grant)
        return Redirect("/")

    # -- signing out ----------------------------------------------------------------

    @route("POST", "/logout", access=user_write(tokens=False), summary="Sign out")
    async def logout(self, call: Call) -> Redirect:
        assert call.session is not None
        await self.services.accounts.sign_out(call.session, call.client)
        call.forget_session()
        call.request.setHeader(b"clear-site-data", b'"cache", "storage"')
        return Redirect("/login?notice=signed_out")

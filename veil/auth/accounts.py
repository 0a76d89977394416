"""
Signing in and out, and the credentials that come from it.

L{Accounts} ties the parts together: the store, the password hasher and
rules, the rate limiter, the mailer and the GitHub client.  Each sign-in
path ends in L{Accounts.grant}: a new session (new id, new CSRF secret; the
session the browser had before, if any, is ended), so a session id is never
carried across a sign-in (ASVS 7.2.4).

Answers that could tell whether an account exists are the same either way:
a wrong password and an unknown address get the same message after the same
work (a stand-in hash is checked), and a magic-link request always gets the
same reply while the mail, if any, goes out in the background.

Time comes from C{clock.seconds()}: sessions, links and rate limits expire
by the same clock, which tests advance.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from veil.auth import ratelimit
from veil.auth.credentials import (
    b64url,
    digest,
    display_prefix,
    is_api_token,
    keyed,
    looks_like_secret,
    new_api_token,
    new_secret,
    pkce_challenge,
)
from veil.auth.emails import InvalidEmail, email_ref, normalise_email
from veil.auth.github import GithubClient, GithubError
from veil.auth.passwords import PasswordHasher, PasswordRules
from veil.auth.ratelimit import Limit, RateLimiter
from veil.auth.store import (
    ApiToken,
    AuthStore,
    GithubConflict,
    SessionRecord,
    SetupUnavailable,
    TokenGrant,
    User,
)
from veil.config import AuthConfig
from veil.errors import VeilError
from veil.mail import Mailer, compose
from veil.store.admin import OPERATOR_EMAIL

_log = Logger()

SETUP_LINK_LIFETIME = timedelta(hours=1)
#: ASVS 5.0 6.5.5: out-of-band links live at most 10 minutes.
MAGIC_LINK_LIFETIME = timedelta(minutes=10)
#: GitHub's authorization codes live 10 minutes; so does the flow.
GITHUB_FLOW_LIFETIME = timedelta(minutes=10)
#: Setting a first password without the current one needs a sign-in this recent.
RECENT_SIGN_IN = timedelta(minutes=10)
#: API tokens' last use is written at most this often per token.
TOKEN_USE_INTERVAL = timedelta(seconds=60)
#: Longest API token lifetime.
MAX_TOKEN_LIFETIME = timedelta(days=366)


class SignInRefused(VeilError):
    """
    A sign-in (or another account action) is refused.

    @ivar code: the machine-readable error code.
    @ivar status: the HTTP status to answer with.
    @ivar retry_after: seconds to wait, for 429.
    """

    def __init__(self, code: str, message: str, status: int = 401,
                 retry_after: float | None = None) -> None:
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


@attrs.frozen
class SessionGrant:
    """A new session: C{token} goes into the cookie, and nowhere else."""

    token: str
    session_id: UUID
    user: User
    expires_at: datetime


@attrs.frozen
class Client:
    """Where a request comes from: its address and user agent."""

    ip: str | None
    user_agent: str | None = None


def _need_cookies(pre_session: str | None) -> None:
    if not pre_session:
        raise SignInRefused("cookies_needed", "Signing in needs cookies: allow them for this"
                            " site and reload the page.", status=400)


def _user_agent(text: str | None) -> str | None:
    return None if not text else text[:300]


@attrs.define(eq=False)
class Accounts:
    """
    @ivar public_url: the dashboard's URL as users reach it (no trailing
        slash): links in mail and the GitHub callback start with it.
    @ivar sender: the From address of sign-in mail.
    """

    store: AuthStore
    hasher: PasswordHasher
    rules: PasswordRules
    mailer: Mailer
    clock: Any
    config: AuthConfig
    public_url: str
    sender: str
    github: GithubClient | None = None
    key: bytes = b""
    limiter: RateLimiter | None = None
    _token_uses: dict[UUID, datetime] = attrs.field(factory=dict, init=False)
    _token_written: dict[UUID, datetime] = attrs.field(factory=dict, init=False)
    _background: set[Deferred[Any]] = attrs.field(factory=set, init=False)

    async def start(self) -> None:
        """Load (or create) the server key; start the hasher and the mailer."""
        self.key = await self.store.server_key(new_secret().encode("ascii"))
        self.limiter = RateLimiter(self.store.db, self.key)
        await self.hasher.start()
        self.mailer.start()

    async def stop(self) -> None:
        await self.flush_token_uses()
        await self.background()
        self.hasher.stop()
        self.mailer.stop()

    # -- time and keys ----------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    @property
    def idle(self) -> timedelta:
        return timedelta(seconds=self.config.session_idle_timeout)

    @property
    def lifetime(self) -> timedelta:
        return timedelta(seconds=self.config.session_lifetime)

    def pre_csrf_token(self, pre_session: str) -> str:
        """The CSRF token of the sign-in forms for a pre-session cookie value."""
        return b64url(keyed(self.key, "pre-csrf", pre_session))

    @staticmethod
    def csrf_token(session: SessionRecord) -> str:
        """The CSRF token of a session (derived from its secret, never the secret)."""
        return b64url(keyed(session.csrf_secret, "csrf", b""))

    @staticmethod
    def browser_hash(pre_session: str) -> bytes:
        return digest(pre_session)

    def email_ref(self, email: str) -> str:
        return email_ref(self.key, email)

    async def _limit(self, limit: Limit, value: str, action: str,
                     client: Client, actor: UUID | None = None) -> None:
        assert self.limiter is not None
        wait = await self.limiter.hit(limit, value, self.now())
        if wait is not None:
            await self.store.audit("auth.rate_limited", actor=actor, ip=client.ip,
                                   detail={"limit": limit.name, "action": action})
            raise SignInRefused("rate_limited",
                                "Too many attempts. Wait a little, then try again.",
                                status=429, retry_after=wait)

    # -- sessions -------------------------------------------------------------------

    async def grant(self, user: User, method: str, client: Client,
                    replaces: str | None = None) -> SessionGrant:
        """A new session for C{user}; the browser's previous session (C{replaces}) ends."""
        token = new_secret()
        now = self.now()
        expires = now + self.lifetime
        old = digest(replaces) if replaces and looks_like_secret(replaces) else None
        session_id = await self.store.create_session(
            user.id, digest(token), secrets.token_bytes(32), method, now, expires,
            _user_agent(client.user_agent), client.ip, old)
        _log.info("Signed in: user {user_id}, session {session_id}, by {method}",
                  user_id=str(user.id), session_id=str(session_id), method=method)
        return SessionGrant(token, session_id, user, expires)

    def session(self, cookie: str | None, client: Client,
                touch: bool = True) -> Deferred[SessionRecord | None]:
        """The live session a cookie value names, or L{None}."""
        if not cookie or not looks_like_secret(cookie):
            return succeed(None)
        return self.store.find_session(digest(cookie), self.now(), self.idle, client.ip, touch)

    async def sign_out(self, session: SessionRecord, client: Client) -> None:
        await self.store.end_session(session.user.id, session.id, "sign_out", session.user.id,
                                     client.ip)
        _log.info("Signed out: session {session_id}", session_id=str(session.id))

    # -- passwords ------------------------------------------------------------------

    async def sign_in_password(self, email: str, password: str, client: Client,
                               replaces: str | None = None) -> SessionGrant:
        try:
            address = normalise_email(email)
        except ValueError:
            address = email.strip()
        account = address.casefold()
        await self._limit(ratelimit.LOGIN_FAILURES_IP, ratelimit.ip_bucket(client.ip or "-"),
                          "password", client)
        try:
            await self._limit(ratelimit.LOGIN_FAILURES_ACCOUNT, account, "password", client)
        except SignInRefused:
            await self.limiter.refund(ratelimit.LOGIN_FAILURES_IP,
                                      ratelimit.ip_bucket(client.ip or "-"))
            raise
        found = await self.store.user_by_email(address) if address else None
        user, stored = found if found is not None else (None, None)
        verdict = await self.hasher.verify(stored, password)
        if not verdict.ok or user is None or user.disabled:
            reason = ("unknown_account" if user is None else
                      "disabled" if user.disabled and verdict.ok else "bad_password")
            await self.store.audit("auth.sign_in_failed", actor=None if user is None else user.id,
                                   ip=client.ip, detail={"method": "password", "reason": reason,
                                                         "email_ref": self.email_ref(address)})
            raise SignInRefused("sign_in_failed", "E-mail address or password is incorrect.")
        assert self.limiter is not None
        await self.limiter.reset(ratelimit.LOGIN_FAILURES_ACCOUNT, account)
        await self.limiter.refund(ratelimit.LOGIN_FAILURES_IP, ratelimit.ip_bucket(client.ip or "-"))
        if verdict.rehash is not None and stored is not None:
            await self.store.rehash(user.id, stored, verdict.rehash)
        return await self.grant(user, "password", client, replaces)

    async def change_password(self, session: SessionRecord, current: str | None, new: str,
                              end_others: bool, client: Client) -> int:
        """Set a new password; fires with the number of other sessions ended."""
        user = session.user
        await self._limit(ratelimit.ACCOUNT_CHANGES, str(user.id), "password_change", client,
                          actor=user.id)
        found = await self.store.user_by_id(user.id)
        stored = None if found is None else found[1]
        if stored is not None:
            verdict = await self.hasher.verify(stored, current or "")
            if not verdict.ok:
                await self.store.audit("auth.password_change_failed", actor=user.id,
                                       ip=client.ip, detail={"reason": "bad_password"})
                raise SignInRefused("wrong_password", "The current password is not right.",
                                    status=403)
        elif self.now() - session.created_at > RECENT_SIGN_IN:
            raise SignInRefused("reauthenticate", "Sign out and in again, then set a password"
                                " within ten minutes.", status=403)
        self.rules.check(new, user.email)
        hashed = await self.hasher.hash(new)
        return await self.store.set_password(user.id, hashed, session.id, end_others, client.ip)

    # -- first run ------------------------------------------------------------------

    async def create_setup_link(self) -> str | None:
        """
        A one-time link that creates the first administrator, valid one
        hour, when no account exists yet; L{None} otherwise.
        """
        token = new_secret()
        now = self.now()
        made = await self.store.create_setup_token(digest(token), now, now + SETUP_LINK_LIFETIME)
        return f"{self.public_url}/setup?token={token}" if made else None

    def setup_state(self, token: str) -> Deferred[str]:
        """C{valid}, C{used}, C{expired}, C{unknown}, or C{done} (an account exists)."""
        if not looks_like_secret(token):
            return succeed("unknown")
        return self.store.setup_state(digest(token), self.now())

    async def complete_setup(self, token: str, email: str, password: str,
                             client: Client) -> SessionGrant:
        await self._limit(ratelimit.LINK_USE_IP, ratelimit.ip_bucket(client.ip or "-"),
                          "setup", client)
        if not looks_like_secret(token):
            raise SetupUnavailable("This setup link is not valid.")
        address = normalise_email(email)
        if address.casefold() == OPERATOR_EMAIL:
            raise InvalidEmail("This address is reserved for the command line's account.")
        self.rules.check(password, address)
        hashed = await self.hasher.hash(password)
        user = await self.store.use_setup_token(digest(token), address, hashed, self.now(),
                                                client.ip)
        _log.info("First administrator created: user {user_id}", user_id=str(user.id))
        return await self.grant(user, "setup", client)

    # -- magic links ----------------------------------------------------------------

    async def request_magic_link(self, email: str, pre_session: str, client: Client) -> None:
        """
        Send a sign-in link to C{email} if it belongs to an enabled account.
        Answers the same, at once, whatever the address: the lookup and the
        mail happen in the background.
        """
        if not self.config.magic_links:
            raise SignInRefused("magic_links_disabled", "Sign-in by e-mail is turned off.",
                                status=404)
        _need_cookies(pre_session)
        await self._limit(ratelimit.MAGIC_LINK_IP, ratelimit.ip_bucket(client.ip or "-"),
                          "magic_link", client)
        address = normalise_email(email)
        d = Deferred.fromCoroutine(self._send_magic_link(address, self.browser_hash(pre_session),
                                                         client))
        self._background.add(d)
        d.addErrback(self._background_failed)
        d.addBoth(lambda _: self._background.discard(d))

    def _background_failed(self, failure: Any) -> None:
        if failure.check(VeilError):
            _log.warn("Sending a sign-in link failed: {error}", error=str(failure.value))
        else:
            _log.failure("Sending a sign-in link failed", failure)

    def background(self) -> Deferred[None]:
        """Fires once every background job started so far has finished (tests, shutdown)."""
        pending = list(self._background)
        d: Deferred[Any] = DeferredList(pending, consumeErrors=True) if pending else Deferred()
        if not pending:
            d.callback(None)
        return d.addCallback(lambda _: None)

    async def _send_magic_link(self, address: str, browser: bytes, client: Client) -> None:
        assert self.limiter is not None
        wait = await self.limiter.hit(ratelimit.MAGIC_LINK_ADDRESS, address.casefold(), self.now())
        if wait is not None:
            await self.store.audit("auth.rate_limited", ip=client.ip, detail={
                "limit": ratelimit.MAGIC_LINK_ADDRESS.name, "action": "magic_link",
                "email_ref": self.email_ref(address)})
            return
        found = await self.store.user_by_email(address)
        if found is None or found[0].disabled:
            _log.info("Sign-in link asked for an address without an enabled account"
                      " ({email_ref})", email_ref=self.email_ref(address))
            return
        user = found[0]
        token = new_secret()
        now = self.now()
        await self.store.create_magic_link(digest(token), user.id, browser, now,
                                           now + MAGIC_LINK_LIFETIME, client.ip)
        link = f"{self.public_url}/login/magic?token={token}"
        text = (
            "Hello,\n\n"
            "Someone, hopefully you, asked to sign in to Veil with this e-mail address.\n"
            "To sign in, open this link in the same browser within 10 minutes:\n\n"
            f"{link}\n\n"
            "The link works once. If you did not ask for it, ignore this message:\n"
            "nobody can use it without also having your browser.\n"
        )
        await self.mailer.send(compose(self.sender, user.email, "Your Veil sign-in link", text,
                                       self.clock.seconds()))
        _log.info("Sign-in link sent for user {user_id}", user_id=str(user.id))

    def magic_link_state(self, token: str) -> Deferred[str]:
        if not looks_like_secret(token):
            return succeed("unknown")
        return self.store.magic_link_state(digest(token), self.now())

    async def use_magic_link(self, token: str, pre_session: str | None, client: Client,
                             replaces: str | None = None) -> SessionGrant:
        await self._limit(ratelimit.LINK_USE_IP, ratelimit.ip_bucket(client.ip or "-"),
                          "magic_link_use", client)
        messages = {
            "used": "This sign-in link has been used already. Ask for a new one.",
            "expired": "This sign-in link has expired (links work for 10 minutes)."
                       " Ask for a new one.",
            "browser": "This link works only in the browser where you asked for it. Open it"
                       " there, or ask for a new link here.",
        }
        if not looks_like_secret(token) or not pre_session:
            reason = "browser" if looks_like_secret(token) else "unknown"
        else:
            reason, user = await self.store.use_magic_link(digest(token),
                                                           self.browser_hash(pre_session),
                                                           self.now())
            if reason == "ok" and user is not None:
                return await self.grant(user, "magic_link", client, replaces)
        await self.store.audit("auth.sign_in_failed", ip=client.ip,
                               detail={"method": "magic_link", "reason": reason})
        raise SignInRefused(f"link_{reason}", messages.get(reason, "This sign-in link is not"
                                                                   " valid. Ask for a new one."),
                            status=400 if reason != "browser" else 403)

    # -- GitHub ---------------------------------------------------------------------

    async def github_start(self, pre_session: str, return_to: str | None,
                           client: Client) -> str:
        """Record a new flow and give the URL to send the browser to."""
        if self.github is None:
            raise SignInRefused("github_disabled", "Sign-in with GitHub is not set up.",
                                status=404)
        _need_cookies(pre_session)
        await self._limit(ratelimit.GITHUB_IP, ratelimit.ip_bucket(client.ip or "-"), "github",
                          client)
        state, verifier = new_secret(), new_secret()
        now = self.now()
        await self.store.create_flow(digest(state), self.browser_hash(pre_session), verifier,
                                     return_to, now, now + GITHUB_FLOW_LIFETIME)
        return self.github.authorize_url(state, pkce_challenge(verifier))

    async def github_finish(self, state: str | None, code: str | None, error: str | None,
                            pre_session: str | None, client: Client,
                            replaces: str | None = None) -> tuple[SessionGrant, str | None]:
        """Check the callback, ask GitHub who it is, and sign that account in."""
        if self.github is None:
            raise SignInRefused("github_disabled", "Sign-in with GitHub is not set up.",
                                status=404)
        await self._limit(ratelimit.GITHUB_IP, ratelimit.ip_bucket(client.ip or "-"), "github",
                          client)
        flow = None
        if state and pre_session and looks_like_secret(state):
            flow = await self.store.take_flow(digest(state), self.browser_hash(pre_session),
                                              self.now())
        if flow is None:
            await self._github_failed(client, "bad_state")
            raise SignInRefused("github_bad_state", "This GitHub sign-in was not started here"
                                " or has expired. Start again.", status=400)
        if error is not None or not code:
            await self._github_failed(client, error or "no_code")
            if error == "access_denied":
                raise SignInRefused("github_denied", "You did not allow Veil to use your GitHub"
                                    " account, so you are not signed in.", status=403)
            raise SignInRefused("github_error", "GitHub did not sign you in. Try again.",
                                status=502)
        try:
            token = await self.github.exchange(code, flow.pkce_verifier)
            identity = await self.github.identity(token)
        except GithubError as e:
            await self._github_failed(client, e.reason)
            if e.reason == "unverified_email" or e.reason == "unverified_user_email":
                raise SignInRefused("github_unverified", "Your GitHub account has no verified"
                                    " e-mail address. Verify one at GitHub, then try again.",
                                    status=403) from None
            if e.reason == "scope":
                raise SignInRefused("github_scope", "Veil needs to read your verified e-mail"
                                    " addresses at GitHub. Allow it and try again.",
                                    status=403) from None
            _log.warn("GitHub sign-in failed: {error}", error=str(e))
            raise SignInRefused("github_error", "GitHub did not sign you in. Try again.",
                                status=502) from None
        try:
            user = await self.store.github_account(identity.id, identity.login,
                                                   list(identity.verified_emails), client.ip)
        except GithubConflict:
            await self._github_failed(client, "linked_elsewhere")
            raise SignInRefused("github_conflict", "Your Veil account is linked to another"
                                " GitHub account.", status=403) from None
        if user is None or user.disabled:
            await self._github_failed(client, "no_account" if user is None else "disabled")
            raise SignInRefused("github_no_account", "No Veil account matches this GitHub"
                                " account. Ask an administrator to add you with the e-mail"
                                " address you use at GitHub.", status=403)
        return await self.grant(user, "github", client, replaces), flow.return_to

    async def _github_failed(self, client: Client, reason: str) -> None:
        await self.store.audit("auth.sign_in_failed", ip=client.ip,
                               detail={"method": "github", "reason": reason})

    # -- API tokens -----------------------------------------------------------------

    async def create_token(self, user: User, name: str, site_id: UUID | None,
                           read_only: bool, lifetime: timedelta | None,
                           actor: UUID | None, client: Client) -> tuple[str, ApiToken]:
        """A new API token; its text is returned once and stored only hashed."""
        if actor is not None:
            await self._limit(ratelimit.ACCOUNT_CHANGES, str(actor), "token_create", client,
                              actor=actor)
        token, record = await issue_api_token(self.store, user.id, name, site_id, read_only,
                                              lifetime, actor, self.now(), client.ip)
        _log.info("API token {token_id} created for user {user_id}", token_id=str(record.id),
                  user_id=str(user.id))
        return token, record

    async def token(self, text: str, client: Client) -> TokenGrant | None:
        """The grant of a bearer token, or L{None} (counted against the address)."""
        grant = None
        if is_api_token(text):
            grant = await self.store.find_api_token(digest(text), self.now())
        if grant is None:
            assert self.limiter is not None
            wait = await self.limiter.hit(ratelimit.BEARER_FAILURES_IP,
                                          ratelimit.ip_bucket(client.ip or "-"), self.now())
            if wait is not None:
                raise SignInRefused("rate_limited", "Too many bad tokens from this address.",
                                    status=429, retry_after=wait)
            return None
        self._used(grant.id)
        return grant

    def _used(self, token_id: UUID) -> None:
        now = self.now()
        written = self._token_written.get(token_id)
        if written is None or now - written >= TOKEN_USE_INTERVAL:
            self._token_uses[token_id] = now

    async def flush_token_uses(self) -> int:
        """Write the tokens' last uses in one statement; returns how many."""
        if not self._token_uses:
            return 0
        uses, self._token_uses = self._token_uses, {}
        try:
            await self.store.record_token_uses(list(uses.items()))
        except Exception:
            for token_id, when in uses.items():
                self._token_uses.setdefault(token_id, when)
            raise
        self._token_written.update(uses)
        if len(self._token_written) > 100_000:
            self._token_written.clear()
        return len(uses)


async def issue_api_token(store: AuthStore, user_id: UUID, name: str, site_id: UUID | None,
                          read_only: bool, lifetime: timedelta | None, actor: UUID | None,
                          now: datetime, ip: str | None = None) -> tuple[str, ApiToken]:
    """
    Mint an API token for C{user_id} (the dashboard and C{veil tokens create}
    both come here): its text, returned once, and its stored record.
    """
    if lifetime is not None and lifetime > MAX_TOKEN_LIFETIME:
        raise SignInRefused("token_lifetime", "A token lives at most a year.", status=422)
    token = new_api_token()
    record = await store.create_api_token(
        user_id, name, digest(token), display_prefix(token), site_id, read_only, now,
        None if lifetime is None else now + lifetime, actor, ip)
    return token, record

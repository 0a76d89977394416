"""
The SQL of accounts, sessions, one-time links, sign-in flows, API tokens
and the audit log (schema 001 and 005).

The functions starting with C{_} run on a database thread inside one
transaction (L{veil.store.db.Database.transact}) and must be safe to run
again; they return plain records.  Times are passed in (C{now}) from the
caller's clock rather than read with C{now()}, so that expiry follows the
same clock everywhere, tests' included.  L{AuthStore} is the API on the
reactor thread.

Only hashes of client secrets reach these functions (see
L{veil.auth.credentials.digest}); audit details never carry an e-mail
address, a password, a token or a mail body.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
import psycopg
from psycopg.types.json import Jsonb
from twisted.internet.defer import Deferred

from veil.errors import VeilError
from veil.store.admin import OPERATOR_EMAIL
from veil.store.db import Database
from veil.store.locks import lock_key

#: At most this many live sessions per user; the oldest goes first (ASVS 7.1.2).
MAX_SESSIONS_PER_USER = 20
#: A session's last use is written at most this often (and when its address changes).
TOUCH_INTERVAL = timedelta(seconds=60)
SETUP_LOCK = lock_key("auth:setup")


class UserExists(VeilError):
    """An account with this e-mail address exists already."""


class UserNotFound(VeilError):
    """No account has this e-mail address (or id)."""


class LastAdministrator(VeilError):
    """The change would leave no enabled global administrator."""


class SetupUnavailable(VeilError):
    """The setup link cannot be used; the message says why."""


class GithubConflict(VeilError):
    """The matching Veil account is linked to another GitHub account."""


class MemberNotFound(VeilError):
    """The user is not a member of the site (or the invitation is not the site's)."""


class OwnerMembership(VeilError):
    """The site's owner keeps the owner role: it cannot be changed or removed."""


class AlreadyMember(VeilError):
    """The invited address belongs to a member of the site already."""


class InvitationUnavailable(VeilError):
    """
    An invitation link cannot be used.

    @ivar reason: C{used}, C{expired}, C{revoked}, C{unknown} or C{other_account}.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


# -- records -----------------------------------------------------------------------


@attrs.frozen
class User:
    id: UUID
    email: str
    display_name: str | None
    is_admin: bool
    has_password: bool
    github_login: str | None
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None


_USER = ("u.id, u.email, u.display_name, u.is_admin, u.password_hash IS NOT NULL, u.github_login,"
         " u.disabled_at IS NOT NULL, u.created_at, u.last_login_at")
_USER_COLUMNS = 9


def _user(row: tuple) -> User:
    return User(*row[:_USER_COLUMNS])


@attrs.frozen
class SessionRecord:
    """A live session (never its id: only the user's browser has that)."""

    id: UUID
    user: User
    csrf_secret: bytes
    auth_method: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    user_agent: str | None
    created_ip: str | None
    last_ip: str | None


_SESSION = ("s.id, s.csrf_secret, s.auth_method, s.created_at, s.last_seen_at, s.expires_at,"
            " s.user_agent, host(s.created_ip), host(s.last_ip)")


def _session(row: tuple, user: User) -> SessionRecord:
    return SessionRecord(row[0], user, bytes(row[1]), *row[2:9])


@attrs.frozen
class ApiToken:
    """An API token as lists show it."""

    id: UUID
    user_id: UUID
    name: str
    display_prefix: str
    site_id: UUID | None
    site_domain: str | None
    read_only: bool
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


_TOKEN = ("t.id, t.user_id, t.name, t.display_prefix, t.site_id, s.domain, t.read_only,"
          " t.created_at, t.expires_at, t.last_used_at, t.revoked_at"
          " FROM api_tokens t LEFT JOIN sites s ON s.id = t.site_id")


@attrs.frozen
class TokenGrant:
    """A valid API token presented with a request: who it acts for, and its limits."""

    id: UUID
    user: User
    site_id: UUID | None
    read_only: bool
    name: str


@attrs.frozen
class SiteAccess:
    """A site and the caller's role on it (L{None}: no membership)."""

    id: UUID
    domain: str
    status: str
    role: str | None


@attrs.frozen
class SiteSummary:
    id: UUID
    domain: str
    status: str
    mode: str
    role: str | None
    created_at: datetime


@attrs.frozen
class Member:
    """A member of a site: who, with which role, since when."""

    user_id: UUID
    email: str
    display_name: str | None
    role: str
    created_at: datetime
    #: The site's owner (C{sites.owner_id}): its role cannot change.
    is_owner: bool
    disabled: bool


_MEMBER = ("m.user_id, u.email, u.display_name, m.role, m.created_at, s.owner_id = m.user_id,"
           " u.disabled_at IS NOT NULL FROM site_members m JOIN users u ON u.id = m.user_id"
           " JOIN sites s ON s.id = m.site_id")


@attrs.frozen
class Invitation:
    """An invitation to a site, as lists and the acceptance page show it."""

    id: UUID
    site_id: UUID
    domain: str
    email: str
    role: str
    invited_by: str | None
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None
    revoked_at: datetime | None

    def state(self, now: datetime) -> str:
        """C{open}, C{accepted}, C{revoked} or C{expired}."""
        if self.accepted_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= now else "open"


_INVITATION = ("i.id, i.site_id, s.domain, i.email, i.role, u.email, i.created_at, i.expires_at,"
               " i.accepted_at, i.revoked_at FROM site_invitations i"
               " JOIN sites s ON s.id = i.site_id LEFT JOIN users u ON u.id = i.invited_by")


@attrs.frozen
class Flow:
    """A GitHub sign-in under way, taken from the store (single use)."""

    pkce_verifier: str
    return_to: str | None


# -- audit -------------------------------------------------------------------------


def audit(cur: psycopg.Cursor, action: str, *, actor: UUID | None = None,
          target_type: str | None = None, target_id: str | None = None,
          detail: dict[str, Any] | None = None, ip: str | None = None) -> None:
    """One C{audit_log} row, in the caller's transaction."""
    cur.execute(
        "INSERT INTO audit_log (actor_user_id, action, target_type, target_id, detail, ip)"
        " VALUES (%s, %s, %s, %s, %s, %s::inet)",
        (actor, action, target_type, target_id, Jsonb(detail or {}), ip),
    )


# -- server key --------------------------------------------------------------------


def _server_key(cur: psycopg.Cursor, candidate: bytes) -> bytes:
    cur.execute("INSERT INTO auth_secrets (name, secret) VALUES ('server', %s)"
                " ON CONFLICT (name) DO NOTHING", (candidate,))
    cur.execute("SELECT secret FROM auth_secrets WHERE name = 'server'")
    return bytes(cur.fetchone()[0])


# -- users ---------------------------------------------------------------------------


def _count_accounts(cur: psycopg.Cursor) -> int:
    """Accounts people use (the command line's built-in operator is not one)."""
    cur.execute("SELECT count(*) FROM users WHERE lower(email) IS DISTINCT FROM lower(%s)",
                (OPERATOR_EMAIL,))
    return cur.fetchone()[0]


def _user_by_email(cur: psycopg.Cursor, email: str) -> tuple[User, str | None] | None:
    cur.execute(f"SELECT {_USER}, u.password_hash FROM users u"
                " WHERE lower(u.email) = lower(%s) AND lower(u.email) <> lower(%s)",
                (email, OPERATOR_EMAIL))
    row = cur.fetchone()
    return None if row is None else (_user(row), row[_USER_COLUMNS])


def _user_by_id(cur: psycopg.Cursor, user_id: UUID) -> tuple[User, str | None] | None:
    cur.execute(f"SELECT {_USER}, u.password_hash FROM users u WHERE u.id = %s", (user_id,))
    row = cur.fetchone()
    return None if row is None else (_user(row), row[_USER_COLUMNS])


def _insert_user(cur: psycopg.Cursor, email: str, password_hash: str | None,
                 is_admin: bool) -> User:
    cur.execute(
        "INSERT INTO users AS u (email, password_hash, is_admin) VALUES (%s, %s, %s)"
        f" ON CONFLICT ((lower(email))) DO NOTHING RETURNING {_USER}",
        (email, password_hash, is_admin))
    row = cur.fetchone()
    if row is None:
        raise UserExists("an account with that e-mail address exists already")
    return _user(row)


def _create_user(cur: psycopg.Cursor, email: str, password_hash: str | None, is_admin: bool,
                 actor: UUID | None, ip: str | None) -> User:
    user = _insert_user(cur, email, password_hash, is_admin)
    audit(cur, "user.create", actor=actor, target_type="user", target_id=str(user.id),
          detail={"admin": is_admin, "password": password_hash is not None}, ip=ip)
    return user


def _list_users(cur: psycopg.Cursor) -> list[User]:
    cur.execute(f"SELECT {_USER} FROM users u WHERE lower(u.email) IS DISTINCT FROM lower(%s)"
                " ORDER BY lower(u.email)", (OPERATOR_EMAIL,))
    return [_user(row) for row in cur.fetchall()]


def _end_everything(cur: psycopg.Cursor, user_id: UUID, now: datetime) -> tuple[int, int]:
    """End every session and revoke every API token of a user."""
    cur.execute("DELETE FROM sessions WHERE user_id = %s", (user_id,))
    sessions = cur.rowcount
    cur.execute("UPDATE api_tokens SET revoked_at = %s WHERE user_id = %s AND revoked_at IS NULL",
                (now, user_id))
    return sessions, cur.rowcount


def _disable_user(cur: psycopg.Cursor, email: str, actor: UUID | None, now: datetime,
                  ip: str | None) -> tuple[User, bool]:
    found = _user_by_email(cur, email)
    if found is None:
        raise UserNotFound("no account has that e-mail address")
    user = found[0]
    cur.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user.id,))
    if user.disabled:
        return user, False
    if user.is_admin:
        cur.execute(
            "SELECT count(*) FROM users WHERE is_admin AND disabled_at IS NULL AND id <> %s"
            " AND lower(email) IS DISTINCT FROM lower(%s)", (user.id, OPERATOR_EMAIL))
        if cur.fetchone()[0] == 0:
            raise LastAdministrator("it is the last enabled administrator; add another first")
    cur.execute("UPDATE users SET disabled_at = %s WHERE id = %s", (now, user.id))
    sessions, tokens = _end_everything(cur, user.id, now)
    audit(cur, "user.disable", actor=actor, target_type="user", target_id=str(user.id),
          detail={"sessions_ended": sessions, "tokens_revoked": tokens}, ip=ip)
    return attrs.evolve(user, disabled=True), True


def _enable_user(cur: psycopg.Cursor, email: str, actor: UUID | None,
                 ip: str | None) -> tuple[User, bool]:
    found = _user_by_email(cur, email)
    if found is None:
        raise UserNotFound("no account has that e-mail address")
    user = found[0]
    if not user.disabled:
        return user, False
    cur.execute("UPDATE users SET disabled_at = NULL WHERE id = %s", (user.id,))
    audit(cur, "user.enable", actor=actor, target_type="user", target_id=str(user.id), ip=ip)
    return attrs.evolve(user, disabled=False), True


def _set_password(cur: psycopg.Cursor, user_id: UUID, password_hash: str,
                  keep_session: UUID | None, end_others: bool, ip: str | None) -> int:
    cur.execute("UPDATE users SET password_hash = %s WHERE id = %s", (password_hash, user_id))
    ended = 0
    if end_others:
        cur.execute("DELETE FROM sessions WHERE user_id = %s AND id IS DISTINCT FROM %s",
                    (user_id, keep_session))
        ended = cur.rowcount
    audit(cur, "auth.password_changed", actor=user_id, target_type="user",
          target_id=str(user_id), detail={"other_sessions_ended": ended}, ip=ip)
    return ended


def _rehash(cur: psycopg.Cursor, user_id: UUID, old: str, new: str) -> None:
    cur.execute("UPDATE users SET password_hash = %s WHERE id = %s AND password_hash = %s",
                (new, user_id, old))


# -- sessions ------------------------------------------------------------------------


def _create_session(cur: psycopg.Cursor, user_id: UUID, token_hash: bytes, csrf_secret: bytes,
                    method: str, now: datetime, expires_at: datetime, user_agent: str | None,
                    ip: str | None, replaces: bytes | None) -> UUID:
    if replaces is not None:
        cur.execute("DELETE FROM sessions WHERE id_hash = %s", (replaces,))
    cur.execute(
        "INSERT INTO sessions (id_hash, user_id, csrf_secret, auth_method, created_at,"
        " last_seen_at, expires_at, user_agent, created_ip, last_ip)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::inet, %s::inet) RETURNING id",
        (token_hash, user_id, csrf_secret, method, now, now, expires_at, user_agent, ip, ip))
    session_id = cur.fetchone()[0]
    cur.execute(
        "DELETE FROM sessions WHERE id_hash IN (SELECT id_hash FROM sessions WHERE user_id = %s"
        " ORDER BY created_at DESC, id OFFSET %s)", (user_id, MAX_SESSIONS_PER_USER))
    cur.execute("UPDATE users SET last_login_at = %s WHERE id = %s", (now, user_id))
    audit(cur, "auth.sign_in", actor=user_id, target_type="session", target_id=str(session_id),
          detail={"method": method}, ip=ip)
    return session_id


def _find_session(cur: psycopg.Cursor, token_hash: bytes, now: datetime, idle: timedelta,
                  ip: str | None, touch: bool) -> SessionRecord | None:
    cur.execute(f"SELECT {_SESSION}, s.id_hash, u.disabled_at IS NOT NULL, {_USER}"
                " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = %s",
                (token_hash,))
    row = cur.fetchone()
    if row is None:
        return None
    record = _session(row, _user(row[11:]))
    disabled = row[10]
    if disabled or record.expires_at <= now or record.last_seen_at + idle <= now:
        cur.execute("DELETE FROM sessions WHERE id_hash = %s", (token_hash,))
        return None
    if touch and (now - record.last_seen_at >= TOUCH_INTERVAL or
                  (ip is not None and ip != record.last_ip)):
        cur.execute("UPDATE sessions SET last_seen_at = %s, last_ip = %s::inet WHERE id_hash = %s",
                    (now, ip, token_hash))
        record = attrs.evolve(record, last_seen_at=now, last_ip=ip)
    return record


def _sessions_of(cur: psycopg.Cursor, user_id: UUID, now: datetime,
                 idle: timedelta) -> list[SessionRecord]:
    found = _user_by_id(cur, user_id)
    if found is None:
        return []
    cur.execute(f"SELECT {_SESSION} FROM sessions s WHERE s.user_id = %s AND s.expires_at > %s"
                " AND s.last_seen_at > %s ORDER BY s.last_seen_at DESC, s.id",
                (user_id, now, now - idle))
    return [_session(row, found[0]) for row in cur.fetchall()]


def _end_session(cur: psycopg.Cursor, user_id: UUID, session_id: UUID, reason: str,
                 actor: UUID | None, ip: str | None) -> bool:
    cur.execute("DELETE FROM sessions WHERE user_id = %s AND id = %s", (user_id, session_id))
    if not cur.rowcount:
        return False
    audit(cur, "auth.sign_out", actor=actor, target_type="session", target_id=str(session_id),
          detail={"reason": reason}, ip=ip)
    return True


def _end_other_sessions(cur: psycopg.Cursor, user_id: UUID, keep: UUID | None,
                        ip: str | None) -> int:
    cur.execute("DELETE FROM sessions WHERE user_id = %s AND id IS DISTINCT FROM %s",
                (user_id, keep))
    ended = cur.rowcount
    audit(cur, "auth.sessions_ended", actor=user_id, target_type="user", target_id=str(user_id),
          detail={"ended": ended, "kept": None if keep is None else str(keep)}, ip=ip)
    return ended


# -- one-time links ------------------------------------------------------------------


def _create_setup_token(cur: psycopg.Cursor, token_hash: bytes, now: datetime,
                        expires_at: datetime) -> bool:
    """A new setup link, unless an account exists; old unused ones stay valid until they expire."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (SETUP_LOCK,))
    if _count_accounts(cur):
        return False
    cur.execute("DELETE FROM auth_tokens WHERE purpose = 'setup' AND expires_at <= %s", (now,))
    cur.execute("INSERT INTO auth_tokens (token_hash, purpose, created_at, expires_at)"
                " VALUES (%s, 'setup', %s, %s)", (token_hash, now, expires_at))
    return True


def _link_state(cur: psycopg.Cursor, token_hash: bytes, purpose: str, now: datetime) -> str:
    """C{valid}, C{used}, C{expired} or C{unknown}."""
    cur.execute("SELECT used_at, expires_at FROM auth_tokens WHERE token_hash = %s"
                " AND purpose = %s", (token_hash, purpose))
    row = cur.fetchone()
    if row is None:
        return "unknown"
    if row[0] is not None:
        return "used"
    return "expired" if row[1] <= now else "valid"


def _setup_state(cur: psycopg.Cursor, token_hash: bytes, now: datetime) -> str:
    if _count_accounts(cur):
        return "done"
    return _link_state(cur, token_hash, "setup", now)


def _use_setup_token(cur: psycopg.Cursor, token_hash: bytes, email: str, password_hash: str,
                     now: datetime, ip: str | None) -> User:
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (SETUP_LOCK,))
    if _count_accounts(cur):
        raise SetupUnavailable("Veil already has an administrator: sign in instead.")
    cur.execute("UPDATE auth_tokens SET used_at = %s WHERE token_hash = %s AND purpose = 'setup'"
                " AND used_at IS NULL AND expires_at > %s RETURNING 1", (now, token_hash, now))
    if cur.fetchone() is None:
        state = _link_state(cur, token_hash, "setup", now)
        raise SetupUnavailable({
            "used": "This setup link has been used already.",
            "expired": "This setup link has expired (links are valid for one hour).",
        }.get(state, "This setup link is not valid."))
    cur.execute("DELETE FROM auth_tokens WHERE purpose = 'setup' AND token_hash <> %s",
                (token_hash,))
    user = _insert_user(cur, email, password_hash, True)
    audit(cur, "auth.setup_used", actor=user.id, target_type="user", target_id=str(user.id),
          detail={"admin": True}, ip=ip)
    return user


def _create_magic_link(cur: psycopg.Cursor, token_hash: bytes, user_id: UUID,
                       browser_hash: bytes, now: datetime, expires_at: datetime,
                       ip: str | None) -> None:
    cur.execute("INSERT INTO auth_tokens (token_hash, purpose, user_id, browser_hash,"
                " created_at, expires_at) VALUES (%s, 'magic_link', %s, %s, %s, %s)",
                (token_hash, user_id, browser_hash, now, expires_at))
    audit(cur, "auth.magic_link_sent", actor=user_id, target_type="user",
          target_id=str(user_id), ip=ip)


def _use_magic_link(cur: psycopg.Cursor, token_hash: bytes, browser_hash: bytes,
                    now: datetime) -> tuple[str, User | None]:
    """C{("ok", user)}, or a reason (C{used}, C{expired}, C{unknown}, C{browser}) and L{None}."""
    cur.execute("SELECT browser_hash FROM auth_tokens WHERE token_hash = %s"
                " AND purpose = 'magic_link'", (token_hash,))
    row = cur.fetchone()
    if row is None:
        return "unknown", None
    if bytes(row[0]) != browser_hash:
        state = _link_state(cur, token_hash, "magic_link", now)
        return ("browser" if state == "valid" else state), None
    cur.execute("UPDATE auth_tokens SET used_at = %s WHERE token_hash = %s"
                " AND purpose = 'magic_link' AND used_at IS NULL AND expires_at > %s"
                " RETURNING user_id", (now, token_hash, now))
    used = cur.fetchone()
    if used is None:
        return _link_state(cur, token_hash, "magic_link", now), None
    found = _user_by_id(cur, used[0])
    if found is None or found[0].disabled:
        return "unknown", None
    return "ok", found[0]


# -- GitHub --------------------------------------------------------------------------


def _create_flow(cur: psycopg.Cursor, state_hash: bytes, browser_hash: bytes, verifier: str,
                 return_to: str | None, now: datetime, expires_at: datetime) -> None:
    cur.execute("INSERT INTO auth_flows (state_hash, browser_hash, pkce_verifier, return_to,"
                " created_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s)",
                (state_hash, browser_hash, verifier, return_to, now, expires_at))


def _take_flow(cur: psycopg.Cursor, state_hash: bytes, browser_hash: bytes,
               now: datetime) -> Flow | None:
    cur.execute("DELETE FROM auth_flows WHERE state_hash = %s AND browser_hash = %s"
                " RETURNING pkce_verifier, return_to, expires_at", (state_hash, browser_hash))
    row = cur.fetchone()
    if row is None or row[2] <= now:
        return None
    return Flow(row[0], row[1])


def _github_account(cur: psycopg.Cursor, github_id: int, login: str,
                    verified_emails: list[str], ip: str | None) -> User | None:
    """
    The account for a GitHub identity: the one linked to its id, else the one
    whose e-mail address is among GitHub's verified addresses for it (which
    is then linked).  L{None}: no account (Veil has no self sign-up).
    """
    cur.execute(f"SELECT {_USER} FROM users u WHERE u.github_id = %s", (github_id,))
    row = cur.fetchone()
    if row is not None:
        user = _user(row)
        if user.github_login != login:
            cur.execute("UPDATE users SET github_login = %s WHERE id = %s", (login, user.id))
            user = attrs.evolve(user, github_login=login)
        return user
    for email in verified_emails:
        found = _user_by_email(cur, email)
        if found is None:
            continue
        user = found[0]
        cur.execute("SELECT github_id FROM users WHERE id = %s FOR UPDATE", (user.id,))
        current = cur.fetchone()[0]
        if current is not None and current != github_id:
            raise GithubConflict("this Veil account is linked to another GitHub account")
        cur.execute("UPDATE users SET github_id = %s, github_login = %s WHERE id = %s",
                    (github_id, login, user.id))
        audit(cur, "auth.github_linked", actor=user.id, target_type="user",
              target_id=str(user.id), detail={"github_id": github_id}, ip=ip)
        return attrs.evolve(user, github_login=login)
    return None


# -- API tokens ----------------------------------------------------------------------


def _create_api_token(cur: psycopg.Cursor, user_id: UUID, name: str, token_hash: bytes,
                      prefix: str, site_id: UUID | None, read_only: bool, now: datetime,
                      expires_at: datetime | None, actor: UUID | None,
                      ip: str | None) -> ApiToken:
    if site_id is not None:
        cur.execute("SELECT 1 FROM site_members WHERE site_id = %s AND user_id = %s"
                    " UNION ALL SELECT 1 FROM users WHERE id = %s AND is_admin",
                    (site_id, user_id, user_id))
        if cur.fetchone() is None:
            raise UserNotFound("the user is not a member of that site")
    cur.execute(
        "INSERT INTO api_tokens (user_id, name, token_hash, display_prefix, site_id, read_only,"
        " created_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (user_id, name, token_hash, prefix, site_id, read_only, now, expires_at))
    token_id = cur.fetchone()[0]
    audit(cur, "auth.token_created", actor=actor, target_type="api_token",
          target_id=str(token_id), ip=ip, detail={
              "user_id": str(user_id), "read_only": read_only,
              "site_id": None if site_id is None else str(site_id),
              "expires_at": None if expires_at is None else expires_at.isoformat()})
    cur.execute(f"SELECT {_TOKEN} WHERE t.id = %s", (token_id,))
    return ApiToken(*cur.fetchone())


def _find_api_token(cur: psycopg.Cursor, token_hash: bytes, now: datetime) -> TokenGrant | None:
    cur.execute(f"SELECT t.id, t.site_id, t.read_only, t.name, {_USER} FROM api_tokens t"
                " JOIN users u ON u.id = t.user_id WHERE t.token_hash = %s"
                " AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > %s)"
                " AND u.disabled_at IS NULL", (token_hash, now))
    row = cur.fetchone()
    if row is None:
        return None
    return TokenGrant(row[0], _user(row[4:]), row[1], row[2], row[3])


def _api_tokens(cur: psycopg.Cursor, user_id: UUID | None, after: tuple[datetime, UUID] | None,
                limit: int) -> list[ApiToken]:
    where, params = [], []
    if user_id is not None:
        where.append("t.user_id = %s")
        params.append(user_id)
    if after is not None:
        where.append("(t.created_at, t.id) < (%s, %s)")
        params.extend(after)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    cur.execute(f"SELECT {_TOKEN}{clause} ORDER BY t.created_at DESC, t.id DESC LIMIT %s",
                (*params, limit))
    return [ApiToken(*row) for row in cur.fetchall()]


def _revoke_api_token(cur: psycopg.Cursor, token_id: UUID, user_id: UUID | None,
                      now: datetime, actor: UUID | None, ip: str | None) -> ApiToken | None:
    cur.execute("UPDATE api_tokens SET revoked_at = %s WHERE id = %s"
                " AND (%s::uuid IS NULL OR user_id = %s) AND revoked_at IS NULL RETURNING id",
                (now, token_id, user_id, user_id))
    if cur.fetchone() is None:
        return None
    audit(cur, "auth.token_revoked", actor=actor, target_type="api_token",
          target_id=str(token_id), ip=ip)
    cur.execute(f"SELECT {_TOKEN} WHERE t.id = %s", (token_id,))
    return ApiToken(*cur.fetchone())


def _record_token_uses(cur: psycopg.Cursor, uses: list[tuple[UUID, datetime]]) -> None:
    cur.execute(
        "UPDATE api_tokens t SET last_used_at = v.at"
        " FROM unnest(%s::uuid[], %s::timestamptz[]) AS v(id, at)"
        " WHERE t.id = v.id AND (t.last_used_at IS NULL OR t.last_used_at < v.at)",
        ([u[0] for u in uses], [u[1] for u in uses]))


# -- sites -----------------------------------------------------------------------------


def _site_access(cur: psycopg.Cursor, user_id: UUID, site_id: UUID) -> SiteAccess | None:
    cur.execute("SELECT s.id, s.domain, s.status, m.role FROM sites s"
                " LEFT JOIN site_members m ON m.site_id = s.id AND m.user_id = %s"
                " WHERE s.id = %s", (user_id, site_id))
    row = cur.fetchone()
    return None if row is None else SiteAccess(*row)


def _sites_of(cur: psycopg.Cursor, user_id: UUID, every_site: bool, only: UUID | None,
              after: str | None, limit: int) -> list[SiteSummary]:
    cur.execute(
        "SELECT s.id, s.domain, s.status, s.mode, m.role, s.created_at FROM sites s"
        " LEFT JOIN site_members m ON m.site_id = s.id AND m.user_id = %(user)s"
        " WHERE (m.user_id IS NOT NULL OR %(every)s)"
        " AND (%(only)s::uuid IS NULL OR s.id = %(only)s::uuid)"
        " AND (%(after)s::text IS NULL OR s.domain > %(after)s::text)"
        " ORDER BY s.domain LIMIT %(limit)s",
        {"user": user_id, "every": every_site, "only": only, "after": after, "limit": limit})
    return [SiteSummary(*row) for row in cur.fetchall()]


# -- members and invitations ----------------------------------------------------------


def _members(cur: psycopg.Cursor, site_id: UUID) -> list[Member]:
    cur.execute(f"SELECT {_MEMBER} WHERE m.site_id = %s ORDER BY"
                " array_position(ARRAY['owner', 'admin', 'viewer'], m.role), lower(u.email)",
                (site_id,))
    return [Member(*row) for row in cur.fetchall()]


def _member(cur: psycopg.Cursor, site_id: UUID, user_id: UUID, lock: bool) -> Member:
    cur.execute(f"SELECT {_MEMBER} WHERE m.site_id = %s AND m.user_id = %s"
                + (" FOR UPDATE OF m" if lock else ""), (site_id, user_id))
    row = cur.fetchone()
    if row is None:
        raise MemberNotFound("the user is not a member of this site")
    return Member(*row)


def _set_role(cur: psycopg.Cursor, site_id: UUID, user_id: UUID, role: str,
              actor: UUID | None, ip: str | None) -> Member:
    member = _member(cur, site_id, user_id, lock=True)
    if member.is_owner:
        raise OwnerMembership("the site's owner keeps the owner role")
    if member.role == role:
        return member
    cur.execute("UPDATE site_members SET role = %s WHERE site_id = %s AND user_id = %s",
                (role, site_id, user_id))
    audit(cur, "site.member_role_changed", actor=actor, target_type="site",
          target_id=str(site_id), ip=ip,
          detail={"user_id": str(user_id), "from": member.role, "to": role})
    return attrs.evolve(member, role=role)


def _remove_member(cur: psycopg.Cursor, site_id: UUID, user_id: UUID, actor: UUID | None,
                   ip: str | None) -> Member:
    member = _member(cur, site_id, user_id, lock=True)
    if member.is_owner:
        raise OwnerMembership("the site's owner cannot be removed from it")
    cur.execute("DELETE FROM site_members WHERE site_id = %s AND user_id = %s",
                (site_id, user_id))
    # A token limited to the site would act for nobody's membership: revoke it.
    cur.execute("UPDATE api_tokens SET revoked_at = now() WHERE user_id = %s AND site_id = %s"
                " AND revoked_at IS NULL", (user_id, site_id))
    audit(cur, "site.member_removed", actor=actor, target_type="site", target_id=str(site_id),
          ip=ip, detail={"user_id": str(user_id), "role": member.role,
                         "tokens_revoked": cur.rowcount})
    return member


def _create_invitation(cur: psycopg.Cursor, site_id: UUID, email: str, role: str,
                       token_hash: bytes, actor: UUID | None, now: datetime,
                       expires_at: datetime, ip: str | None) -> Invitation:
    cur.execute("SELECT 1 FROM sites WHERE id = %s FOR NO KEY UPDATE", (site_id,))
    if cur.fetchone() is None:
        raise MemberNotFound("no such site")
    cur.execute("SELECT 1 FROM site_members m JOIN users u ON u.id = m.user_id"
                " WHERE m.site_id = %s AND lower(u.email) = lower(%s)", (site_id, email))
    if cur.fetchone() is not None:
        raise AlreadyMember("that address belongs to a member of this site already")
    # A new invitation replaces an open one for the same address (sent again).
    cur.execute("UPDATE site_invitations SET revoked_at = %s WHERE site_id = %s"
                " AND lower(email) = lower(%s) AND accepted_at IS NULL AND revoked_at IS NULL",
                (now, site_id, email))
    cur.execute("INSERT INTO site_invitations (site_id, email, role, token_hash, invited_by,"
                " created_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (site_id, email, role, token_hash, actor, now, expires_at))
    invitation_id = cur.fetchone()[0]
    audit(cur, "site.invitation_created", actor=actor, target_type="site",
          target_id=str(site_id), ip=ip,
          detail={"invitation_id": str(invitation_id), "role": role})
    cur.execute(f"SELECT {_INVITATION} WHERE i.id = %s", (invitation_id,))
    return Invitation(*cur.fetchone())


def _invitations(cur: psycopg.Cursor, site_id: UUID, now: datetime) -> list[Invitation]:
    """The site's invitations not accepted nor revoked (expired ones included), newest first."""
    cur.execute(f"SELECT {_INVITATION} WHERE i.site_id = %s AND i.accepted_at IS NULL"
                " AND i.revoked_at IS NULL ORDER BY i.created_at DESC, i.id DESC", (site_id,))
    return [Invitation(*row) for row in cur.fetchall()]


def _revoke_invitation(cur: psycopg.Cursor, site_id: UUID, invitation_id: UUID,
                       actor: UUID | None, now: datetime, ip: str | None) -> Invitation:
    cur.execute("UPDATE site_invitations SET revoked_at = %s WHERE id = %s AND site_id = %s"
                " AND accepted_at IS NULL AND revoked_at IS NULL RETURNING id",
                (now, invitation_id, site_id))
    if cur.fetchone() is None:
        raise MemberNotFound("no open invitation with that id")
    audit(cur, "site.invitation_revoked", actor=actor, target_type="site",
          target_id=str(site_id), ip=ip, detail={"invitation_id": str(invitation_id)})
    cur.execute(f"SELECT {_INVITATION} WHERE i.id = %s", (invitation_id,))
    return Invitation(*cur.fetchone())


def _invitation(cur: psycopg.Cursor, token_hash: bytes) -> Invitation | None:
    cur.execute(f"SELECT {_INVITATION} WHERE i.token_hash = %s", (token_hash,))
    row = cur.fetchone()
    return None if row is None else Invitation(*row)


_UNAVAILABLE = {
    "accepted": "This invitation has been accepted already.",
    "revoked": "This invitation was withdrawn. Ask the site's owner for a new one.",
    "expired": "This invitation has expired (invitations are valid for 7 days). Ask the"
               " site's owner for a new one.",
    "unknown": "This invitation link is not valid.",
}


def _take_invitation(cur: psycopg.Cursor, token_hash: bytes, now: datetime) -> Invitation:
    cur.execute("UPDATE site_invitations SET accepted_at = %s WHERE token_hash = %s"
                " AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > %s"
                " RETURNING id", (now, token_hash, now))
    if cur.fetchone() is None:
        found = _invitation(cur, token_hash)
        reason = "unknown" if found is None else found.state(now)
        raise InvitationUnavailable(reason, _UNAVAILABLE.get(reason, _UNAVAILABLE["unknown"]))
    found = _invitation(cur, token_hash)
    assert found is not None
    return found


def _join(cur: psycopg.Cursor, invitation: Invitation, user: User, now: datetime,
          ip: str | None) -> Invitation:
    # An existing member (another invitation, or the owner) keeps the stronger role.
    cur.execute(
        "INSERT INTO site_members (site_id, user_id, role) VALUES (%s, %s, %s)"
        " ON CONFLICT (site_id, user_id) DO UPDATE SET role = EXCLUDED.role"
        " WHERE site_members.role = 'viewer' AND EXCLUDED.role = 'admin'",
        (invitation.site_id, user.id, invitation.role))
    cur.execute("UPDATE site_invitations SET accepted_by = %s WHERE id = %s",
                (user.id, invitation.id))
    audit(cur, "site.invitation_accepted", actor=user.id, target_type="site",
          target_id=str(invitation.site_id), ip=ip,
          detail={"invitation_id": str(invitation.id), "role": invitation.role})
    return attrs.evolve(invitation, accepted_at=now)


def _accept_invitation(cur: psycopg.Cursor, token_hash: bytes, user_id: UUID, now: datetime,
                       ip: str | None) -> Invitation:
    found = _user_by_id(cur, user_id)
    if found is None or found[0].disabled:
        raise InvitationUnavailable("unknown", _UNAVAILABLE["unknown"])
    user = found[0]
    invitation = _take_invitation(cur, token_hash, now)
    if invitation.email.casefold() != user.email.casefold():
        raise InvitationUnavailable(
            "other_account", "This invitation is for another e-mail address: sign in with"
            " the address it was sent to.")
    return _join(cur, invitation, user, now, ip)


def _accept_as_new_user(cur: psycopg.Cursor, token_hash: bytes, password_hash: str,
                        now: datetime, ip: str | None) -> tuple[Invitation, User]:
    """Create the account of the invited address (the link proves the mailbox) and join."""
    invitation = _take_invitation(cur, token_hash, now)
    if _user_by_email(cur, invitation.email) is not None:
        raise UserExists("an account with that e-mail address exists already: sign in")
    user = _insert_user(cur, invitation.email, password_hash, False)
    audit(cur, "user.create", actor=user.id, target_type="user", target_id=str(user.id), ip=ip,
          detail={"admin": False, "password": True, "invitation_id": str(invitation.id)})
    return _join(cur, invitation, user, now, ip), user


def _principals_alive(cur: psycopg.Cursor, session_ids: list[UUID],
                      token_ids: list[UUID]) -> tuple[list[UUID], list[UUID]]:
    """Of these sessions and API tokens, those not ended, revoked or of a disabled user."""
    cur.execute("SELECT s.id FROM sessions s JOIN users u ON u.id = s.user_id"
                " WHERE s.id = ANY(%s) AND u.disabled_at IS NULL", (session_ids,))
    sessions = [row[0] for row in cur.fetchall()]
    cur.execute("SELECT t.id FROM api_tokens t JOIN users u ON u.id = t.user_id"
                " WHERE t.id = ANY(%s) AND t.revoked_at IS NULL AND u.disabled_at IS NULL",
                (token_ids,))
    return sessions, [row[0] for row in cur.fetchall()]


# -- clean-up --------------------------------------------------------------------------


def _clean_up(cur: psycopg.Cursor, now: datetime, idle: timedelta) -> dict[str, int]:
    """Delete what has expired: idle sessions, old links and flows, idle rate-limit buckets."""
    removed = {}
    cur.execute("DELETE FROM sessions WHERE expires_at <= %s OR last_seen_at <= %s",
                (now, now - idle))
    removed["sessions"] = cur.rowcount
    cur.execute("DELETE FROM auth_tokens WHERE expires_at <= %s", (now - timedelta(days=1),))
    removed["links"] = cur.rowcount
    cur.execute("DELETE FROM auth_flows WHERE expires_at <= %s", (now,))
    removed["flows"] = cur.rowcount
    cur.execute("DELETE FROM rate_limits WHERE tat <= %s", (now,))
    removed["rate_limits"] = cur.rowcount
    return removed


# -- the API on the reactor thread ---------------------------------------------------


class AuthStore:
    """Every query of the auth package, as Deferreds."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _run(self, desc: str, fn: Any, *args: Any) -> Deferred[Any]:
        return self.db.transact(f"auth.{desc}", fn, *args)

    def server_key(self, candidate: bytes) -> Deferred[bytes]:
        return self._run("server_key", _server_key, candidate)

    def count_accounts(self) -> Deferred[int]:
        return self._run("count_accounts", _count_accounts)

    def user_by_email(self, email: str) -> Deferred[tuple[User, str | None] | None]:
        return self._run("user_by_email", _user_by_email, email)

    def user_by_id(self, user_id: UUID) -> Deferred[tuple[User, str | None] | None]:
        return self._run("user_by_id", _user_by_id, user_id)

    def create_user(self, email: str, password_hash: str | None, is_admin: bool,
                    actor: UUID | None, ip: str | None = None) -> Deferred[User]:
        return self._run("create_user", _create_user, email, password_hash, is_admin, actor, ip)

    def list_users(self) -> Deferred[list[User]]:
        return self._run("list_users", _list_users)

    def disable_user(self, email: str, actor: UUID | None, now: datetime,
                     ip: str | None = None) -> Deferred[tuple[User, bool]]:
        return self._run("disable_user", _disable_user, email, actor, now, ip)

    def enable_user(self, email: str, actor: UUID | None,
                    ip: str | None = None) -> Deferred[tuple[User, bool]]:
        return self._run("enable_user", _enable_user, email, actor, ip)

    def set_password(self, user_id: UUID, password_hash: str, keep_session: UUID | None,
                     end_others: bool, ip: str | None) -> Deferred[int]:
        return self._run("set_password", _set_password, user_id, password_hash, keep_session,
                         end_others, ip)

    def rehash(self, user_id: UUID, old: str, new: str) -> Deferred[None]:
        return self._run("rehash", _rehash, user_id, old, new)

    def create_session(self, *args: Any) -> Deferred[UUID]:
        return self._run("create_session", _create_session, *args)

    def find_session(self, token_hash: bytes, now: datetime, idle: timedelta,
                     ip: str | None, touch: bool = True) -> Deferred[SessionRecord | None]:
        return self._run("find_session", _find_session, token_hash, now, idle, ip, touch)

    def sessions_of(self, user_id: UUID, now: datetime,
                    idle: timedelta) -> Deferred[list[SessionRecord]]:
        return self._run("sessions_of", _sessions_of, user_id, now, idle)

    def end_session(self, user_id: UUID, session_id: UUID, reason: str, actor: UUID | None,
                    ip: str | None) -> Deferred[bool]:
        return self._run("end_session", _end_session, user_id, session_id, reason, actor, ip)

    def end_other_sessions(self, user_id: UUID, keep: UUID | None,
                           ip: str | None) -> Deferred[int]:
        return self._run("end_other_sessions", _end_other_sessions, user_id, keep, ip)

    def create_setup_token(self, token_hash: bytes, now: datetime,
                           expires_at: datetime) -> Deferred[bool]:
        return self._run("create_setup_token", _create_setup_token, token_hash, now, expires_at)

    def setup_state(self, token_hash: bytes, now: datetime) -> Deferred[str]:
        return self._run("setup_state", _setup_state, token_hash, now)

    def use_setup_token(self, token_hash: bytes, email: str, password_hash: str,
                        now: datetime, ip: str | None) -> Deferred[User]:
        return self._run("use_setup_token", _use_setup_token, token_hash, email,
                         password_hash, now, ip)

    def create_magic_link(self, token_hash: bytes, user_id: UUID, browser_hash: bytes,
                          now: datetime, expires_at: datetime, ip: str | None) -> Deferred[None]:
        return self._run("create_magic_link", _create_magic_link, token_hash, user_id,
                         browser_hash, now, expires_at, ip)

    def magic_link_state(self, token_hash: bytes, now: datetime) -> Deferred[str]:
        return self._run("magic_link_state", _link_state, token_hash, "magic_link", now)

    def use_magic_link(self, token_hash: bytes, browser_hash: bytes,
                       now: datetime) -> Deferred[tuple[str, User | None]]:
        return self._run("use_magic_link", _use_magic_link, token_hash, browser_hash, now)

    def create_flow(self, state_hash: bytes, browser_hash: bytes, verifier: str,
                    return_to: str | None, now: datetime,
                    expires_at: datetime) -> Deferred[None]:
        return self._run("create_flow", _create_flow, state_hash, browser_hash, verifier,
                         return_to, now, expires_at)

    def take_flow(self, state_hash: bytes, browser_hash: bytes,
                  now: datetime) -> Deferred[Flow | None]:
        return self._run("take_flow", _take_flow, state_hash, browser_hash, now)

    def github_account(self, github_id: int, login: str, verified_emails: list[str],
                       ip: str | None) -> Deferred[User | None]:
        return self._run("github_account", _github_account, github_id, login,
                         verified_emails, ip)

    def create_api_token(self, *args: Any) -> Deferred[ApiToken]:
        return self._run("create_api_token", _create_api_token, *args)

    def find_api_token(self, token_hash: bytes, now: datetime) -> Deferred[TokenGrant | None]:
        return self._run("find_api_token", _find_api_token, token_hash, now)

    def api_tokens(self, user_id: UUID | None, after: tuple[datetime, UUID] | None = None,
                   limit: int = 1000) -> Deferred[list[ApiToken]]:
        return self._run("api_tokens", _api_tokens, user_id, after, limit)

    def revoke_api_token(self, token_id: UUID, user_id: UUID | None, now: datetime,
                         actor: UUID | None, ip: str | None) -> Deferred[ApiToken | None]:
        return self._run("revoke_api_token", _revoke_api_token, token_id, user_id, now,
                         actor, ip)

    def record_token_uses(self, uses: list[tuple[UUID, datetime]]) -> Deferred[None]:
        return self._run("record_token_uses", _record_token_uses, uses)

    def site_access(self, user_id: UUID, site_id: UUID) -> Deferred[SiteAccess | None]:
        return self._run("site_access", _site_access, user_id, site_id)

    def sites_of(self, user_id: UUID, every_site: bool, only: UUID | None,
                 after: str | None, limit: int) -> Deferred[list[SiteSummary]]:
        return self._run("sites_of", _sites_of, user_id, every_site, only, after, limit)

    def members(self, site_id: UUID) -> Deferred[list[Member]]:
        """A site's members, owner first, then admins and viewers by address."""
        return self._run("members", _members, site_id)

    def set_role(self, site_id: UUID, user_id: UUID, role: str, actor: UUID | None,
                 ip: str | None) -> Deferred[Member]:
        """Change a member's role (audited); L{MemberNotFound}, L{OwnerMembership}."""
        return self._run("set_role", _set_role, site_id, user_id, role, actor, ip)

    def remove_member(self, site_id: UUID, user_id: UUID, actor: UUID | None,
                      ip: str | None) -> Deferred[Member]:
        """Remove a member and revoke its tokens limited to the site (audited)."""
        return self._run("remove_member", _remove_member, site_id, user_id, actor, ip)

    def create_invitation(self, site_id: UUID, email: str, role: str, token_hash: bytes,
                          actor: UUID | None, now: datetime, expires_at: datetime,
                          ip: str | None) -> Deferred[Invitation]:
        return self._run("create_invitation", _create_invitation, site_id, email, role,
                         token_hash, actor, now, expires_at, ip)

    def invitations(self, site_id: UUID, now: datetime) -> Deferred[list[Invitation]]:
        return self._run("invitations", _invitations, site_id, now)

    def revoke_invitation(self, site_id: UUID, invitation_id: UUID, actor: UUID | None,
                          now: datetime, ip: str | None) -> Deferred[Invitation]:
        return self._run("revoke_invitation", _revoke_invitation, site_id, invitation_id,
                         actor, now, ip)

    def invitation(self, token_hash: bytes) -> Deferred[Invitation | None]:
        return self._run("invitation", _invitation, token_hash)

    def accept_invitation(self, token_hash: bytes, user_id: UUID, now: datetime,
                          ip: str | None) -> Deferred[Invitation]:
        return self._run("accept_invitation", _accept_invitation, token_hash, user_id, now, ip)

    def accept_as_new_user(self, token_hash: bytes, password_hash: str, now: datetime,
                           ip: str | None) -> Deferred[tuple[Invitation, User]]:
        return self._run("accept_as_new_user", _accept_as_new_user, token_hash, password_hash,
                         now, ip)

    def principals_alive(self, session_ids: list[UUID],
                         token_ids: list[UUID]) -> Deferred[tuple[list[UUID], list[UUID]]]:
        return self._run("principals_alive", _principals_alive, session_ids, token_ids)

    def audit(self, action: str, **fields: Any) -> Deferred[None]:
        def write(cur: psycopg.Cursor) -> None:
            audit(cur, action, **fields)

        return self._run("audit", write)

    def clean_up(self, now: datetime, idle: timedelta) -> Deferred[dict[str, int]]:
        return self._run("clean_up", _clean_up, now, idle)

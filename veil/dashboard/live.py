"""
The live stream as a dashboard route: C{GET /api/v1/stream?site_id=…}.

The route is declared like every other (so the OpenAPI description, the
security headers and the table-driven authorization tests cover it): the
framework authenticates the caller (a session cookie or a bearer token)
and checks the site (404 for a site the caller may not see) before the
stream opens; then L{veil.live.sse.LiveStream} takes the response over.

A stream belongs to its principal and ends at once, with an C{end} event
(C{revoked}), when the principal's right to it ends:

  - signing out, ending a session (one or all) and disabling a user delete
    session rows, announced on C{veil_sessions} with the session's id;
  - revoking an API token (and disabling its user) is announced on
    C{veil_api_tokens} with the token's id;
  - a membership removed or changed, or the site deleted, is announced on
    C{veil_sites} with the site's id: the streams of that site are checked
    again and those that may no longer see it end.

Every process listens, so a revocation made anywhere ends the streams held
by any process.  After the listener reconnects (notifications may have
been missed), every open stream is checked again.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from veil.dashboard.web import Call, Principal
from veil.live.hub import Hub
from veil.live.sse import LiveStream
from veil.metrics import Registry

_log = Logger()

#: The request attribute the route leaves its call in, for the stream.
_CALL = "veil_stream_call"


@attrs.frozen(eq=False)
class Caller:
    """Who opened a stream, and its request (what L{LiveStream} is given)."""

    principal: Principal
    request: IRequest
    site_id: uuid.UUID


def revocation_keys(caller: Caller) -> tuple[Hashable, ...]:
    """What can end a stream: its user, and its session or its token."""
    principal = caller.principal
    keys: list[Hashable] = [("user", principal.user.id)]
    if principal.session is not None:
        keys.append(("session", principal.session.id))
    if principal.token is not None:
        keys.append(("token", principal.token.id))
    return tuple(keys)


class LiveMount:
    """
    The stream resource and what ends streams (see the module's description).

    @param recent_rows: C{(site_id, n)} to the site's latest rows
        (L{veil.store.logquery.RequestLogQueries.latest}).
    @param store: the auth store, to check streams again
        (L{veil.auth.store.AuthStore}).
    @param options: for L{LiveStream} (caps, keep-alive, ...).
    """

    def __init__(self, hub: Hub, recent_rows: Any, store: Any, clock: Any, *,
                 metrics: Registry | None = None, **options: Any) -> None:
        self.store = store
        self.stream = LiveStream(
            hub, recent_rows, self._caller, self._may_view, clock,
            user_key=lambda caller: caller.principal.user.id, revocation_keys=revocation_keys,
            metrics=metrics, **options)
        #: Open streams: request -> caller.
        self._open: dict[IRequest, Caller] = {}
        self._subscriptions: list[Any] = []

    # -- the route's side ---------------------------------------------------------

    def open(self, call: Call) -> LiveStream:
        """The resource that answers C{call}, whose site the route has authorized."""
        assert call.principal is not None and call.site is not None
        setattr(call.request, _CALL, Caller(call.principal, call.request, call.site.id))
        return self.stream

    def _caller(self, request: IRequest) -> Deferred[Caller | None]:
        return succeed(getattr(request, _CALL, None))

    def _may_view(self, caller: Caller, site_id: uuid.UUID) -> Deferred[bool]:
        # The route checked the membership (404 otherwise) for this site id.
        if caller.site_id != site_id:
            return succeed(False)
        request = caller.request
        self._open[request] = caller
        request.notifyFinish().addBoth(lambda _: self._open.pop(request, None))
        return succeed(True)

    @property
    def streams(self) -> int:
        return self.stream.streams

    # -- ending streams -------------------------------------------------------------

    def end_user(self, user_id: uuid.UUID) -> int:
        return self.stream.close_streams_of(("user", user_id))

    def end_session(self, session_id: uuid.UUID) -> int:
        return self.stream.close_streams_of(("session", session_id))

    def end_token(self, token_id: uuid.UUID) -> int:
        return self.stream.close_streams_of(("token", token_id))

    def follow(self, listener: Any) -> None:
        """End streams on the revocations every process announces (module description)."""
        self._subscriptions = [
            listener.subscribe("veil_sessions", lambda p: self._by_id(p, self.end_session),
                               self.recheck_all),
            listener.subscribe("veil_api_tokens", lambda p: self._by_id(p, self.end_token),
                               self.recheck_all),
            listener.subscribe("veil_sites", lambda p: self._by_id(p, self.recheck_site),
                               self.recheck_all),
        ]

    def unfollow(self) -> None:
        for subscription in self._subscriptions:
            subscription.cancel()
        self._subscriptions = []

    @staticmethod
    def _by_id(payload: str, act: Any) -> Any:
        try:
            key = uuid.UUID(payload)
        except ValueError:
            return None
        return act(key)

    def recheck_site(self, site_id: uuid.UUID) -> Deferred[int]:
        """Check the streams of a site again; fires with how many ended."""
        watching = {c.principal.user.id for c in self._open.values() if c.site_id == site_id}
        return Deferred.fromCoroutine(self._recheck([(u, site_id) for u in watching]))

    def recheck_all(self) -> Deferred[int]:
        """Check every open stream again (after the listener reconnected)."""
        callers = list(self._open.values())
        pairs = {(c.principal.user.id, c.site_id) for c in callers}
        sessions = {c.principal.session.id for c in callers if c.principal.session is not None}
        tokens = {c.principal.token.id for c in callers if c.principal.token is not None}
        return Deferred.fromCoroutine(self._recheck(sorted(pairs, key=str), sessions, tokens))

    async def _recheck(self, pairs: list[tuple[uuid.UUID, uuid.UUID]],
                       sessions: set[uuid.UUID] | None = None,
                       tokens: set[uuid.UUID] | None = None) -> int:
        ended = 0
        try:
            if sessions or tokens:
                live_sessions, live_tokens = await self.store.principals_alive(
                    sorted(sessions or ()), sorted(tokens or ()))
                for gone in (sessions or set()) - set(live_sessions):
                    ended += self.end_session(gone)
                for gone in (tokens or set()) - set(live_tokens):
                    ended += self.end_token(gone)
            for user_id, site_id in pairs:
                access = await self.store.site_access(user_id, site_id)
                allowed = access is not None and (access.role is not None or
                                                  await self._is_admin(user_id))
                if not allowed:
                    ended += self.stream.close_streams_of(("user", user_id), site_id)
        except Exception:  # noqa: BLE001 - a failed check ends nothing; the next one runs
            _log.failure("Checking live streams again failed")
        return ended

    async def _is_admin(self, user_id: uuid.UUID) -> bool:
        found = await self.store.user_by_id(user_id)
        return found is not None and found[0].is_admin and not found[0].disabled


"""
LISTEN/NOTIFY: one connection, on its own thread, for the whole process.

Caches subscribe to channels.  Each notification is handed to the reactor
thread.  Because PostgreSQL never replays a notification missed while the
connection was down, every (re)connection asks every subscriber for a full
reload, after the channels are listened to again.

A lost connection is retried after 0.25 s, then 0.5 s, then every second
(L{reconnect_delay}) for as long as the database is away: so changes made
while it was away, and after, reach the caches within about a second of
its return (the time to connect, plus the reload).  The warning that the
listener is disconnected is logged once a minute at most.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import attrs
import psycopg
from psycopg import sql
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from veil.errors import VeilError
from veil.logs import Throttle

_log = Logger()

#: Seconds between two "disconnected" warnings.
WARN_EVERY = 60.0


def reconnect_delay(failures: int, cap: float = 1.0) -> float:
    """
    The wait before reconnection attempt C{failures} (1 for the first
    after a failure): 0.25 s, doubling, at most C{cap}.
    """
    return min(cap, 0.25 * 2 ** min(max(failures, 1) - 1, 10))


@attrs.define(eq=False)
class Subscription:
    """One subscriber's interest in one channel."""

    channel: str
    on_notify: Callable[[str], object]
    on_reload: Callable[[], object]
    _listener: ListenerService

    def cancel(self) -> None:
        self._listener._subscriptions.discard(self)


@attrs.define(eq=False)
class ListenerService(Service):
    """
    Listen on Veil's channels and dispatch notifications on the reactor.

    @ivar backend_pid: the PostgreSQL backend of the current connection,
        or L{None} while disconnected.
    @ivar connections: how many times a connection was made.
    """

    conninfo: str
    reactor: Any  # IReactorThreads and IReactorTime
    poll_interval: float = 0.5
    connect_timeout: float = 5.0
    max_backoff: float = 1.0
    backend_pid: int | None = attrs.field(default=None, init=False)
    connections: int = attrs.field(default=0, init=False)
    last_error: str | None = attrs.field(default=None, init=False)
    _subscriptions: set[Subscription] = attrs.field(factory=set, init=False)
    _stopping: threading.Event = attrs.field(factory=threading.Event, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _finished: list[Deferred[None]] = attrs.field(factory=list, init=False)
    _ended: bool = attrs.field(default=False, init=False)
    _warnings: Throttle = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._warnings = Throttle(self.reactor, WARN_EVERY)

    def subscribe(self, channel: str, on_notify: Callable[[str], object],
                  on_reload: Callable[[], object]) -> Subscription:
        """
        Call C{on_notify(payload)} for each notification on C{channel}, and
        C{on_reload()} after each (re)connection.  Both run on the reactor
        thread.  A channel subscribed while connected is listened to within
        C{poll_interval}.
        """
        subscription = Subscription(channel, on_notify, on_reload, self)
        self._subscriptions.add(subscription)
        return subscription

    def startService(self) -> None:
        super().startService()
        self._stopping.clear()
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="veil-listener", daemon=True)
        self._thread.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping.set()
        d: Deferred[None] = Deferred()
        if self._ended or self._thread is None:
            d.callback(None)
        else:
            self._finished.append(d)
        return d

    # -- reactor thread ------------------------------------------------------

    def _connected(self, pid: int) -> None:
        self.backend_pid = pid
        self.connections += 1
        self.last_error = None
        _log.info("Listening for changes (backend {pid})", pid=pid)
        for subscription in list(self._subscriptions):
            _call(subscription.on_reload, "Reload after (re)connection failed for {channel}",
                  subscription.channel)

    def _disconnected(self, error: str, delay: float) -> None:
        self.backend_pid = None
        self.last_error = error
        self._warnings.emit(
            _log.warn, "disconnected",
            "Change listener disconnected ({error}); reconnecting in {delay:g} s"
            "{suppressed_text}", error=error, delay=delay)

    def _dispatch(self, channel: str, payload: str) -> None:
        for subscription in list(self._subscriptions):
            if subscription.channel == channel:
                _call(subscription.on_notify, "Notification handler failed for {channel}",
                      channel, payload)

    def _end(self) -> None:
        self._ended = True
        self.backend_pid = None
        finished, self._finished = self._finished, []
        for d in finished:
            d.callback(None)

    # -- listener thread -----------------------------------------------------

    def _channels(self) -> set[str]:
        # Read from the listener thread; a copy of a set being replaced
        # wholesale is safe enough, and a late channel is picked up on the
        # next poll.
        return {s.channel for s in list(self._subscriptions)}

    def _run(self) -> None:
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    conn = psycopg.connect(
                        self.conninfo,
                        autocommit=True,
                        connect_timeout=max(2, int(self.connect_timeout + 0.999)),
                        application_name="veil-listener",
                    )
                except psycopg.Error as e:
                    failures += 1
                    self._backoff(failures, _brief(e))
                    continue
                try:
                    failures = 0
                    self._listen(conn)
                except psycopg.Error as e:
                    failures += 1
                    self._backoff(failures, _brief(e))
                finally:
                    conn.close()
        finally:
            self.reactor.callFromThread(self._end)

    def _backoff(self, failures: int, error: str) -> None:
        delay = reconnect_delay(failures, self.max_backoff)
        self.reactor.callFromThread(self._disconnected, error, delay)
        self._stopping.wait(delay)

    def _listen(self, conn: psycopg.Connection) -> None:
        listening: set[str] = set()
        self._listen_to_new(conn, listening)
        self.reactor.callFromThread(self._connected, conn.info.backend_pid)
        while not self._stopping.is_set():
            for notify in conn.notifies(timeout=self.poll_interval):
                self.reactor.callFromThread(self._dispatch, notify.channel, notify.payload)
            self._listen_to_new(conn, listening)

    def _listen_to_new(self, conn: psycopg.Connection, listening: set[str]) -> None:
        for channel in sorted(self._channels() - listening):
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            listening.add(channel)


def _call(handler: Callable[..., object], message: str, channel: str, *args: object) -> None:
    """
    Run a subscriber's handler; a failure, synchronous or in a returned
    Deferred, is logged: the database may well be away again, so expected
    errors are warnings and only the rest are failures.
    """
    def failed(failure: Failure) -> None:
        if failure.check(VeilError, psycopg.Error):
            _log.warn(message + ": {error}", channel=channel, error=failure.value)
        else:
            _log.failure(message, failure, channel=channel)

    try:
        result = handler(*args)
    except Exception:
        failed(Failure())
        return
    if isinstance(result, Deferred):
        result.addErrback(failed)


def _brief(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__

"""
Cluster-wide settings (the C{settings} table), and their in-memory copy.

The table is tiny, so the copy is always loaded whole: at start-up, on every
C{NOTIFY veil_settings} (payload: the key that changed), after every
listener reconnection and periodically as a safety net.  The rows are read
in the database's thread pool and swapped in on the reactor thread; the hot
path reads plain attributes (L{SettingsTable.maintenance}).

Wiring: the owner subscribes the table to the listener, awaits a first
L{SettingsTable.reload}, and runs a supervised reload, e.g.
C{PeriodicWorker("settings-table", table.reload, reactor, every=60.0)}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import psycopg
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from veil.store.db import Database
from veil.store.listener import ListenerService, Subscription

_log = Logger()

#: The channel the C{settings} trigger notifies, with the key.
CHANNEL = "veil_settings"

#: The cluster-wide maintenance switch (see L{veil.store.admin}).
MAINTENANCE_KEY = "maintenance"


def maintenance_enabled(value: object) -> bool:
    """
    Whether a C{maintenance} value turns maintenance on: C{{"enabled": true}}
    (what C{veil maintenance on} writes) or a bare C{true}.
    """
    if isinstance(value, dict):
        return value.get("enabled") is True
    return value is True


def _load_all(cur: psycopg.Cursor) -> dict[str, Any]:
    cur.execute("SELECT key, value FROM settings")
    return {key: value for key, value in cur.fetchall()}


class SettingsStore:
    """Settings queries, as Deferreds."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def load_all(self) -> Deferred[dict[str, Any]]:
        """Every setting, by key (values decoded from JSON)."""
        return self._db.transact("settings.load_all", _load_all)


@attrs.define(eq=False)
class SettingsTable:
    """
    The settings, in memory.

    @ivar maintenance: the cluster-wide maintenance switch.
    @ivar loaded: whether a load has completed at least once.
    """

    store: SettingsStore
    clock: IReactorTime
    maintenance: bool = attrs.field(default=False, init=False)
    loaded: bool = attrs.field(default=False, init=False)
    _values: dict[str, Any] = attrs.field(factory=dict, init=False)
    _generation: int = attrs.field(default=0, init=False)
    _listeners: list[Callable[[SettingsTable], object]] = attrs.field(factory=list, init=False)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of C{key}, or C{default} when it is not set."""
        return self._values.get(key, default)

    def on_change(self, callback: Callable[[SettingsTable], object]) -> None:
        """Call C{callback(table)} after every load that changed a value."""
        self._listeners.append(callback)

    def subscribe(self, listener: ListenerService) -> Subscription:
        """Follow C{veil_settings}, and reload after each (re)connection."""
        return listener.subscribe(CHANNEL, self._notified, self.reload)

    def reload(self) -> Deferred[None]:
        """
        Load every setting and swap them in.  If another reload starts
        before this one's rows arrive, only the later one swaps.
        """
        self._generation += 1
        generation = self._generation

        def swap(values: dict[str, Any]) -> None:
            if generation != self._generation:
                return
            changed = values != self._values
            self._values = values
            before = self.maintenance
            self.maintenance = maintenance_enabled(values.get(MAINTENANCE_KEY))
            self.loaded = True
            if self.maintenance != before:
                _log.info("Cluster-wide maintenance is {state}",
                          state="on" if self.maintenance else "off")
            if changed:
                for callback in list(self._listeners):
                    try:
                        callback(self)
                    except Exception:  # noqa: BLE001 - one bad callback must not stop the rest
                        _log.failure("Settings change callback failed")

        return self.store.load_all().addCallback(swap)

    def _notified(self, payload: str) -> Deferred[None]:
        def failed(failure: Failure) -> None:
            _log.error("Settings reload after a change to {key} failed (the next reload"
                       " fixes it): {error}", key=payload, error=failure.value)

        return self.reload().addErrback(failed)

"""
Cluster-wide settings (the C{settings} table), and their in-memory copy.

The table is tiny, so the copy is always loaded whole: at start-up, on every
C{NOTIFY veil_settings} (payload: the key that changed), after every
listener reconnection and periodically as a safety net.  The rows are read
in the database's thread pool and swapped in on the reactor thread; the hot
path reads plain attributes (L{SettingsTable.maintenance}).

Wiring: the owner subscribes the table to the listener, awaits a first
L{SettingsTable.reload}, and runs its supervised reload,
C{table.refresher(every=60.0)} (L{veil.store.tables}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import psycopg
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from veil.store.db import Database
from veil.store.listener import ListenerService, Subscription
from veil.store.tables import Keeper
from veil.workers.base import PeriodicWorker

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
    The settings, in memory (kept current by a L{veil.store.tables.Keeper};
    every change reloads them whole).

    @ivar maintenance: the cluster-wide maintenance switch.
    @ivar loaded: whether a load has completed at least once.
    """

    store: SettingsStore
    clock: IReactorTime
    maintenance: bool = attrs.field(default=False, init=False)
    loaded: bool = attrs.field(default=False, init=False)
    _values: dict[str, Any] = attrs.field(factory=dict, init=False)
    _keeper: Keeper[str, Any] = attrs.field(init=False)
    _listeners: list[Callable[[SettingsTable], object]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        self._keeper = Keeper("settings-table", self, self.store.load_all, self.clock)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of C{key}, or C{default} when it is not set."""
        return self._values.get(key, default)

    def on_change(self, callback: Callable[[SettingsTable], object]) -> None:
        """Call C{callback(table)} after every load that changed a value."""
        self._listeners.append(callback)

    def subscribe(self, listener: ListenerService) -> list[Subscription]:
        """Follow C{veil_settings}, and reload after each (re)connection."""
        return self._keeper.follow(listener, CHANNEL)

    def reload(self) -> Deferred[None]:
        """
        Load every setting and swap them in.  If reloads overlap, a
        snapshot older than the one in is dropped.
        """
        return self._keeper.reload()

    def refresher(self, every: float) -> PeriodicWorker:
        """The supervised periodic reload, the safety net behind NOTIFY."""
        return self._keeper.refresher(every)

    # -- Rows (the keeper's side) ------------------------------------------------

    def replace(self, values: Mapping[str, Any]) -> None:
        changed = values != self._values
        self._values = dict(values)
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

    def put(self, key: str, value: Any) -> None:
        # Without load_one the keeper reloads whole; one key is the same swap.
        values = dict(self._values)
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
        self.replace(values)

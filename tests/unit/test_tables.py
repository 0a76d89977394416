"""
Tests for L{veil.store.tables}: the one mechanism that keeps hot-path tables
current, driven through store answers the test releases in any order.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from veil.errors import StoreUnavailable
from veil.store.tables import Keeper, KeyedRows


class HeldStore:
    """A store whose answers the test releases, in any order (the database's threads do)."""

    def __init__(self) -> None:
        self.all: list[Deferred[dict[str, int]]] = []
        self.one: list[tuple[str, Deferred[int | None]]] = []

    def load_all(self) -> Deferred[dict[str, int]]:
        d: Deferred[dict[str, int]] = Deferred()
        self.all.append(d)
        return d

    def load_one(self, key: str) -> Deferred[int | None]:
        d: Deferred[int | None] = Deferred()
        self.one.append((key, d))
        return d

    def answer_one(self, key: str, value: int | None) -> None:
        """Answer the oldest pending read of C{key}."""
        for i, (wanted, d) in enumerate(self.one):
            if wanted == key:
                del self.one[i]
                d.callback(value)
                return
        raise AssertionError(f"no read of {key!r} pending")


class FakeListener:
    """
    Stands in for L{veil.store.listener.ListenerService}'s subscriber side:
    the test delivers notifications and (re)connections itself.
    """

    def __init__(self) -> None:
        self.subscriptions: list[tuple[str, Callable[[str], object], Callable[[], object]]] = []

    def subscribe(self, channel: str, on_notify: Callable[[str], object],
                  on_reload: Callable[[], object]) -> object:
        self.subscriptions.append((channel, on_notify, on_reload))
        return (channel, on_notify, on_reload)

    def notify(self, channel: str, payload: str) -> None:
        for subscribed, on_notify, _ in self.subscriptions:
            if subscribed == channel:
                on_notify(payload)

    def connected(self) -> None:
        for _, _, on_reload in self.subscriptions:
            on_reload()


class _KeeperCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = HeldStore()
        self.clock = Clock()
        self.rows: KeyedRows[str, int] = KeyedRows()
        self.changes: list[tuple[int | None, int | None]] = []
        self.rows.on_change(lambda before, after: self.changes.append((before, after)))
        self.keeper = Keeper("numbers", self.rows, self.store.load_all, self.clock,
                             load_one=self.store.load_one)

    def load(self, rows: dict[str, int]) -> None:
        """Complete a first full load with C{rows}."""
        reloaded = self.keeper.reload()
        self.store.all.pop().callback(rows)
        self.successResultOf(reloaded)
        self.changes.clear()


class NotifyTests(_KeeperCase):
    """A notification's payload names one row, which is read and applied alone."""

    def test_one_row_applied(self) -> None:
        """A notified key is read by itself; added, changed and removed rows reach the table."""
        self.load({"a": 1})
        listener = FakeListener()
        self.keeper.follow(listener, "numbers")
        listener.notify("numbers", "b")
        self.assertEqual([key for key, _ in self.store.one], ["b"])
        self.store.answer_one("b", 2)
        listener.notify("numbers", "a")
        self.store.answer_one("a", 10)
        listener.notify("numbers", "b")
        self.store.answer_one("b", None)
        self.assertEqual(self.rows.rows, {"a": 10})
        self.assertEqual(self.changes, [(None, 2), (1, 10), (2, None)])
        self.assertEqual(self.store.all, [])

    def test_older_read_dropped(self) -> None:
        """Of two reads of one key, the answer of the one started last wins, whatever the order."""
        self.load({})
        self.keeper.notified("a")
        self.keeper.notified("a")
        (_, first), (_, second) = self.store.one
        second.callback(None)
        first.callback(5)
        self.assertEqual(self.rows.rows, {})
        self.assertEqual(self.changes, [])

    def test_unchanged_row_reports_nothing(self) -> None:
        """A row read back equal to what the table holds calls no change callback."""
        self.load({"a": 1})
        self.keeper.notified("a")
        self.store.answer_one("a", 1)
        self.assertEqual(self.changes, [])

    def test_payload_not_a_key_reloads_whole(self) -> None:
        """A payload the key parser refuses makes the table reload whole, with a warning."""
        keeper = Keeper("numbers", self.rows, self.store.load_all, self.clock,
                        load_one=self.store.load_one, key=lambda p: str(int(p)))
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        keeper.notified("12")
        self.assertEqual([key for key, _ in self.store.one], ["12"])
        keeper.notified("twelve")
        self.assertEqual(len(self.store.all), 1)
        self.assertTrue(any("twelve" in repr(e.get("payload")) for e in events))

    def test_without_load_one_reloads_whole(self) -> None:
        """A table that cannot read one row reloads whole on every notification."""
        keeper = Keeper("numbers", self.rows, self.store.load_all, self.clock)
        keeper.notified("a")
        self.store.all.pop().callback({"a": 1, "b": 2})
        self.assertEqual(self.rows.rows, {"a": 1, "b": 2})
        self.assertEqual(self.store.one, [])

    def test_wants_filters_keys(self) -> None:
        """A cache reads only the notified keys it holds."""
        keeper = Keeper("numbers", self.rows, self.store.load_all, self.clock,
                        load_one=self.store.load_one, wants=lambda key: key == "held")
        self.assertIsNone(keeper.notified("other"))
        keeper.notified("held")
        self.assertEqual([key for key, _ in self.store.one], ["held"])

    def test_several_channels(self) -> None:
        """Notifications of every followed channel apply; a reconnection reloads only once."""
        listener = FakeListener()
        self.keeper.follow(listener, "one", "two")
        listener.notify("two", "x")
        self.assertEqual([key for key, _ in self.store.one], ["x"])
        listener.connected()
        self.assertEqual(len(self.store.all), 1)


class ReloadTests(_KeeperCase):
    """Whole reloads replace the table; overlapping ones never leave it older."""

    def test_reload_replaces_and_reports(self) -> None:
        """A reload takes its snapshot as the whole table and reports each difference."""
        self.load({"a": 1, "b": 2})
        reloaded = self.keeper.reload()
        self.assertNoResult(reloaded)
        self.store.all.pop().callback({"b": 3, "c": 4})
        self.successResultOf(reloaded)
        self.assertEqual(self.rows.rows, {"b": 3, "c": 4})
        self.assertTrue(self.rows.loaded)
        self.assertEqual(sorted(self.changes, key=repr), [(1, None), (2, 3), (None, 4)])

    def test_reconnect_reloads_whole(self) -> None:
        """Each (re)connection of the listener reloads the whole table."""
        listener = FakeListener()
        self.keeper.follow(listener, "numbers")
        listener.connected()
        self.store.all.pop().callback({"a": 1})
        # A change made while the listener was away is only seen by the reload.
        listener.connected()
        self.store.all.pop().callback({"a": 1, "b": 2})
        self.assertEqual(self.rows.rows, {"a": 1, "b": 2})

    def test_older_snapshot_dropped(self) -> None:
        """When reloads overlap, a snapshot older than the one in is dropped."""
        first, second = self.keeper.reload(), self.keeper.reload()
        self.store.all[1].callback({"new": 2})
        self.assertEqual(self.rows.rows, {"new": 2})
        self.successResultOf(first)
        self.successResultOf(second)
        self.store.all[0].callback({"old": 1})
        self.assertEqual(self.rows.rows, {"new": 2})

    def test_earlier_answer_swaps_then_later(self) -> None:
        """
        Overlapping reloads answering in order both swap; the later caller
        waits for its own snapshot.
        """
        first, second = self.keeper.reload(), self.keeper.reload()
        self.store.all[0].callback({"a": 1})
        self.assertEqual(self.rows.rows, {"a": 1})
        self.successResultOf(first)
        self.assertNoResult(second)
        self.store.all[1].callback({"a": 2})
        self.successResultOf(second)
        self.assertEqual(self.rows.rows, {"a": 2})

    def test_failed_reload_covered_by_later_one(self) -> None:
        """A caller whose reload failed is answered by a later reload still in flight."""
        first, second = self.keeper.reload(), self.keeper.reload()
        self.store.all[0].errback(StoreUnavailable("away"))
        self.assertNoResult(first)
        self.store.all[1].callback({"a": 1})
        self.successResultOf(first)
        self.successResultOf(second)

    def test_failed_reload_keeps_table(self) -> None:
        """A reload that fails leaves the table as it was and fails its caller."""
        self.load({"a": 1})
        reloaded = self.keeper.reload()
        self.store.all.pop().errback(StoreUnavailable("away"))
        self.failureResultOf(reloaded, StoreUnavailable)
        self.assertEqual(self.rows.rows, {"a": 1})
        self.assertEqual(self.changes, [])


class InFlightTests(_KeeperCase):
    """Changes notified while a reload reads its snapshot are never lost."""

    def test_row_deleted_while_reload_in_flight(self) -> None:
        """
        A row deleted (and notified) while the reload reads is read again
        after the older snapshot, which still has it, is in: it ends up gone.
        """
        self.load({"a": 1, "b": 2})
        reloaded = self.keeper.reload()
        self.keeper.notified("b")
        self.store.answer_one("b", None)
        self.assertEqual(self.rows.rows, {"a": 1})
        self.store.all.pop().callback({"a": 1, "b": 2})  # read before the delete
        self.successResultOf(reloaded)
        self.assertEqual([key for key, _ in self.store.one], ["b"])
        self.store.answer_one("b", None)
        self.assertEqual(self.rows.rows, {"a": 1})

    def test_row_added_while_reload_in_flight(self) -> None:
        """A row added while the reload reads is in the table after the swap."""
        self.load({})
        self.keeper.reload()
        self.keeper.notified("c")
        self.store.all.pop().callback({})
        self.store.answer_one("c", 3)  # the first read answers after the swap
        self.store.answer_one("c", 3)
        self.assertEqual(self.rows.rows, {"c": 3})

    def test_not_read_again_without_reload(self) -> None:
        """With no reload in flight, a notified key is read once."""
        self.load({})
        self.keeper.notified("a")
        self.store.answer_one("a", 1)
        self.keeper.reload()
        self.store.all.pop().callback({"a": 1})
        self.assertEqual(self.store.one, [])


class RefresherTests(_KeeperCase):
    """The refresher reloads periodically, and retries what failed with back-off."""

    def start(self, every: float = 60.0) -> None:
        worker = self.keeper.refresher(every)
        self.assertEqual(worker.name, "numbers")
        worker.startService()
        self.addCleanup(worker.stopService)
        self.worker = worker
        self.clock.advance(0)  # its first run

    def test_periodic_reload(self) -> None:
        """The table is reloaded at once and then every interval."""
        self.start(every=60.0)
        self.store.all.pop().callback({"a": 1})
        self.clock.advance(59)
        self.assertEqual(self.store.all, [])
        self.clock.advance(1)
        self.store.all.pop().callback({"a": 2})
        self.assertEqual(self.rows.rows, {"a": 2})
        self.assertEqual(self.worker.runs, 2)

    def test_failed_periodic_reload_keeps_table_and_retries(self) -> None:
        """A failed periodic reload keeps the old table and is retried after a back-off."""
        self.start(every=60.0)
        self.store.all.pop().callback({"a": 1})
        self.clock.advance(60)
        self.store.all.pop().errback(StoreUnavailable("away"))
        self.assertEqual(self.rows.rows, {"a": 1})
        self.assertEqual(self.worker.failures, 1)
        self.clock.advance(3)  # the first back-off is 1.5 s and some jitter, not the interval
        self.store.all.pop().callback({"a": 3})
        self.assertEqual(self.rows.rows, {"a": 3})
        self.assertEqual(self.worker.failures, 0)

    def test_failed_reconnect_reload_retried(self) -> None:
        """A reload after a reconnection that fails is retried by the refresher at once."""
        self.start(every=60.0)
        self.store.all.pop().callback({"a": 1})
        listener = FakeListener()
        self.keeper.follow(listener, "numbers")
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        listener.connected()
        self.store.all.pop().errback(StoreUnavailable("away"))
        self.assertEqual(self.rows.rows, {"a": 1})
        self.assertTrue(any(e.get("table") == "numbers" for e in events))
        self.store.all.pop().callback({"a": 1, "b": 2})
        self.assertEqual(self.rows.rows, {"a": 1, "b": 2})

    def test_failed_read_of_one_row_reloads_soon(self) -> None:
        """When reading a notified row fails, the refresher reloads the table soon."""
        self.start(every=60.0)
        self.store.all.pop().callback({"a": 1})
        self.keeper.notified("a")
        self.store.one.pop()[1].errback(StoreUnavailable("away"))
        self.assertEqual(self.rows.rows, {"a": 1})
        self.store.all.pop().callback({"a": 7})
        self.assertEqual(self.rows.rows, {"a": 7})

    def test_retry_during_run_runs_again_after_it(self) -> None:
        """A retry asked for while the refresher is reloading runs once more right after."""
        self.start(every=60.0)
        self.keeper.notified("a")
        self.store.one.pop()[1].errback(StoreUnavailable("away"))
        self.assertEqual(len(self.store.all), 1)
        self.store.all.pop().callback({})
        self.clock.advance(0)
        self.assertEqual(len(self.store.all), 1)


class KeyedRowsTests(SynchronousTestCase):
    """KeyedRows keeps rows by key and calls its index hooks and change callbacks."""

    def test_hooks(self) -> None:
        """index_all sees every replacement, index_one every single change, never no-ops."""
        whole: list[dict[str, int]] = []
        single: list[tuple[str, int | None, int | None]] = []
        rows: KeyedRows[str, int] = KeyedRows(lambda rows: whole.append(dict(rows)),
                                              lambda k, b, a: single.append((k, b, a)))
        rows.replace({"a": 1})
        rows.put("a", 1)
        rows.put("a", 2)
        rows.put("b", None)
        rows.put("a", None)
        self.assertEqual(whole, [{"a": 1}])
        self.assertEqual(single, [("a", 1, 2), ("a", 2, None)])
        self.assertEqual((len(rows), rows.get("a"), rows.values()), (0, None, []))

    def test_bad_callback_does_not_stop_others(self) -> None:
        """A change callback that raises is logged and the next one still runs."""
        rows: KeyedRows[str, int] = KeyedRows()
        seen: list[int | None] = []
        rows.on_change(lambda before, after: 1 / 0)
        rows.on_change(lambda before, after: seen.append(after))
        rows.put("a", 1)
        self.assertEqual(seen, [1])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

"""Unit tests for L{veil.store.listener}: the reconnection schedule and its warnings."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from veil.store.listener import ListenerService, reconnect_delay


class ReconnectDelayTests(SynchronousTestCase):
    """A lost listener connection is retried within a second, however long the outage."""

    def test_schedule(self) -> None:
        """0.25 s, 0.5 s, then every second, for any number of failures."""
        self.assertEqual([reconnect_delay(n) for n in range(1, 6)], [0.25, 0.5, 1.0, 1.0, 1.0])
        self.assertEqual(max(reconnect_delay(n) for n in range(1, 10_000)), 1.0)

    def test_listener_default(self) -> None:
        """The listener's own cap is one second unless it is given another."""
        listener = ListenerService("host=/nowhere", Clock())
        self.assertEqual(listener.max_backoff, 1.0)
        self.assertEqual(reconnect_delay(50, listener.max_backoff), 1.0)

    def test_disconnected_warning_rate_limited(self) -> None:
        """
        An outage retried every second logs one warning a minute, the next
        one saying how many were held back; every failure still updates
        the status /health shows.
        """
        clock = Clock()
        listener = ListenerService("host=/nowhere", clock)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for n in range(1, 62):
            listener._disconnected(f"refused #{n}", reconnect_delay(n))
            clock.advance(1.0)
        warnings = [formatEvent(e) for e in events if "disconnected" in e.get("log_format", "")]
        self.assertEqual(warnings, [
            "Change listener disconnected (refused #1); reconnecting in 0.25 s",
            ("Change listener disconnected (refused #61); reconnecting in 1 s"
             " (59 similar in the last 60 s not logged)"),
        ])
        self.assertEqual(listener.last_error, "refused #61")

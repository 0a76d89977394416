"""Tests for L{veil.logs}."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from veil.logs import Throttle


class ThrottleTests(SynchronousTestCase):
    """L{Throttle} lets one event per key and interval through and counts the rest."""

    def test_one_per_interval(self) -> None:
        """
        Repeats within the interval are held back; the next event after it
        carries how many were, in its fields and its text.
        """
        clock, log = Clock(), Logger(namespace="test.throttle")
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        throttle = Throttle(clock, 60.0)
        sent = [throttle.emit(log.warn, "k", "Garbage from {peer}{suppressed_text}", peer="a")
                for _ in range(5)]
        self.assertEqual(sent, [True, False, False, False, False])
        clock.advance(60)
        self.assertTrue(throttle.emit(log.warn, "k", "Garbage from {peer}{suppressed_text}",
                                      peer="b"))
        mine = [e for e in events if e.get("log_namespace") == "test.throttle"]
        self.assertEqual([e["suppressed"] for e in mine], [0, 4])
        self.assertEqual(formatEvent(mine[1]),
                         "Garbage from b (4 similar in the last 60 s not logged)")

    def test_keys_independent(self) -> None:
        """Each key has its own interval."""
        clock, log = Clock(), Logger(namespace="test.throttle")
        throttle = Throttle(clock, 10.0)
        self.assertTrue(throttle.emit(log.info, "a", "x"))
        self.assertTrue(throttle.emit(log.info, "b", "x"))
        self.assertFalse(throttle.emit(log.info, "a", "x"))

    def test_bounded_keys(self) -> None:
        """Many distinct keys do not grow the table past its bound."""
        clock, log = Clock(), Logger(namespace="test.throttle")
        throttle = Throttle(clock, 10.0, max_keys=100)
        for i in range(1000):
            clock.advance(0.001)
            throttle.emit(log.debug, i, "x")
        self.assertLessEqual(len(throttle._seen), 100)

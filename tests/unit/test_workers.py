"""Tests for L{veil.workers.base.PeriodicWorker}."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.internet.testing import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase

from veil.errors import StoreUnavailable
from veil.workers.base import PeriodicWorker


class FakeLock:
    """A lock object as the database returns it, recording its release."""

    def __init__(self) -> None:
        self.released = 0

    def release(self) -> Deferred[None]:
        self.released += 1
        return succeed(None)


class PeriodicWorkerTests(SynchronousTestCase):
    """PeriodicWorker runs jobs on schedule, retries failures with back-off."""

    def test_backoff(self) -> None:
        """Two failures are retried after 2 s and then 4 s, and each is logged."""
        clock, starts = Clock(), []

        def job() -> Deferred[None]:
            starts.append(clock.seconds())
            return fail(RuntimeError("boom"))

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        w = PeriodicWorker("dns", job, clock, every=60.0, backoff=lambda n: 2.0 ** n)
        w.startService()
        self.addCleanup(w.stopService)
        clock.pump([0, 2, 4])
        self.assertEqual(starts, [0, 2, 6])
        self.assertEqual([e["worker"] for e in events if "worker" in e], ["dns"] * 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)
        self.assertEqual(w.failures, 3)
        self.assertEqual(w.status()["last_error"], "RuntimeError: boom")

    def test_success_resets_backoff(self) -> None:
        """After a failure, a success returns to the regular interval."""
        clock, starts, outcomes = Clock(), [], [False, True, True]

        def job() -> Deferred[None]:
            starts.append(clock.seconds())
            return succeed(None) if outcomes.pop(0) else fail(StoreUnavailable("down"))

        w = PeriodicWorker("cleanup", job, clock, every=100.0, backoff=lambda n: 5.0)
        w.startService()
        self.addCleanup(w.stopService)
        clock.pump([0, 5, 100])
        self.assertEqual(starts, [0, 5, 105])
        self.assertEqual(w.failures, 0)
        self.assertEqual(w.runs, 2)
        self.assertIsNone(w.last_error)
        self.assertIsNotNone(w.status()["last_success"])

    def test_expected_failure_is_not_a_traceback(self) -> None:
        """A VeilError (such as the database being away) is logged as an error, not a bug."""
        clock = Clock()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        w = PeriodicWorker("p", lambda: fail(StoreUnavailable("gone")), clock, every=10.0,
                           backoff=lambda n: 1.0)
        w.startService()
        self.addCleanup(w.stopService)
        clock.advance(0)
        self.assertEqual(self.flushLoggedErrors(StoreUnavailable), [])
        self.assertTrue(any("gone" in str(e.get("error")) for e in events))
        self.assertEqual(w.failures, 1)

    def test_lock_held_elsewhere_skips(self) -> None:
        """When another process holds the lock, the run is skipped, not failed."""
        clock, runs = Clock(), []
        w = PeriodicWorker("partitions", lambda: runs.append(1), clock, every=30.0,
                           lock=lambda: succeed(None))
        w.startService()
        self.addCleanup(w.stopService)
        clock.pump([0, 30])
        self.assertEqual(runs, [])
        self.assertEqual(w.skipped, 2)
        self.assertEqual(w.failures, 0)

    def test_lock_released_after_job(self) -> None:
        """A lock taken for a run is released once the job ends, even if it fails."""
        clock, lock = Clock(), FakeLock()
        w = PeriodicWorker("x", lambda: fail(RuntimeError("no")), clock, every=30.0,
                           backoff=lambda n: 1.0, lock=lambda: succeed(lock))
        w.startService()
        self.addCleanup(w.stopService)
        clock.advance(0)
        self.assertEqual(lock.released, 1)
        self.flushLoggedErrors(RuntimeError)

    def test_timeout(self) -> None:
        """A job that does not finish within its timeout is cancelled and counted as failed."""
        clock, pending = Clock(), []

        def job() -> Deferred[None]:
            d: Deferred[None] = Deferred()
            pending.append(d)
            return d

        w = PeriodicWorker("slow", job, clock, every=60.0, timeout=10.0, backoff=lambda n: 1.0)
        w.startService()
        self.addCleanup(w.stopService)
        clock.pump([0, 10])
        self.assertEqual(w.failures, 1)
        self.assertIn("TimeoutError", w.last_error or "")
        self.assertEqual(len(pending), 1)
        clock.advance(1)
        self.assertEqual(len(pending), 2)

    def test_stop_waits_for_running_job(self) -> None:
        """stopService fires only when the job under way has finished."""
        clock, job_done = Clock(), Deferred()
        w = PeriodicWorker("w", lambda: job_done, clock, every=60.0, timeout=None)
        w.startService()
        clock.advance(0)
        stopped = w.stopService()
        self.assertNoResult(stopped)
        job_done.callback(None)
        self.successResultOf(stopped)
        clock.advance(60)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_run_now(self) -> None:
        """run_now runs the job at once instead of waiting for the interval."""
        clock, runs = Clock(), []
        w = PeriodicWorker("dns", lambda: runs.append(clock.seconds()), clock, every=300.0)
        w.startService()
        self.addCleanup(w.stopService)
        clock.pump([0, 10])
        w.run_now()
        self.assertEqual(runs, [0, 10])
        self.assertEqual(w.status()["next_run"][:4], "1970")

    def test_run_soon(self) -> None:
        """
        run_soon runs at once after a success, once more right after a run
        under way, and waits for the back-off after a failure.
        """
        clock, runs, outcomes = Clock(), [], []
        pending: list[Deferred[None]] = []

        def job() -> Deferred[None]:
            runs.append(clock.seconds())
            if outcomes and outcomes.pop(0) == "hold":
                d: Deferred[None] = Deferred()
                pending.append(d)
                return d
            return succeed(None)

        w = PeriodicWorker("table", job, clock, every=60.0, backoff=lambda n: 5.0)
        w.run_soon()  # not running: nothing
        w.startService()
        self.addCleanup(w.stopService)
        clock.advance(0)
        clock.advance(10)
        w.run_soon()
        self.assertEqual(runs, [0, 10])
        outcomes.append("hold")
        clock.advance(60)
        w.run_soon()
        w.run_soon()
        self.assertEqual(runs, [0, 10, 70])
        pending.pop().callback(None)
        clock.advance(0)
        self.assertEqual(runs, [0, 10, 70, 70])
        w.job = lambda: (runs.append(clock.seconds()), fail(StoreUnavailable("away")))[1]
        w.run_soon()
        self.assertEqual(w.failures, 1)
        w.run_soon()
        self.assertEqual(runs, [0, 10, 70, 70, 70])
        clock.advance(5)
        self.assertEqual(runs, [0, 10, 70, 70, 70, 75])

"""
The supervised periodic worker every background job is built on.

A job runs every C{every} seconds.  A failure is logged, counted, and the
job runs again after a back-off delay; a success resets the back-off.  A
job that must run once per cluster takes a PostgreSQL advisory lock for
each run, and a run that finds the lock held by another process is
skipped.  Status (last run, last error, failures) is kept for C{/health}.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, ClassVar

import attrs
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError as RunTimedOut, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from veil.errors import VeilError

#: A function that tries to take a lock and fires with a releasable lock
#: object (with C{release() -> Deferred}) or L{None} when it is held elsewhere.
LockTaker = Callable[[], Deferred[Any]]


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return datetime.fromtimestamp(when, timezone.utc).isoformat()


@attrs.define(eq=False)
class PeriodicWorker(Service):
    """
    Run C{job} now and then every C{every} seconds, supervised.

    @ivar name: the worker's name, in logs and in C{/health}.
    @ivar timeout: a run still going after this many seconds is cancelled
        and counted as a failure.
    @ivar lock: when set, each run first takes this lock and is skipped if
        another process holds it.
    """

    name: str
    job: Callable[[], Any]
    clock: IReactorTime
    every: float
    backoff: Callable[[int], float] = attrs.field(
        factory=lambda: backoffPolicy(initialDelay=1.0, maxDelay=300.0)
    )
    timeout: float | None = 600.0
    lock: LockTaker | None = None
    failures: int = attrs.field(default=0, init=False)
    runs: int = attrs.field(default=0, init=False)
    skipped: int = attrs.field(default=0, init=False)
    last_run: float | None = attrs.field(default=None, init=False)
    last_success: float | None = attrs.field(default=None, init=False)
    last_error: str | None = attrs.field(default=None, init=False)
    _next: IDelayedCall | None = attrs.field(default=None, init=False)
    _inflight: Deferred[None] | None = attrs.field(default=None, init=False)
    _again_soon: bool = attrs.field(default=False, init=False)
    _log: ClassVar[Logger] = Logger()

    def startService(self) -> None:
        super().startService()
        self._again(0)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self._inflight is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._inflight.addBoth(lambda _: done.callback(None))
        return done

    def run_now(self) -> None:
        """Run the job at once (unless a run is under way)."""
        if self._inflight is None and self.running:
            if self._next is not None and self._next.active():
                self._next.cancel()
            self._run()

    def run_soon(self) -> None:
        """
        Run the job again soon: at once when the last run worked, else when
        the back-off of the last failure says; while a run is under way,
        once more right after it (unless it fails: then the back-off rules).
        """
        if not self.running:
            return
        if self._inflight is not None:
            self._again_soon = True
        elif self.failures == 0:
            self.run_now()

    def status(self) -> dict[str, Any]:
        """What C{/health} shows about this worker."""
        return {
            "running": self._inflight is not None,
            "every_seconds": self.every,
            "runs": self.runs,
            "skipped": self.skipped,
            "failures": self.failures,
            "last_run": _iso(self.last_run),
            "last_success": _iso(self.last_success),
            "last_error": self.last_error,
            "next_run": (
                _iso(self._next.getTime())
                if self._next is not None and self._next.active() else None
            ),
        }

    # -- internals -----------------------------------------------------------

    def _again(self, delay: float) -> None:
        if self.running:
            self._next = self.clock.callLater(delay, self._run)

    def _run(self) -> None:
        self._next = None
        self.last_run = self.clock.seconds()
        d = Deferred.fromCoroutine(self._attempt())
        if self.timeout is not None:
            d.addTimeout(self.timeout, self.clock)
        self._inflight = d
        d.addCallbacks(self._done, self._failed)
        d.addBoth(self._settled)

    async def _attempt(self) -> bool:
        if self.lock is None:
            await maybeDeferred(self.job)
            return True
        held = await self.lock()
        if held is None:
            return False
        try:
            await maybeDeferred(self.job)
        finally:
            await held.release()
        return True

    def _done(self, ran: bool) -> None:
        soon, self._again_soon = self._again_soon, False
        if ran:
            self.runs += 1
            self.failures = 0
            self.last_success = self.clock.seconds()
            self.last_error = None
        else:
            self.skipped += 1
            self._log.debug("Worker {worker} skipped: another process holds its lock",
                            worker=self.name)
        self._again(0 if soon else self.every)

    def _failed(self, failure: Failure) -> None:
        self._again_soon = False
        self.failures += 1
        self.last_error = f"{type(failure.value).__name__}: {failure.value}"
        delay = self.backoff(self.failures)
        if failure.check(VeilError, RunTimedOut):
            # Expected trouble (a database away, a run too slow): no traceback.
            self._log.error(
                "Worker {worker} failed (attempt {attempt}): {error}; next try in {delay:.1f} s",
                worker=self.name, attempt=self.failures, error=self.last_error, delay=delay)
        else:
            self._log.failure(
                "Worker {worker} failed (attempt {attempt}); next try in {delay:.1f} s",
                failure, worker=self.name, attempt=self.failures, delay=delay)
        self._again(delay)

    def _settled(self, _: object) -> None:
        self._inflight = None

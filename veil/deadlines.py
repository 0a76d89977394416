"""
Many time-outs on one timer.

A connection's time-out changes several times per request (header read,
body, idle keep-alive).  With one C{DelayedCall} each, every change is a
cancel and a new call, a heap push with Python-level comparisons; measured
under the shared benchmark's keep-alive load that was several percent of
the proxy's time.  Here an item keeps its deadline as a float, which costs
nothing to set, and one L{Deadlines} timer looks at all the items every
C{tick} seconds: an item times out at most C{tick} late, which for
time-outs of seconds or more is what servers do anyway.
"""

from __future__ import annotations

from typing import Any, Protocol


class Timed(Protocol):
    #: When the item times out (clock seconds), or 0.0 for never.
    deadline: float

    def expired(self) -> None:
        """The deadline has passed; it was reset to 0.0 first."""


class Deadlines:
    """
    Items with a C{deadline}, checked every C{tick} seconds while there are
    any (no timer is left pending once the last one is discarded).
    """

    def __init__(self, clock: Any, tick: float) -> None:
        self.clock = clock
        self.tick = tick
        self.items: set[Timed] = set()
        self._call: Any = None

    @staticmethod
    def tick_for(*timeouts: float) -> float:
        """A quarter of the shortest time-out, between 50 ms and 1 s."""
        return max(0.05, min(1.0, *(t / 4 for t in timeouts)))

    def add(self, item: Timed) -> None:
        self.items.add(item)
        if self._call is None:
            self._call = self.clock.callLater(self.tick, self._sweep)

    def discard(self, item: Timed) -> None:
        items = self.items
        items.discard(item)
        if not items and self._call is not None:
            self.stop()

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _sweep(self) -> None:
        self._call = None
        now = self.clock.seconds()
        for item in [item for item in self.items if 0.0 < item.deadline <= now]:
            item.deadline = 0.0
            item.expired()
        if self.items and self._call is None:
            self._call = self.clock.callLater(self.tick, self._sweep)

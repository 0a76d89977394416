"""
The bytes of request bodies the proxy holds, bounded across all its
connections.

A request body's first bytes (up to the WAF's inspection limit, all of a
small body) are held before an origin connection is taken
(L{veil.proxy.server.Exchange}).  Every byte held is charged here when it
arrives and refunded when it is forwarded or dropped.  Once more is held
than the budget allows, it is I{spent}: a connection that would hold more
stops reading (back-pressure), and reads again when bytes are refunded, in
the order it stopped; a request whose turn it is goes on with what it holds.

A connection that is told to stop may already have read one more piece
(what one read brings, 64 KiB at most), so the bytes held stay below the
capacity plus one read per connection: never unbounded.
"""

from __future__ import annotations

from typing import Any, Protocol

#: What one read may bring (Twisted's read size): resumed connections are
#: counted at this much each, so that resuming cannot overshoot by much.
READ_SIZE = 65536


class Reader(Protocol):
    def pause(self, bit: int) -> None: ...
    def unpause(self, bit: int) -> None: ...


class BodyBudget:
    """
    @ivar capacity: bytes that may be held at once.
    @ivar used: bytes held now.
    @param bit: the pause reason the readers are paused with.
    """

    def __init__(self, capacity: int, bit: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._bit = bit
        #: Readers stopped for the budget, in the order they stopped.
        self._waiting: dict[Any, None] = {}

    @property
    def spent(self) -> bool:
        """Whether holding one more byte would exceed the capacity."""
        return self.used >= self.capacity

    @property
    def waiting(self) -> int:
        """How many readers are stopped for the budget."""
        return len(self._waiting)

    def wait(self, reader: Reader) -> None:
        """Stop C{reader} until bytes are refunded."""
        if reader not in self._waiting:
            self._waiting[reader] = None
            reader.pause(self._bit)

    def forget(self, reader: Reader) -> None:
        """C{reader} no longer waits (it is gone, or holds nothing more)."""
        self._waiting.pop(reader, None)

    def refund(self, count: int) -> None:
        """C{count} bytes are no longer held: let waiting readers go on while there is room."""
        self.used -= count
        waiting = self._waiting
        room = self.capacity - self.used
        while waiting and room > 0:
            reader = next(iter(waiting))
            del waiting[reader]
            room -= READ_SIZE
            reader.unpause(self._bit)

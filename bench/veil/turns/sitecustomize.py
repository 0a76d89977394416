"""
Reactor-turn recorder for C{bench/veil/profile.sh turns}: put this directory
on C{PYTHONPATH} and Python imports it at start-up.

With C{PROFILE_TURNS_OUT} set it wraps L{veil.reactor.VeilReactor.doPoll} and
L{veil.store.requestlog.RequestLog._write} to record, for every reactor
turn, how many events it dispatched, its wall time and the reactor thread's
CPU time, and for every request-log batch, when its write began and ended;
both go to C{PROFILE_TURNS_OUT} when the process exits.  A turn whose wall time
is well above its CPU time is one in which the reactor thread was not
running: waiting for the GIL or for the CPU.

C{PROFILE_NO_DB_WRITE=1} is a diagnostic, never for production: the
writer prepares each batch's COPY text as usual but does not send it, so the
rows are lost; it measures what the database round trip costs the proxy.
"""

from __future__ import annotations

import atexit
import os
import time

_OUT = os.environ.get("PROFILE_TURNS_OUT")


def _install(out: str) -> None:
    from veil.reactor import VeilReactor
    from veil.store import requestlog

    turns: list[tuple[int, float, float, float]] = []
    writes: list[tuple[float, float, int]] = []
    wall, cpu = time.perf_counter, time.thread_time
    do_poll = VeilReactor.doPoll

    def timed_poll(self: VeilReactor, timeout: float | None) -> None:
        poller = self._poller
        if not isinstance(poller, _Poller):
            poller = self._poller = _Poller(poller)
        poller.events = 0
        do_poll(self, timeout)
        if poller.events:
            # From epoll's return to the end of dispatch: the waiting is not
            # part of the turn.
            turns.append((poller.events, wall() - poller.wall, poller.wall,
                          cpu() - poller.cpu))

    write = requestlog.RequestLog._write
    skip = os.environ.get("PROFILE_NO_DB_WRITE") == "1"

    def timed_write(self: requestlog.RequestLog, batch: requestlog.Batch) -> None:
        began = wall()
        try:
            if skip:
                requestlog.copy_text(batch, range(1, len(batch) + 1))
                return
            write(self, batch)
        finally:
            writes.append((began, wall(), len(batch)))

    def dump() -> None:
        with open(out, "w") as f:
            for events, seconds, at, cpu_seconds in turns:
                f.write(f"turn {at:.6f} {events} {seconds:.6f} {cpu_seconds:.6f}\n")
            for began, ended, rows in writes:
                f.write(f"write {began:.6f} {ended:.6f} {rows}\n")

    VeilReactor.doPoll = timed_poll  # type: ignore[method-assign]
    VeilReactor.doIteration = timed_poll  # type: ignore[method-assign]
    requestlog.RequestLog._write = timed_write  # type: ignore[method-assign]
    atexit.register(dump)


class _Poller:
    """The reactor's epoll object, noting when each poll returns and with how many events."""

    def __init__(self, epoll: object) -> None:
        self._epoll = epoll
        self.events, self.wall, self.cpu = 0, 0.0, 0.0

    def poll(self, *args: object) -> list:
        events = self._epoll.poll(*args)
        self.events, self.wall, self.cpu = len(events), time.perf_counter(), time.thread_time()
        return events

    def __getattr__(self, name: str) -> object:
        return getattr(self._epoll, name)


if _OUT:
    _install(_OUT)

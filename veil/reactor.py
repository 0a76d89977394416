"""
Veil's reactor: Twisted's epoll reactor without the per-event log context.

For every ready file descriptor, L{EPollReactor.doPoll} calls
C{log.callWithLogger(selectable, ...)}: it asks the selectable for its log
prefix and pushes a context dictionary, so that the I{legacy}
C{twisted.python.log} can stamp events with a C{system}.  Veil logs with
C{twisted.logger}, which does not read that context, and a proxy under load
dispatches several events per request: measured with callgrind under the
shared benchmark's keep-alive load, the wrapper was 12% of all the
instructions Veil ran per request (C{docs/performance.md}).

L{VeilReactor.doPoll} differs only in not pushing that context, and in
handling the usual event (readable, nothing else) inline, the way
C{_doReadOrWrite} does; every other event goes through C{_doReadOrWrite}
(so errors, hang-ups and disconnection are handled exactly as before).

C{twistd veil} and C{python -m veil.child} install it (L{install_if_free})
unless a reactor is already chosen (C{twistd --reactor=...}); tests run on
trial's reactor.
"""

from __future__ import annotations

import sys

from select import EPOLLIN

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import log


class VeilReactor(EPollReactor):
    """L{EPollReactor} whose event dispatch skips the legacy log context."""

    def doPoll(self, timeout: float | None) -> None:
        if timeout is None:
            timeout = -1  # wait indefinitely
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except InterruptedError:
            return
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if event != EPOLLIN:
                dispatch(selectable, fd, event)
                continue
            # Only readable, the usual event: what _doReadOrWrite does for
            # it, without its frame and its checks for other events.
            try:
                why = _NO_FILEDESC if selectable.fileno() == -1 else selectable.doRead()
            except BaseException:
                why = sys.exc_info()[1]
                log.err()
            if why:
                self._disconnectSelectable(selectable, why, True)

    doIteration = doPoll


def install_if_free() -> bool:
    """
    Install L{VeilReactor} as the global reactor, unless one is installed
    already.

    @return: whether it was installed.
    """
    if "twisted.internet.reactor" in sys.modules:
        return False
    from twisted.internet.main import installReactor

    installReactor(VeilReactor())
    return True

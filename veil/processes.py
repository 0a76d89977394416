"""
Several Veil processes on one machine (C{processes.workers = N}).

The process C{twistd} starts is the main one (number 0).  It binds the
ports (L{veil.sockets.Listeners}), starts the embedded PostgreSQL cluster if
there is one, applies the migrations, starts itself, and then starts
processes 1…N-1 with L{ProcessGroup}: each is a full Veil (edge, proxy,
request log, caches, workers) run by L{veil.child}, on its own sockets and
the same database.  Workers that must run once per cluster take their
advisory lock, so N processes run them once.

Each child reports C{READY} on a pipe once it serves; the main process tells
systemd C{READY=1} when all have.  A child that dies is started again, with
back-off.  A child whose main process goes away sees its control pipe close
and stops.  Stopping (SIGTERM to the main process) sends SIGTERM to every
child, which drains like the main process does; the main process waits for
them (killing any still there after C{processes.stop_timeout}) before it
stops its own store, and the embedded cluster last.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from veil.errors import VeilError

_log = Logger()

#: The child's end of its control pipe: it writes C{READY}, and sees EOF on
#: its standard input when the main process goes away.
CONTROL_FD = 3
#: Where the child finds its first listening socket.
FIRST_SOCKET_FD = 4
#: Environment a child must not inherit.
_NOT_INHERITED = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_PID",
                  "WATCHDOG_USEC")


class ChildFailed(VeilError):
    """A Veil process ended before it was ready."""


def spool_dir(root: Path, index: int) -> Path:
    """The request-log spool of process C{index} under C{root}."""
    return root / "request_log" if index == 0 else root / f"request_log-{index}"


def adopt_orphan_spools(root: Path, count: int) -> int:
    """
    Move the spooled request-log batches of processes that no longer run
    (numbers ≥ C{count}, left by an earlier run with more processes) into
    process 0's spool, after its own, so they are replayed and not lost.

    @return: how many batch files were moved.
    """
    own = spool_dir(root, 0)
    pattern = re.compile(r"^request_log-(\d+)$")
    moved = 0
    if not root.is_dir():
        return 0
    for directory in sorted(root.iterdir()):
        match = pattern.match(directory.name)
        if match is None or int(match.group(1)) < count or not directory.is_dir():
            continue
        files = sorted(p for p in directory.glob("*.rows") if p.stem.isdigit())
        if files:
            own.mkdir(parents=True, exist_ok=True, mode=0o700)
            taken = [int(p.stem) for p in own.glob("*.rows") if p.stem.isdigit()]
            next_number = max(taken, default=-1) + 1
            for path in files:
                path.rename(own / f"{next_number:012d}.rows")
                next_number += 1
                moved += 1
        for leftover in directory.iterdir():
            leftover.unlink()
        directory.rmdir()
    if moved:
        _log.info("Took over {count} spooled request-log batches of processes no longer run",
                  count=moved)
    return moved


class _Child(ProcessProtocol):
    def __init__(self, group: ProcessGroup, index: int) -> None:
        self.group = group
        self.index = index
        self.pid: int | None = None
        self.ready = False
        self.started_at = group.reactor.seconds()
        self.ended: Deferred[None] = Deferred()
        self._buffer = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd != CONTROL_FD:
            return
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line.strip() == b"READY" and not self.ready:
                self.ready = True
                self.group._ready(self)

    def processEnded(self, reason: Failure) -> None:
        self.group._ended(self, reason)
        self.ended.callback(None)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass


class ProcessGroup:
    """
    Processes 1…C{count}-1, started and kept running by the main process.

    @param argv: the command line of process C{index}.
    @param fds: the listening sockets of process C{index}: name → fd here.
    @param env: the environment of the children.
    """

    def __init__(self, reactor: Any, count: int, argv: Callable[[int], list[str]],
                 fds: Callable[[int], Mapping[str, int]], env: Mapping[str, str], *,
                 stop_timeout: float = 30.0, max_backoff: float = 30.0) -> None:
        self.reactor = reactor
        self.count = count
        self._argv = argv
        self._fds = fds
        self.env = {k: v for k, v in env.items() if k not in _NOT_INHERITED}
        self.stop_timeout = stop_timeout
        self.max_backoff = max_backoff
        self.children: dict[int, _Child] = {}
        self.restarts: dict[int, int] = {}
        self.stopping = False
        self._all_ready: Deferred[None] | None = None
        self._respawns: dict[int, Any] = {}

    # -- start ------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Start every child; fires when all are ready, fails with
        L{ChildFailed} if one cannot be started or ends first.
        """
        self._all_ready = Deferred()
        for index in range(1, self.count):
            try:
                self._spawn(index)
            except ChildFailed as e:
                self._all_ready.errback(e)
                return self._all_ready
        if self.count <= 1:
            self._all_ready.callback(None)
        return self._all_ready

    def _spawn(self, index: int) -> None:
        self._respawns.pop(index, None)
        child = _Child(self, index)
        child_fds: dict[int, Any] = {0: "w", 1: 1, 2: 2, CONTROL_FD: "r"}
        argv = self._argv(index)
        fd = FIRST_SOCKET_FD
        for name, own_fd in sorted(self._fds(index).items()):
            child_fds[fd] = own_fd
            argv += ["--socket", f"{name}={fd}"]
            fd += 1
        try:
            self.reactor.spawnProcess(child, argv[0], argv, env=self.env, childFDs=child_fds)
        except Exception as e:
            # Nothing was started (an OSError from fork or exec, a bad
            # argument): no child to supervise or stop.
            raise ChildFailed(f"cannot start Veil process {index}: {e!r}") from e
        self.children[index] = child
        _log.info("Started Veil process {index} (pid {pid})", index=index, pid=child.pid)

    def _respawn(self, index: int, delay: float) -> None:
        try:
            self._spawn(index)
        except ChildFailed as e:
            delay = min(self.max_backoff, delay * 2)
            _log.error("{error}; trying again in {delay:.1f} s", error=e, delay=delay)
            self._respawns[index] = self.reactor.callLater(delay, self._respawn, index, delay)

    def _ready(self, child: _Child) -> None:
        _log.info("Veil process {index} (pid {pid}) is ready", index=child.index, pid=child.pid)
        waiting = self._all_ready
        if (waiting is not None and not waiting.called
                and all(c.ready for c in self.children.values())
                and len(self.children) == self.count - 1):
            waiting.callback(None)

    def _ended(self, child: _Child, reason: Failure) -> None:
        if self.children.get(child.index) is child:
            del self.children[child.index]
        how = _how_it_ended(reason)
        if self.stopping:
            _log.info("Veil process {index} (pid {pid}) stopped: {how}", index=child.index,
                      pid=child.pid, how=how)
            return
        waiting = self._all_ready
        if waiting is not None and not waiting.called:
            waiting.errback(ChildFailed(
                f"Veil process {child.index} ended before it was ready: {how}"))
            return
        ran = self.reactor.seconds() - child.started_at
        restarts = 0 if ran > 60.0 else self.restarts.get(child.index, 0) + 1
        self.restarts[child.index] = restarts
        delay = min(self.max_backoff, 0.5 * 2 ** min(restarts, 8))
        _log.error("Veil process {index} (pid {pid}) ended: {how}; starting it again in "
                   "{delay:.1f} s", index=child.index, pid=child.pid, how=how, delay=delay)
        self._respawns[child.index] = self.reactor.callLater(delay, self._respawn, child.index,
                                                             delay)

    # -- stop -------------------------------------------------------------------

    def stop(self) -> Deferred[None]:
        """SIGTERM every child; fires when all have ended (SIGKILL after the time-out)."""
        self.stopping = True
        for call in self._respawns.values():
            if call.active():
                call.cancel()
        self._respawns.clear()
        children = list(self.children.values())
        if not children:
            return succeed(None)
        for child in children:
            child.signal("TERM")

        def kill() -> None:
            for child in children:
                if not child.ended.called:
                    _log.warn("Veil process {index} (pid {pid}) did not stop in {timeout} s;"
                              " killing it", index=child.index, pid=child.pid,
                              timeout=self.stop_timeout)
                    child.signal("KILL")

        killer = self.reactor.callLater(self.stop_timeout, kill)
        done = DeferredList([c.ended for c in children])

        def finished(_: object) -> None:
            if killer.active():
                killer.cancel()

        done.addCallback(finished)
        return done

    # -- status -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            str(index): {"pid": child.pid, "ready": child.ready,
                         "restarts": self.restarts.get(index, 0)}
            for index, child in sorted(self.children.items())
        }


def _how_it_ended(reason: Failure) -> str:
    if reason.check(ProcessDone):
        return "exit status 0"
    value = reason.value
    if getattr(value, "signal", None):
        try:
            return f"killed by {signal.Signals(value.signal).name}"
        except ValueError:
            return f"killed by signal {value.signal}"
    return f"exit status {getattr(value, 'exitCode', '?')}"


def child_argv(index: int, config_path: str | None, logger: str | None) -> list[str]:
    """The command line of child C{index} (sockets are added by L{ProcessGroup})."""
    argv = [sys.executable, "-m", "veil.child", "--index", str(index)]
    if config_path:
        argv += ["--config", os.path.abspath(config_path)]
    if logger:
        argv += ["--logger", logger]
    return argv

"""
The listening sockets of Veil's ports, and how processes share them.

A port reaches a process in one of three ways:

  - bound with C{listenTCP}: one process (C{processes.workers = 1});
  - bound once per process with C{SO_REUSEPORT} (C{workers > 1}): the main
    process binds every socket before it starts the others and hands each
    its own, so the kernel spreads new connections evenly over the
    processes.  The main process keeps the other processes' sockets open,
    so connections that reach a process being restarted wait in its queue
    instead of being refused;
  - inherited from systemd socket activation (C{LISTEN_FDS}, with
    C{FileDescriptorName=} C{edge}, C{http} or C{dashboard}): one socket,
    shared by all processes.  Ports systemd does not pass are bound as above.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Mapping
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.python.systemd import ListenFDs

from veil.config import Config
from veil.errors import ConfigError, VeilError
from veil.tcp import adopt_port, listen_tcp

#: The ports a Veil process listens on, by name (as in the configuration).
PORT_NAMES = ("edge", "http", "dashboard")
BACKLOG = 1024

_WHY_NOT = {
    errno.EADDRINUSE: "is already in use (another Veil, or another server, listens there)",
    errno.EACCES: "needs a privilege to bind: run Veil with CAP_NET_BIND_SERVICE (the systemd"
                  " unit gives it) or choose a port above 1023",
    errno.EADDRNOTAVAIL: "is not an address of this machine",
}


class ListenFailed(VeilError):
    """One of Veil's ports cannot be listened on; the message says which and why."""

    @classmethod
    def from_error(cls, name: str, address: str, port: int, error: BaseException) -> ListenFailed:
        cause = getattr(error, "socketError", error)
        number = getattr(cause, "errno", None)
        why = _WHY_NOT.get(number) or getattr(cause, "strerror", None) or str(cause)
        return cls(f"cannot listen on {address}:{port} ({name}.address, {name}.port): {why}")


def systemd_sockets(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """
    The sockets systemd passed to this process, by name; empty outside
    socket activation.

    @raise ConfigError: if a passed socket has no name Veil knows.
    """
    fds = ListenFDs.fromEnvironment(environ)
    named = fds.inheritedNamedDescriptors()
    if len(named) != len(fds.inheritedDescriptors()):
        raise ConfigError("systemd", "LISTEN_FDNAMES",
                          "every socket needs a FileDescriptorName (edge, http or dashboard)")
    for name in named:
        if name not in PORT_NAMES:
            raise ConfigError("systemd", "LISTEN_FDNAMES",
                              f"{name!r} is not one of: {', '.join(PORT_NAMES)}")
    return named


def bind_reuseport(address: str, port: int, count: int,
                   backlog: int = BACKLOG) -> list[socket.socket]:
    """
    C{count} listening sockets on one address and port with C{SO_REUSEPORT}.
    Port 0 picks a free port for the first; the others join it.

    @raise CannotListenError: if one cannot be bound; none is left open.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address, port))
            port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise CannotListenError(address, port, e) from None
    return sockets


def adopt(reactor: Any, fd: int, factory: Any) -> Any:
    """Listen with C{factory} on the listening socket C{fd} (which is duplicated)."""
    probe = socket.socket(fileno=os.dup(fd))
    try:
        family = probe.family
        kind = probe.type
        listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    finally:
        probe.close()
    if kind != socket.SOCK_STREAM or not listening or family not in (socket.AF_INET,
                                                                         socket.AF_INET6):
        raise ConfigError("sockets", f"fd {fd}", "is not a listening TCP socket")
    # systemd passes blocking sockets unless told NonBlocking=; Twisted
    # accepts in a loop until EAGAIN, so a blocking one would hang the reactor.
    os.set_blocking(fd, False)
    return adopt_port(reactor, fd, family, factory)


class Listeners:
    """
    The ports of all of this machine's Veil processes, held by the main one.

    @param count: how many processes share each port.
    @param inherited: sockets from systemd, by name (L{systemd_sockets}).
    """

    def __init__(self, reactor: Any, config: Config, count: int,
                 inherited: Mapping[str, int] | None = None) -> None:
        self.reactor = reactor
        self.config = config
        self.count = count
        self.inherited = dict(inherited or {})
        self._reuse: dict[str, list[socket.socket]] = {}

    def listen(self, name: str, factory: Any) -> Any:
        """
        Listen on port C{name} in the main process; return the listening port.

        @raise ListenFailed: naming the port and why it cannot be used.
        """
        listen = getattr(self.config, name)
        if name in self.inherited:
            try:
                return adopt(self.reactor, self.inherited[name], factory)
            except ConfigError as e:
                raise ListenFailed(f"the socket systemd passed as {name!r} {e.reason}") from None
        try:
            return self._listen(name, listen.address, listen.port, factory)
        except CannotListenError as e:
            raise ListenFailed.from_error(name, listen.address, listen.port, e) from None

    def _listen(self, name: str, address: str, port: int, factory: Any) -> Any:
        if self.count == 1 or name == "dashboard":
            return listen_tcp(self.reactor, port, factory, interface=address, backlog=BACKLOG)
        sockets = bind_reuseport(address, port, self.count)
        first = sockets.pop(0)
        try:
            listening = adopt(self.reactor, first.fileno(), factory)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        finally:
            first.close()
        self._reuse[name] = sockets
        return listening

    def for_process(self, index: int) -> dict[str, int]:
        """The listening sockets (fds in this process) for process C{index} ≥ 1."""
        fds = {name: fd for name, fd in self.inherited.items() if name != "dashboard"}
        for name, sockets in self._reuse.items():
            fds[name] = sockets[index - 1].fileno()
        return fds

    def close(self) -> None:
        """Close the sockets held for the other processes."""
        for sockets in self._reuse.values():
            for sock in sockets:
                sock.close()
        self._reuse.clear()

"""
TCP for the edge and the origin pool: no Nagle, and writes that go out at once.

Twisted's TCP transport queues every C{write} and sends it on the reactor's
next turn, once epoll says the socket is writable: two C{epoll_ctl} calls
(register, unregister) and a reactor iteration per write.  A proxy writes
twice per request (to the origin, to the client), almost always into an
empty send buffer, so L{_WriteAtOnce} tries C{send} first and falls back to
the queue only for what the kernel did not take (or when something is
queued already, or on an error, which the queue then reports as usual).
Ordering, back-pressure (producers are paused by the queue's size) and
C{loseConnection} are Twisted's, unchanged.

L{listen_tcp} and L{adopt_port} make listening ports whose connections are
such transports; L{TCPConnector} is a stand-in reactor for the client
endpoints (C{TCP4ClientEndpoint}, C{HostnameEndpoint}, ...) whose
C{connectTCP} makes them too, and which may refuse an address: the
endpoints resolve names and then call C{connectTCP} with each address they
try, so a guard there sees the address actually connected to.
"""

from __future__ import annotations

from collections.abc import Callable
from errno import EWOULDBLOCK
from typing import Any

from twisted.internet import abstract, error, main, tcp
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python import failure
from zope.interface import implementer

_log = Logger()


def no_delay(transport: Any) -> None:
    """
    Turn Nagle's algorithm off for C{transport} (TCP, or TLS over TCP), so
    that small writes (handshake flights, response heads) leave at once
    instead of waiting for the peer's delayed ACK.
    """
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, OSError):
        pass  # not TCP (a test transport), or already closed


class _WriteAtOnce:
    """For L{tcp.Connection} subclasses: send at once when nothing is queued."""

    def write(self, data: bytes) -> None:
        if type(data) is bytes:
            data = self._send_now(data)
            if data:
                abstract.FileDescriptor.write(self, data)
        else:
            abstract.FileDescriptor.write(self, data)

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))

    def write_scratch(self, data: Any) -> None:
        """
        C{write} from a buffer that is only valid until this call returns
        (the TLS layer's shared scratch buffer): sent from it at once when
        nothing is queued, so that it is not first copied into C{bytes};
        what the kernel does not take is copied into the queue.
        """
        data = self._send_now(data)
        if data:
            abstract.FileDescriptor.write(self, bytes(data))

    def _send_now(self, data: Any) -> Any:
        """
        Send C{data} at once if nothing is queued and the connection is open;
        return what is left to queue (all of it when nothing was sent).
        """
        if (not self._tempDataLen and self.offset == len(self.dataBuffer) and self.connected
                and not self.disconnecting and not self._writeDisconnecting):
            try:
                sent = self.socket.send(data)
            except OSError:
                sent = 0  # queued below; the queue reports a real error
            return data[sent:]
        return data


class _ReadInline:
    """For L{tcp.Connection} subclasses: C{doRead} without the extra call."""

    def doRead(self) -> Any:
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as e:
            return None if e.args[0] == EWOULDBLOCK else main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None


class _PlainHalfClose:
    """
    Twisted adapts the protocol to C{IHalfCloseableProtocol} when the peer
    or this side half-closes: a registry lookup per connection.  Nothing in
    Veil registers such adapters, so asking whether the protocol provides
    the interface gives the same answer, at a fraction of the cost.
    """

    def readConnectionLost(self, reason: Any) -> None:
        if not self._tell_half_closeable("readConnectionLost"):
            self.connectionLost(reason)

    def _closeWriteConnection(self) -> None:
        try:
            self.socket.shutdown(1)
        except OSError:
            pass
        self._tell_half_closeable("writeConnectionLost")

    def _tell_half_closeable(self, method: str) -> bool:
        """Call the protocol's C{method} if it is half-closeable; whether it is."""
        p = self.protocol
        if not IHalfCloseableProtocol.providedBy(p):
            return False
        try:
            getattr(p, method)()
        except BaseException:  # noqa: BLE001 - as Twisted does: never raise into the reactor
            _log.failure("{method} failed", method=method)
            self.connectionLost(failure.Failure())
        return True


class Server(_WriteAtOnce, _ReadInline, _PlainHalfClose, tcp.Server):
    """An accepted connection that writes at once."""


class Client(_WriteAtOnce, _ReadInline, _PlainHalfClose, tcp.Client):
    """An outgoing connection that writes at once."""


class Port(tcp.Port):
    """A listening port whose connections are L{Server}s."""

    transport = Server


def listen_tcp(reactor: Any, port: int, factory: Any, interface: str = "",
               backlog: int = 50) -> Port:
    """C{reactor.listenTCP}, with L{Server} connections."""
    p = Port(port, factory, backlog, interface, reactor)
    p.startListening()
    return p


def adopt_port(reactor: Any, fd: int, family: int, factory: Any) -> Port:
    """C{reactor.adoptStreamPort}, with L{Server} connections."""
    p = Port._fromListeningDescriptor(reactor, fd, family, factory)
    p.startListening()
    return p


class _Connector(tcp.Connector):
    def _makeTransport(self) -> Client:
        return Client(self.host, self.port, self.bindAddress, self, self.reactor)


class Refused(error.ConnectError):
    """The guard refused to connect to C{address} on C{port}, for C{reason}."""

    def __init__(self, address: str, port: int, reason: str) -> None:
        super().__init__(f"{address} port {port}", reason)
        self.address, self.port, self.reason = address, port, reason

    def __str__(self) -> str:
        return f"{self.address} port {self.port} is {self.reason}"


@implementer(IReactorTCP, IReactorTime, IReactorPluggableNameResolver)
class TCPConnector:
    """
    The reactor, for client endpoints, except that C{connectTCP} makes
    L{Client} connections, and asks C{guard(address, port)} first: a
    reason (text) makes it raise L{Refused} instead of connecting.
    """

    def __init__(self, reactor: Any, guard: Callable[[str, int], str | None] | None = None
                 ) -> None:
        self._reactor = reactor
        self._guard = guard

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,
                   bindAddress: Any = None) -> _Connector:
        if self._guard is not None:
            reason = self._guard(host, port)
            if reason is not None:
                raise Refused(host, port, reason)
        connector = _Connector(host, port, factory, timeout, bindAddress, self._reactor)
        connector.connect()
        return connector

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

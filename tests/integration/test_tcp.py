"""
L{veil.tcp}'s connections on real loopback sockets: writes, reads, and
half-closes as Twisted's own TCP transports deliver them.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from veil.tcp import Server, listen_tcp

WAIT = 10.0


class _Recorder(Protocol):
    """Records what the transport tells it; answers each read with C{b"<" + data}."""

    def __init__(self, lost: Deferred[list[Failure]]) -> None:
        self.events: list[str] = []
        self.lost = lost

    def dataReceived(self, data: bytes) -> None:
        self.events.append("data:" + data.decode())
        self.transport.write(b"<" + data)

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.events.append("lost")
        self.lost.callback([reason])  # in a list: a Failure itself would errback


@implementer(IHalfCloseableProtocol)
class _HalfCloseable(_Recorder):
    """When the peer stops sending: a last word, then this side's FIN."""

    fail_read = False

    def readConnectionLost(self) -> None:
        self.events.append("read-closed")
        if self.fail_read:
            raise ZeroDivisionError("read side")
        self.transport.write(b"bye")
        self.transport.loseWriteConnection()

    def writeConnectionLost(self) -> None:
        self.events.append("write-closed")
        self.transport.loseConnection()


def _client(port: int, send: bytes) -> bytes:
    """Connect, send, close the write side, and read until the server's FIN."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(send)
        got = b""
        while not got.startswith(b"<" + send):
            got += s.recv(1000)
        s.shutdown(socket.SHUT_WR)
        while True:
            data = s.recv(1000)
            if not data:
                return got
            got += data


class TCPTests(TestCase):
    """Connections accepted by L{listen_tcp}."""

    def serve(self, protocol: type[_Recorder]) -> tuple[int, list[_Recorder]]:
        made: list[_Recorder] = []

        def build(addr: Any) -> _Recorder:
            made.append(protocol(Deferred()))
            return made[-1]

        factory = Factory.forProtocol(Protocol)
        factory.buildProtocol = build  # type: ignore[method-assign]
        port = listen_tcp(reactor, 0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, made

    async def test_plain_close(self) -> None:
        """
        A protocol that is not half-closeable: the peer's FIN ends the
        connection; what was written before it arrives.
        """
        port, made = self.serve(_Recorder)
        got = await deferToThread(_client, port, b"hi")
        [reason] = await made[0].lost.addTimeout(WAIT, reactor)
        self.assertEqual(got, b"<hi")
        self.assertIsInstance(made[0].transport, Server)
        self.assertTrue(reason.check(ConnectionDone))
        self.assertEqual(made[0].events, ["data:hi", "lost"])

    async def test_half_close(self) -> None:
        """
        A half-closeable protocol hears of the peer's FIN, can still write,
        and hears of its own write side closing.
        """
        port, made = self.serve(_HalfCloseable)
        got = await deferToThread(_client, port, b"hi")
        await made[0].lost.addTimeout(WAIT, reactor)
        self.assertEqual(got, b"<hibye")
        self.assertEqual(made[0].events, ["data:hi", "read-closed", "write-closed", "lost"])

    async def test_half_close_failure(self) -> None:
        """
        An exception in C{readConnectionLost} is logged and ends the
        connection with that failure.
        """
        class Failing(_HalfCloseable):
            fail_read = True

        port, made = self.serve(Failing)
        got = await deferToThread(_client, port, b"hi")
        [reason] = await made[0].lost.addTimeout(WAIT, reactor)
        self.assertEqual(got, b"<hi")
        self.assertTrue(reason.check(ZeroDivisionError))
        self.assertEqual(made[0].events, ["data:hi", "read-closed", "lost"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

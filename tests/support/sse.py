"""
A Server-Sent Events client for the tests: a real HTTP/1.1 client
(C{twisted.web.client.Agent}) over loopback, reading the event stream as a
browser's C{EventSource} does (the WHATWG parsing rules: fields, comments,
the last event id, C{retry}).
"""

from __future__ import annotations

import json
import socket
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from tests.support.waiting import until


@attrs.frozen
class SSEEvent:
    """One dispatched event: its type, data, and the last event id after it."""

    kind: str
    data: str
    id: str

    def json(self) -> Any:
        return json.loads(self.data)


class _Parser(Protocol):
    """The event stream parser (https://html.spec.whatwg.org/#event-stream-interpretation)."""

    def __init__(self, client: SSEClient) -> None:
        self.client = client
        self.buffer = b""
        self.kind = ""
        self.data: list[str] = []

    def dataReceived(self, data: bytes) -> None:
        self.client.received += len(data)
        self.buffer += data
        while True:
            cut = min((i for i in (self.buffer.find(b"\r"), self.buffer.find(b"\n")) if i >= 0),
                      default=-1)
            if cut < 0:
                return
            if self.buffer[cut:cut + 2] == b"\r\n":
                line, self.buffer = self.buffer[:cut], self.buffer[cut + 2:]
            elif self.buffer[cut:cut + 1] == b"\r" and cut + 1 == len(self.buffer):
                return  # a CR at the end: wait for what follows it
            else:
                line, self.buffer = self.buffer[:cut], self.buffer[cut + 1:]
            self.line(line.decode("utf-8"))

    def line(self, line: str) -> None:
        client = self.client
        if not line:
            if self.data:
                client.events.append(SSEEvent(self.kind or "message", "\n".join(self.data),
                                              client.last_id))
            self.kind, self.data = "", []
            return
        if line.startswith(":"):
            client.comments.append(line[1:].strip())
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.kind = value
        elif name == "data":
            self.data.append(value)
        elif name == "id" and "\x00" not in value:
            client.last_id = value
        elif name == "retry" and value.isdigit():
            client.retry = int(value)

    def connectionLost(self, reason: Failure) -> None:
        self.client.closed.callback(None)


class _Sockets:
    """An endpoint factory for the Agent that can shrink the client's receive buffer."""

    def __init__(self, receive_buffer: int | None) -> None:
        self.receive_buffer = receive_buffer

    def endpointForURI(self, uri: Any) -> Any:
        endpoint = TCP4ClientEndpoint(reactor, uri.host.decode("ascii"), uri.port)
        size = self.receive_buffer
        if size is None:
            return endpoint

        class Shrunk:
            def connect(self, factory: Any) -> Deferred[Any]:
                d = endpoint.connect(factory)

                def shrink(protocol: Any) -> Any:
                    handle = protocol.transport.getHandle()
                    handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
                    return protocol

                return d.addCallback(shrink)

        return Shrunk()


@attrs.define(eq=False)
class SSEClient:
    """One stream: open it, then read its events as they come."""

    url: str
    headers: dict[str, str] = attrs.field(factory=dict)
    receive_buffer: int | None = None
    status: int = 0
    response: IResponse | None = None
    body: bytes = b""
    events: list[SSEEvent] = attrs.field(factory=list)
    comments: list[str] = attrs.field(factory=list)
    last_id: str = ""
    retry: int | None = None
    received: int = 0
    closed: Deferred[None] = attrs.field(factory=Deferred)
    _parser: _Parser | None = None
    _seen: int = 0

    async def open(self) -> int:
        """Connect; on 200 start reading events, else read the (JSON) body."""
        agent = Agent.usingEndpointFactory(reactor, _Sockets(self.receive_buffer))
        headers = Headers({"Accept": ["text/event-stream"]})
        for name, value in self.headers.items():
            headers.addRawHeader(name, value)
        response = await agent.request(b"GET", self.url.encode("ascii"), headers)
        self.response, self.status = response, response.code
        if response.code != 200:
            self.body = await readBody(response)
            self.closed.callback(None)
            return self.status
        self._parser = _Parser(self)
        response.deliverBody(self._parser)
        return self.status

    def error(self) -> dict[str, Any]:
        return json.loads(self.body)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    async def wait(self, count: int, within: float = 20.0) -> list[SSEEvent]:
        """Wait (bounded) until C{count} events have come; all of them."""
        await until(lambda: len(self.events) >= count, within,
                    f"{count} events (have {self.kinds()})")
        return self.events

    async def wait_for(self, kind: str, within: float = 20.0) -> SSEEvent:
        """Wait (bounded) for the next event of C{kind} not seen by an earlier wait_for."""
        seen = self._seen

        def found() -> bool:
            return any(e.kind == kind for e in self.events[seen:])

        await until(found, within, f"a {kind} event (have {self.kinds()})")
        index = next(i for i, e in enumerate(self.events[seen:], seen) if e.kind == kind)
        self._seen = index + 1
        return self.events[index]

    def pause(self) -> None:
        """Stop reading from the socket (the server's writes back up)."""
        assert self._parser is not None
        self._parser.transport.pauseProducing()

    def resume(self) -> None:
        assert self._parser is not None
        self._parser.transport.resumeProducing()

    def close(self) -> Deferred[None]:
        """Drop the connection; fires once it is gone."""
        if self._parser is not None and not self.closed.called:
            self._parser.transport.stopProducing()
        return self.closed

"""
A real HTTP/1.1 origin on 127.0.0.1 for proxy tests (a raw protocol, so
that it can stream, delay, misbehave and upgrade on demand).

Endpoints: C{/size/N} (N bytes, Content-Length, streamed), C{/chunked/N}
(chunked), C{/slow} (head delayed by C{origin.slow_delay}), C{/close}
(C{Connection: close}), C{/ws} (101, then echoes bytes), C{/upload}
(counts body bytes without keeping them), anything else: echo of method,
target, headers and body length as JSON.
"""

from __future__ import annotations

import json
from typing import Any

import httptools
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

_PIECE = b"x" * 65536


@implementer(IPullProducer)
class _Body:
    def __init__(self, proto: OriginProtocol, size: int, chunked: bool) -> None:
        self.proto, self.left, self.chunked = proto, size, chunked

    def resumeProducing(self) -> None:
        t = self.proto.transport
        n = min(self.left, len(_PIECE))
        self.left -= n
        if n:
            t.write(b"%x\r\n%s\r\n" % (n, _PIECE[:n]) if self.chunked else _PIECE[:n])
        if not self.left:
            if self.chunked:
                t.write(b"0\r\n\r\n")
            t.unregisterProducer()
            self.proto.done()

    def stopProducing(self) -> None:
        pass


class OriginProtocol(Protocol):
    def __init__(self, factory: OriginFactory) -> None:
        self.f = factory
        self.parser = httptools.HttpRequestParser(self)
        self.served = 0
        self.ws = False
        self.id = 0

    def connectionMade(self) -> None:
        self.f.connections += 1
        self.id = self.f.connections

    def connectionLost(self, reason: Any = None) -> None:
        self.f.lost += 1

    def dataReceived(self, data: bytes) -> None:
        if self.ws:
            self.transport.write(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            rest = data[e.args[0]:]
            if rest:
                self.transport.write(rest)
        except httptools.HttpParserError:
            self.transport.abortConnection()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body_len = b"", [], 0
        if self.served and self.f.drop_reused:
            self.transport.abortConnection()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append([name.decode("latin-1"), value.decode("latin-1")])

    def on_headers_complete(self) -> None:
        self.method = self.parser.get_method()
        expect = any(n.lower() == "expect" for n, _ in self.headers)
        if expect:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, data: bytes) -> None:
        self.body_len += len(data)

    def on_message_complete(self) -> None:
        self.served += 1
        self.f.requests.append((self.method, self.url, self.headers, self.id))
        path = self.url.split(b"?")[0]
        if path == b"/slow":
            self.f.delayed.append(self.f.clock.callLater(self.f.slow_delay, self.respond, path))
        else:
            self.respond(path)

    def respond(self, path: bytes) -> None:
        if not self.transport.connected:
            return
        t = self.transport
        if path.startswith((b"/size/", b"/chunked/")):
            chunked = path.startswith(b"/chunked/")
            size = int(path.rsplit(b"/", 1)[1])
            framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
            t.write(b"HTTP/1.1 200 OK\r\n%s\r\nX-Origin: 1\r\nKeep-Alive: timeout=5\r\n\r\n"
                    % framing)
            if self.method == b"HEAD":
                return self.done()
            t.registerProducer(_Body(self, size, chunked), False)
            return
        if path == b"/ws":
            t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\n")
            self.ws = True
            return
        if path == b"/upload":
            body = b"%d" % self.body_len
        else:
            body = json.dumps({"method": self.method.decode(), "target": self.url.decode(),
                               "headers": self.headers, "body_len": self.body_len,
                               "conn": self.id}).encode()
        close = path == b"/close"
        t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: %s\r\nX-Hop: secret\r\n\r\n%s"
                % (len(body), b"close, X-Hop" if close else b"keep-alive, X-Hop",
                   b"" if self.method == b"HEAD" else body))
        if close:
            t.loseConnection()
        self.done()

    def done(self) -> None:
        pass


class OriginFactory(Factory):
    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.connections = 0
        self.lost = 0
        self.requests: list[Any] = []
        self.slow_delay = 0.0
        self.drop_reused = False
        self.delayed: list[Any] = []

    def cancel(self) -> None:
        """Cancel delayed answers still pending."""
        for call in self.delayed:
            if call.active():
                call.cancel()

    def buildProtocol(self, addr: Any) -> OriginProtocol:
        return OriginProtocol(self)


def listen_origin(testcase: Any) -> tuple[OriginFactory, str]:
    """
    Start an L{OriginFactory} on 127.0.0.1 (port 0) for C{testcase}, stopped
    and its delayed answers cancelled at clean-up.

    @return: the origin and its upstream URL (C{http://127.0.0.1:PORT}).
    """
    from twisted.internet import reactor

    origin = OriginFactory(reactor)
    port = reactor.listenTCP(0, origin, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    testcase.addCleanup(origin.cancel)
    return origin, f"http://127.0.0.1:{port.getHost().port}"


def client_threads(testcase: Any, name: str, size: int = 4) -> Any:
    """A thread pool for blocking test clients, stopped at clean-up."""
    from twisted.python.threadpool import ThreadPool

    pool = ThreadPool(minthreads=0, maxthreads=size, name=name)
    pool.start()
    testcase.addCleanup(pool.stop)
    return pool


class ScriptedProtocol(Protocol):
    """
    One connection of a L{ScriptedOrigin}: parses requests (head and body)
    and lets the origin's C{answer} write whatever it likes.

    @ivar id: this connection's number at the origin (1 for the first).
    """

    def __init__(self, factory: ScriptedOrigin) -> None:
        self.f = factory
        self.parser = httptools.HttpRequestParser(self)
        self.id = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    def connectionMade(self) -> None:
        self.f.connections += 1
        self.id = self.f.connections
        self.f.protocols.append(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.f.lost += 1

    def dataReceived(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            self.transport.abortConnection()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.f.on_head is not None:
            self.f.on_head(self, self.parser.get_method(), self.url)

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        self.f.requests.append((method, self.url, self.id, self.headers, self.body))
        self.f.answer(self, method, self.url)


def plain_answer(proto: ScriptedProtocol, method: bytes, url: bytes) -> None:
    """A well-behaved answer: 200 with the body C{conn N: METHOD URL}."""
    body = b"conn %d: %s %s" % (proto.id, method, url)
    proto.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(body), b"" if method == b"HEAD" else body))


class ScriptedOrigin(Factory):
    """
    An origin whose answers are a test's own: C{answer(proto, method, url)}
    is called once per complete request and writes to C{proto.transport}
    (misbehaving as the test needs); C{on_head} (optional) sees each head
    before its body.  By default every request gets L{plain_answer}.

    @ivar protocols: every connection, in order (C{protocols[0].id == 1}).
    @ivar requests: C{(method, url, connection id, headers, body)} per request.
    """

    noisy = False

    def __init__(self) -> None:
        self.answer: Any = plain_answer
        self.on_head: Any = None
        self.connections = 0
        self.lost = 0
        self.protocols: list[ScriptedProtocol] = []
        self.requests: list[Any] = []

    def buildProtocol(self, addr: Any) -> ScriptedProtocol:
        return ScriptedProtocol(self)


def listen_scripted(testcase: Any, context_factory: Any = None) -> tuple[ScriptedOrigin, int]:
    """
    Start a L{ScriptedOrigin} on 127.0.0.1 (port 0; TLS with
    C{context_factory}), stopped at clean-up; returns it and its port.
    """
    from twisted.internet import reactor

    origin = ScriptedOrigin()
    if context_factory is None:
        port = reactor.listenTCP(0, origin, interface="127.0.0.1")
    else:
        port = reactor.listenSSL(0, origin, context_factory, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return origin, port.getHost().port

"""
TLS for the proxy's client connections, in one thin layer.

L{twisted.protocols.tls.TLSMemoryBIOProtocol} is general: a protocol
wrapper with an application write buffer, small-write aggregation on a
C{callLater(0)}, producer membranes, and pyOpenSSL's Python-level C{recv},
C{send}, C{bio_read} and C{bio_write}, each allocating a buffer and raising
C{WantReadError} to say "nothing more".  Under the shared benchmark's
keep-alive load those layers were a fifth of Veil's time per request.

L{TLSLayer} does the same job for the one application that needs speed,
the reverse proxy (L{veil.proxy.server.ProxyProtocol}), and nothing more:

  - it sits between L{veil.edge.protocol.EdgeProtocol} (which read the
    ClientHello, chose the context and replays the bytes) and the
    application protocol, whose transport it is;
  - the connection is set up through pyOpenSSL's API; the handshake and
    the records then move between the memory BIOs and OpenSSL by direct
    calls into OpenSSL (the bindings pyOpenSSL itself uses), into
    two scratch buffers shared by every connection (the reactor thread is
    the only user), so no call raises and nothing is allocated but the
    bytes themselves;
  - everything a read decrypts goes to the protocol in one C{dataReceived};
    every write is encrypted at once and handed to the TCP transport, whose
    buffer and producer machinery (back-pressure) are used unchanged: a
    producer registered here is registered there;
  - C{loseConnection} waits for a registered producer to go, sends
    C{close_notify}, half-closes TCP (so clients that read to the end see
    it at once) and gives the peer C{linger} seconds to answer before the
    connection is dropped.  A peer's C{close_notify} is answered and the
    connection closed.

When the installed pyOpenSSL does not expose what this needs
(L{AVAILABLE} is false), the edge uses C{TLSMemoryBIOProtocol} for every
connection instead.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.python.failure import Failure

from veil.deadlines import Deadlines
from veil.logs import redact_ip

_log = Logger()

try:  # the bindings pyOpenSSL calls OpenSSL through
    from OpenSSL._util import exception_from_error_queue
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover - depends on the installed pyOpenSSL
    _lib = _ffi = exception_from_error_queue = None

_NEEDED = ("SSL_read", "SSL_write", "SSL_get_error", "SSL_shutdown", "BIO_read", "BIO_write",
           "ERR_clear_error", "SSL_version", "TLS1_3_VERSION", "SSL_do_handshake",
           "SSL_pending", "BIO_get_mem_data")
AVAILABLE = (
    _lib is not None
    and all(hasattr(_lib, name) for name in _NEEDED)
    and all(hasattr(SSL.Connection, name) for name in ("do_handshake", "set_accept_state"))
)

#: Plaintext read per C{SSL_read}, and ciphertext per C{BIO_read}.
_READ_SIZE = 64 * 1024
_OUT_SIZE = 256 * 1024
#: Pieces of a C{writeSequence} shorter than this are gathered into one
#: record; a longer one (a body read) is encrypted from where it is, rather
#: than copied into a joined whole first.
_GATHER = 4096
if AVAILABLE:
    _IN = _ffi.new("char[]", _READ_SIZE)
    _OUT = _ffi.new("char[]", _OUT_SIZE)
    _WANT_READ = _lib.SSL_ERROR_WANT_READ
    _ZERO_RETURN = _lib.SSL_ERROR_ZERO_RETURN
    _TLS13 = _lib.TLS1_3_VERSION
    _NULL = _ffi.NULL

#: Seconds a peer has to answer our close_notify before the connection is dropped.
LINGER = 5.0


class TLSError(ConnectionLost):
    """The TLS layer failed: a malformed record, a failed handshake, an alert."""


def _memory_bios(connection: SSL.Connection) -> tuple[Any, Any, Any]:
    ssl = getattr(connection, "_ssl", None)
    into = getattr(connection, "_into_ssl", None)
    out = getattr(connection, "_from_ssl", None)
    if ssl is None or into is None or out is None:
        raise ValueError("not a pyOpenSSL connection on memory BIOs")
    return ssl, into, out


class TLSLayer:
    """
    The TLS transport of one proxied client connection.

    @param transport: the TCP transport (which the edge protocol owns).
    @param connection: a server C{SSL.Connection} on memory BIOs, not yet
        started.
    @param protocol: the application protocol; this layer is its transport.
    @param deadlines: bounds the wait for the peer's C{close_notify}.
    @param peer: the peer's address, when the caller has it already.
    """

    disconnecting = False

    def __init__(self, transport: Any, connection: SSL.Connection, protocol: Any,
                 deadlines: Deadlines, linger: float = LINGER, peer: Any = None) -> None:
        self.transport = transport
        self._peer = peer
        self.protocol = protocol
        self._tls = connection
        self._ssl, self._rbio, self._wbio = _memory_bios(connection)
        self._deadlines = deadlines
        self._linger = linger
        #: While lingering: when to give up on the peer (see L{Deadlines}).
        self.deadline = 0.0
        self._handshaking = True
        self._early: list[bytes] = []
        self._corked = False
        self._producer: Any = None
        #: Sends ciphertext straight from the shared scratch buffer (a
        #: L{veil.tcp} transport), or L{None}: copied into C{bytes} first.
        self._write_scratch = getattr(transport, "write_scratch", None)
        self._sent_close = False
        self._lost = False
        self._reason: Failure | None = None

    def start(self, received: bytes) -> None:
        """Connect the application, then process the bytes read so far."""
        self._tls.set_accept_state()
        self.protocol.makeConnection(self)
        if received:
            self.dataReceived(received)

    # -- from the TCP side ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._lost:
            return
        _lib.BIO_write(self._rbio, data, len(data))
        if self._handshaking and not self._handshake():
            return
        self._read()

    def connectionLost(self, reason: Failure) -> None:
        if self._lost:
            return
        self._lost = True
        self._cancel_linger()
        if self._reason is not None:
            reason = self._reason
        elif not isinstance(reason.value, (ConnectionDone, ConnectionLost)):
            reason = Failure(ConnectionLost(str(reason.value)))
        protocol, self.protocol = self.protocol, None
        self._producer = None
        protocol.connectionLost(reason)

    # -- TLS -------------------------------------------------------------------------

    def _handshake(self) -> bool:
        """Advance the handshake; whether it is complete."""
        ssl = self._ssl
        done = _lib.SSL_do_handshake(ssl)
        if done != 1:
            if _lib.SSL_get_error(ssl, done) == _WANT_READ:
                self._flush()
                return False
            self._fail(f"handshake failed: {self._error_text()}")
            return False
        self._handshaking = False
        if _lib.SSL_version(self._ssl) != _TLS13:
            # TLS 1.2: the server's Finished, which the client waits for.
            self._flush()
        # TLS 1.3: what is left is session tickets; they go out with the
        # first response (one send, not two).
        if IHandshakeListener.providedBy(self.protocol):
            self.protocol.handshakeCompleted()
        if self._early:
            early, self._early = self._early, []
            self.write(b"".join(early))
        if self.disconnecting and self._producer is None and not self._sent_close:
            self._shutdown()
        return not self._lost

    def _read(self) -> None:
        ssl, buf = self._ssl, _IN
        read = _lib.SSL_read
        n = read(ssl, buf, _READ_SIZE)
        if n > 0:
            data = _ffi.unpack(buf, n)
            if not _lib.BIO_get_mem_data(self._rbio, _NULL) and not _lib.SSL_pending(ssl):
                # Nothing left to decrypt (one record per read, as a rule):
                # another SSL_read would only say so, with SSL_get_error.
                self.protocol.dataReceived(data)
                return
            n = read(ssl, buf, _READ_SIZE)
            if n > 0:
                chunks = [data]
                while n > 0:
                    chunks.append(_ffi.unpack(buf, n))
                    n = read(ssl, buf, _READ_SIZE)
                data = b"".join(chunks)
            error = _lib.SSL_get_error(ssl, n)
            self.protocol.dataReceived(data)
            if self._lost:
                return
        else:
            error = _lib.SSL_get_error(ssl, n)
        if error == _WANT_READ:
            # Whatever reading made OpenSSL write (session tickets, a
            # KeyUpdate answer) goes out with the next write, which RFC 8446
            # allows, or with the close.
            pass
        elif error == _ZERO_RETURN:
            # close_notify from the peer: answer it and close.
            self._flush()
            if not self._sent_close:
                self._sent_close = True
                _lib.SSL_shutdown(ssl)
                _lib.ERR_clear_error()
                self._flush()
            self._cancel_linger()
            self.transport.loseConnection()
        else:
            self._fail(self._error_text())

    def _flush(self) -> None:
        """Hand the ciphertext OpenSSL has written to the TCP transport."""
        out, wbio = _OUT, self._wbio
        n = _lib.BIO_read(wbio, out, _OUT_SIZE)
        if n <= 0:
            return
        if n >= _GATHER and n < _OUT_SIZE and self._write_scratch is not None:
            # Sent from the scratch buffer: no copy of a large write (a
            # small one is cheaper copied, then sent as bytes).
            self._write_scratch(_ffi.buffer(out, n))
            return
        data = _ffi.unpack(out, n)
        if n == _OUT_SIZE:
            chunks = [data]
            n = _lib.BIO_read(wbio, out, _OUT_SIZE)
            while n > 0:
                chunks.append(_ffi.unpack(out, n))
                n = _lib.BIO_read(wbio, out, _OUT_SIZE)
            data = b"".join(chunks)
        self.transport.write(data)

    def _error_text(self) -> str:
        try:
            exception_from_error_queue(SSL.Error)
        except SSL.Error as e:
            return str(e) or "TLS error"
        return "TLS error"  # pragma: no cover - the function always raises

    def _fail(self, why: str) -> None:
        """A fatal TLS error: send what OpenSSL wrote (an alert) and close."""
        _lib.ERR_clear_error()
        if self._reason is None:
            self._reason = Failure(TLSError(why))
        _log.debug("TLS connection from {ip} failed: {why}",
                   ip=redact_ip(getattr(self.transport.getPeer(), "host", "")), why=why)
        self.disconnecting = True
        self._sent_close = True
        self._flush()
        self.transport.loseConnection()

    def _shutdown(self) -> None:
        self._sent_close = True
        _lib.SSL_shutdown(self._ssl)
        _lib.ERR_clear_error()
        self._flush()
        transport = self.transport
        if self._lost:
            return
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            transport.loseConnection()
            return
        half_close()
        deadlines = self._deadlines
        self.deadline = deadlines.clock.seconds() + self._linger
        deadlines.add(self)

    def expired(self) -> None:
        """The peer did not answer our close_notify in time."""
        self._deadlines.discard(self)
        if not self._lost:
            self.transport.abortConnection()

    def _cancel_linger(self) -> None:
        if self.deadline:
            self.deadline = 0.0
            self._deadlines.discard(self)

    # -- ITransport, for the application -----------------------------------------------

    def write(self, data: bytes) -> None:
        if self._lost or self._sent_close or not data:
            return
        if self._handshaking:
            self._early.append(data)
            return
        n = _lib.SSL_write(self._ssl, data, len(data))
        if n != len(data) and not self._write_rest(data, n):
            return
        if not self._corked:
            self._flush()

    def writeSequence(self, data: Any) -> None:
        # Joined: one write, one record for small pieces (a head and a small
        # body).  A response's large piece is a body read, which the proxy
        # puts last (checking only that one is cheaper than a loop, once
        # per response): it is not copied into a join.
        try:
            large = len(data[-1]) >= _GATHER and len(data) > 1
        except (IndexError, TypeError):  # empty, or not a sequence
            large = False
        if large:
            self._write_pieces(data)
        else:
            self.write(b"".join(data))

    def _write_pieces(self, data: Any) -> None:
        """
        L{writeSequence} with a large piece (a body read): small pieces are
        still gathered, a large one is encrypted where it is rather than
        copied into a joined whole first.
        """
        if self._lost or self._sent_close:
            return
        if self._handshaking:
            self._early.append(b"".join(data))
            return
        small: list[bytes] = []
        for piece in data:
            if len(piece) < _GATHER:
                small.append(piece)
                continue
            if small:
                if not self._encrypt(b"".join(small)):
                    return
                small = []
            if not self._encrypt(piece if type(piece) is bytes else bytes(piece)):
                return
        if small and not self._encrypt(b"".join(small)):
            return
        if not self._corked:
            self._flush()

    def _encrypt(self, data: bytes) -> bool:
        """Write C{data} into the TLS connection; whether that worked (else it failed)."""
        if not data:
            return True
        n = _lib.SSL_write(self._ssl, data, len(data))
        return n == len(data) or self._write_rest(data, n)

    def _write_rest(self, data: bytes, n: int) -> bool:
        """
        C{SSL_write} of C{data} returned C{n}: write the rest, if any;
        whether that worked (else the connection failed).
        """
        # Memory BIOs never block, so anything but a short write is an error.
        ssl = self._ssl
        while n > 0:
            data = memoryview(data)[n:]
            if not data:
                return True
            n = _lib.SSL_write(ssl, _ffi.from_buffer(data), len(data))
        self._fail(self._error_text())
        return False

    def cork(self) -> None:
        """
        Hold what is written from now on until C{loseConnection}, which
        sends it with the C{close_notify} (one send instead of two).  For a
        last response: call it only right before the writes that end the
        connection.
        """
        self._corked = True

    def loseConnection(self) -> None:
        if self.disconnecting or self._lost:
            return
        self.disconnecting = True
        if self._handshaking:
            if not self._early:
                self.transport.abortConnection()
            return
        if self._producer is None:
            self._shutdown()

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._sent_close = True
        self.transport.abortConnection()

    def getPeer(self) -> Any:
        peer = self._peer
        if peer is None:
            peer = self._peer = self.transport.getPeer()
        return peer

    def getHost(self) -> Any:
        return self.transport.getHost()

    def getPeerCertificate(self) -> Any:
        return self._tls.get_peer_certificate()

    @property
    def handshake_done(self) -> bool:
        """Whether the handshake has completed."""
        return not self._handshaking

    @property
    def negotiatedProtocol(self) -> bytes | None:
        return self._tls.get_alpn_proto_negotiated() or None

    # -- producers -------------------------------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._lost:
            producer.stopProducing()
            return
        self._producer = producer
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._producer is None:
            return
        self._producer = None
        self.transport.unregisterProducer()
        if self.disconnecting and not self._sent_close and not self._handshaking:
            self._shutdown()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

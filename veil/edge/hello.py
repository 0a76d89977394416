"""
An incremental parser for the TLS ClientHello that opens every edge connection.

pyOpenSSL's SNI callback cannot wait, so the edge reads the ClientHello itself,
picks (or obtains) a certificate for the name it asks for, and only then starts
TLS and replays the bytes it has read.  This module is the reading part.  It is
pure: no I/O, no Twisted, no clock.  The edge protocol feeds a L{HelloReader}
with whatever TCP delivers; the reader reassembles the handshake message across
TCP segments and TLS records, checks every length against its container, and
returns a L{ClientHello} or raises L{HelloError}.  It never raises anything
else, whatever the input.

The structures are those of RFC 8446 section 4.1.2 (ClientHello) and 5.1
(record layer), RFC 6066 section 3 (server_name) and RFC 7301 (ALPN).
"""

from __future__ import annotations

import re
import struct
from typing import Final

import attrs

from veil.errors import VeilError

RECORD_HANDSHAKE: Final = 22
HANDSHAKE_CLIENT_HELLO: Final = 1

#: The largest record fragment RFC 8446 section 5.1 allows (2^14 bytes).
MAX_RECORD_LENGTH: Final = 2**14
DEFAULT_MAX_SIZE: Final = 16384

EXT_SERVER_NAME: Final = 0
EXT_ALPN: Final = 16
EXT_PRE_SHARED_KEY: Final = 41
EXT_SUPPORTED_VERSIONS: Final = 43

TLS13: Final = 0x0304
ACME_TLS_ALPN: Final = b"acme-tls/1"

#: Every value L{HelloError.reason} can take.
REASONS: Final = frozenset({
    "plain_http", "not_tls", "sslv2", "bad_record_version", "record_too_large",
    "non_handshake_record", "not_client_hello", "too_large", "too_fragmented",
    "malformed", "truncated", "empty",
})

_RECORD_HEADER: Final = 5
_HANDSHAKE_HEADER: Final = 4
_HOST_NAME: Final = 0
_MAX_HOST_NAME: Final = 253

#: Request-line openings of plain HTTP, including the HTTP/2 preface.
_HTTP_STARTS: Final = tuple(
    method + b" "
    for method in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT",
                   b"OPTIONS", b"TRACE", b"PATCH", b"PRI")
)
_HTTP_PEEK: Final = max(len(start) for start in _HTTP_STARTS)

_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL: Final = re.compile(r"[0-9]+|0x[0-9a-f]*")


class HelloError(VeilError):
    """
    The bytes that opened a connection are not an acceptable TLS ClientHello.

    @ivar reason: a short code for metrics and logs, one of L{REASONS}:
        C{plain_http} (the bytes start with an HTTP request line),
        C{not_tls} (the first byte is not a handshake record),
        C{sslv2} (an SSL 2.0-style hello), C{bad_record_version},
        C{record_too_large} (a record longer than 2^14 bytes),
        C{non_handshake_record} (a later record of another type),
        C{not_client_hello} (a handshake message of another type),
        C{too_large} (the hello would exceed the reader's C{max_size}),
        C{too_fragmented} (its records' headers alone would take more than
        C{max_size} bytes: thousands of tiny records),
        C{malformed} (a structural error, explained by C{detail}),
        C{truncated} (the input ended inside the hello) and
        C{empty} (the input ended before any byte arrived).
    @ivar detail: what exactly is wrong, for a human; may be empty.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    @property
    def looks_like_http(self) -> bool:
        """
        C{True} when the client spoke plain HTTP to the TLS port, so that
        the edge may answer with a plain-text error or a redirect.
        """
        return self.reason == "plain_http"


def _malformed(detail: str) -> HelloError:
    """
    @return: a L{HelloError} for a structural error described by C{detail}.
    """
    return HelloError("malformed", detail)


@attrs.frozen
class ClientHello:
    """
    The parts of a ClientHello that the edge needs to choose a certificate.

    @ivar legacy_version: the C{legacy_version} field, such as C{0x0303}.
    @ivar random: the 32 random bytes.
    @ivar session_id: the legacy session id (0 to 32 bytes).
    @ivar cipher_suites: the offered cipher suites, in the client's order.
    @ivar compression_methods: the offered compression methods.
    @ivar extensions: the type of every extension, in the client's order.
    @ivar server_name: the C{host_name} of the C{server_name} extension,
        lower-cased, or C{None} when there is none or it is not a valid DNS
        name.
    @ivar server_name_invalid: C{True} when the client sent a C{host_name}
        that is not a valid DNS name (such as an IP literal, which RFC 6066
        forbids); C{server_name} is then C{None}.
    @ivar alpn_protocols: the ALPN protocol names, in the client's order.
    @ivar supported_versions: the versions of the C{supported_versions}
        extension, empty when it is absent.
    """

    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: tuple[int, ...]
    extensions: tuple[int, ...]
    server_name: str | None = None
    server_name_invalid: bool = False
    alpn_protocols: tuple[bytes, ...] = ()
    supported_versions: tuple[int, ...] = ()

    @property
    def offers_tls13(self) -> bool:
        """C{True} when C{supported_versions} lists TLS 1.3."""
        return TLS13 in self.supported_versions

    @property
    def offers_acme_tls_alpn(self) -> bool:
        """
        C{True} when ALPN offers C{acme-tls/1} (RFC 8737), among others or
        alone; check C{alpn_protocols} when only a sole offer will do.
        """
        return ACME_TLS_ALPN in self.alpn_protocols


class HelloReader:
    """
    Accumulates the first bytes of a connection until they hold a whole
    ClientHello.

    Feed it everything TCP delivers, in order, with L{feed}.  Every byte fed
    is kept in L{buffered} so that it can be replayed to the TLS
    implementation.  Errors are final: once L{feed} or L{finish} has raised,
    every later call raises the same L{HelloError}.

    @ivar max_size: the most bytes the ClientHello handshake message may
        have (its 4-byte handshake header included, the record headers
        around it not); a longer hello is refused with C{too_large} as
        soon as that is certain.  However the hello is cut into records,
        their 5-byte headers may add up to C{max_size} bytes more
        (C{too_fragmented} beyond), so at most twice C{max_size} bytes are
        ever buffered.
    """

    # A plain class: one is made per connection.
    __slots__ = ("_buffer", "_error", "_hello", "_message", "_message_size", "_offset",
                 "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if max_size < _RECORD_HEADER:
            raise ValueError(f"'max_size' must be >= {_RECORD_HEADER}: {max_size}")
        self.max_size = max_size
        self._buffer = bytearray()
        self._offset = 0
        self._message = bytearray()
        self._message_size: int | None = None
        self._hello: ClientHello | None = None
        self._error: HelloError | None = None

    @property
    def buffered(self) -> bytes:
        """Every byte fed so far, in order, for replay to the TLS layer."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> ClientHello | None:
        """
        Add bytes received from the peer.

        @param data: the next bytes of the connection.
        @return: C{None} while more bytes are needed, then the L{ClientHello}
            (again on every later call; bytes fed after the hello are only
            kept in L{buffered}).
        @raise HelloError: if the bytes are not an acceptable ClientHello.
        """
        if self._error is not None:
            raise self._error
        self._buffer += data
        if self._hello is None:
            try:
                self._hello = self._advance()
            except HelloError as e:
                self._error = e
                raise
        return self._hello

    def finish(self) -> ClientHello:
        """
        Tell the reader that no more bytes will come (the peer closed the
        connection or the hello timed out).

        @return: the L{ClientHello}, if it was complete.
        @raise HelloError: C{empty} if nothing was received, C{truncated} if
            the hello was incomplete, or the error L{feed} raised before.
        """
        if self._error is not None:
            raise self._error
        if self._hello is not None:
            return self._hello
        if self._buffer:
            self._error = HelloError(
                "truncated", f"input ended after {len(self._buffer)} bytes")
        else:
            self._error = HelloError("empty", "input ended before any byte")
        raise self._error

    def _advance(self) -> ClientHello | None:
        """
        Consume every complete record in the buffer and check the partial
        one as far as it goes.

        @return: the L{ClientHello} once its last record has arrived.
        """
        if self._offset == 0 and not _starts_like_tls(self._buffer):
            return None
        while True:
            start = self._offset
            header = bytes(self._buffer[start:start + _RECORD_HEADER])
            _check_record_header(header, first=start == 0)
            if len(header) < _RECORD_HEADER:
                break
            length = int.from_bytes(header[3:], "big")
            carried = len(self._message) + length
            if carried > self.max_size:
                raise HelloError(
                    "too_large", f"its records carry {carried} bytes, more than {self.max_size}")
            body = start + _RECORD_HEADER
            if body - len(self._message) > self.max_size:
                raise HelloError(
                    "too_fragmented",
                    f"{(body - len(self._message)) // _RECORD_HEADER} records for"
                    f" {carried} bytes of hello")
            end = body + length
            if end > len(self._buffer):
                self._check_message_header(self._buffer[body:body + _HANDSHAKE_HEADER])
                break
            self._message += self._buffer[body:end]
            self._offset = end
            self._check_message_header(b"")
            if self._message_size is not None and len(self._message) >= self._message_size:
                return self._complete()
        return None

    def _check_message_header(self, partial: bytes | bytearray) -> None:
        """
        Check the handshake header as soon as its bytes are known.

        @param partial: the first bytes of the current record's fragment, as
            far as they have arrived (not yet in C{_message}).
        """
        if self._message_size is not None:
            return
        head = bytes(self._message[:_HANDSHAKE_HEADER])
        head += bytes(partial[:_HANDSHAKE_HEADER - len(head)])
        if head and head[0] != HANDSHAKE_CLIENT_HELLO:
            raise HelloError("not_client_hello", f"handshake message type {head[0]}")
        if len(head) == _HANDSHAKE_HEADER:
            size = _HANDSHAKE_HEADER + int.from_bytes(head[1:], "big")
            if size > self.max_size:
                raise HelloError(
                    "too_large", f"hello of {size} bytes, more than {self.max_size}")
            self._message_size = size

    def _complete(self) -> ClientHello:
        """
        Parse the reassembled handshake message.

        @return: the L{ClientHello}.
        """
        size = self._message_size
        assert size is not None
        if len(self._message) > size:
            raise _malformed(
                f"{len(self._message) - size} bytes follow the hello in its last record")
        return _parse_client_hello(bytes(self._message[_HANDSHAKE_HEADER:size]))


def _starts_like_tls(prefix: bytearray) -> bool:
    """
    Tell a TLS handshake record from plain HTTP, SSL 2.0 and other bytes.

    @param prefix: the first bytes of the connection (at least one).
    @return: C{True} if they open a handshake record, C{False} if more bytes
        are needed to decide.
    @raise HelloError: C{plain_http}, C{sslv2} or C{not_tls}.
    """
    if not prefix or prefix[0] == RECORD_HANDSHAKE:
        return bool(prefix)
    if prefix[0] & 0x80:
        if len(prefix) < 3:
            return False
        if prefix[2] == HANDSHAKE_CLIENT_HELLO:
            raise HelloError("sslv2", "SSL 2.0-style hello")
        raise HelloError("not_tls", f"first byte 0x{prefix[0]:02x}")
    peek = bytes(prefix[:_HTTP_PEEK])
    if any(peek.startswith(start) for start in _HTTP_STARTS):
        raise HelloError("plain_http", "an HTTP request line")
    if any(start.startswith(peek) for start in _HTTP_STARTS):
        return False
    raise HelloError("not_tls", f"first byte 0x{prefix[0]:02x}")


def _check_record_header(header: bytes, first: bool) -> None:
    """
    Check as much of a record header as has arrived.

    @param header: up to 5 bytes of a record header.
    @param first: C{True} for the connection's first record, whose type
        L{_starts_like_tls} has already checked.
    """
    if header and not first and header[0] != RECORD_HANDSHAKE:
        raise HelloError("non_handshake_record", f"record type {header[0]} inside the hello")
    if len(header) >= 2 and header[1] != 3:
        raise HelloError("bad_record_version", f"record version major {header[1]}")
    if len(header) >= 3 and header[2] > 4:
        raise HelloError("bad_record_version", f"record version 0x03{header[2]:02x}")
    if len(header) == _RECORD_HEADER:
        length = int.from_bytes(header[3:], "big")
        if length == 0:
            raise _malformed("empty handshake record")
        if length > MAX_RECORD_LENGTH:
            raise HelloError("record_too_large", f"record of {length} bytes")


def _vector(data: bytes, pos: int, end: int, prefix: int, name: str, field: str,
            minimum: int = 0, maximum: int | None = None) -> tuple[int, int]:
    """
    Find a vector with a C{prefix}-byte length at C{pos} in C{data[:end]}.

    Parsing works on indexes into the message, not on a reader object per
    structure: it runs for every new connection.

    @param name: the structure's name, and C{field} the vector's, for
        error details.
    @param minimum: the fewest bytes the vector may hold.
    @param maximum: the most, by default as many as the prefix can count.
    @return: where the vector's contents start and stop.
    @raise HelloError: C{malformed} if the length or the contents do not
        fit in what remains, or the length is out of bounds.
    """
    if end - pos < prefix:
        raise _malformed(f"{name}.{field} length: needs {prefix} bytes, {end - pos} remain")
    length = data[pos] if prefix == 1 else data[pos] << 8 | data[pos + 1]
    top = (1 << (8 * prefix)) - 1 if maximum is None else maximum
    if not minimum <= length <= top:
        raise _malformed(f"{name}.{field}: length {length} outside {minimum}..{top}")
    start = pos + prefix
    if length > end - start:
        raise _malformed(f"{name}.{field}: needs {length} bytes, {end - start} remain")
    return start, start + length


def _trailing(name: str, stop: int, end: int) -> None:
    """@raise HelloError: C{malformed} if bytes follow a structure's last field."""
    if stop != end:
        raise _malformed(f"{name}: {end - stop} trailing bytes")


def _uint16s(name: str, data: bytes) -> tuple[int, ...]:
    """C{data} as big-endian 16-bit integers."""
    if len(data) % 2:
        raise _malformed(f"{name}: {len(data)} bytes is not a multiple of 2")
    return struct.unpack(f">{len(data) // 2}H", data)


def _parse_client_hello(body: bytes) -> ClientHello:
    """
    Parse the body of a ClientHello handshake message.

    @param body: the message without its 4-byte handshake header.
    @return: the L{ClientHello}.
    @raise HelloError: C{malformed} on any structural error.
    """
    end = len(body)
    if end < 2:
        raise _malformed(f"client_hello.legacy_version: needs 2 bytes, {end} remain")
    legacy_version = body[0] << 8 | body[1]
    if legacy_version >> 8 != 3:
        raise _malformed(f"client_hello.legacy_version 0x{legacy_version:04x}")
    if end - 2 < 32:
        raise _malformed(f"client_hello.random: needs 32 bytes, {end - 2} remain")
    random = body[2:34]
    a, b = _vector(body, 34, end, 1, "client_hello", "session_id", 0, 32)
    session_id = body[a:b]
    a, b = _vector(body, b, end, 2, "client_hello", "cipher_suites", 2, 0xFFFE)
    cipher_suites = _uint16s("cipher_suites", body[a:b])
    a, b = _vector(body, b, end, 1, "client_hello", "compression_methods", 1)
    compression_methods = tuple(body[a:b])
    extensions: dict[int, bytes] = {}
    if b < end:
        a, b = _vector(body, b, end, 2, "client_hello", "extensions")
        _trailing("client_hello", b, end)
        extensions = _parse_extensions(body[a:b])
    server_name, server_name_invalid = None, False
    if EXT_SERVER_NAME in extensions:
        raw = _parse_server_name(extensions[EXT_SERVER_NAME])
        server_name = _host_name(raw)
        server_name_invalid = server_name is None
    return ClientHello(
        legacy_version=legacy_version,
        random=random,
        session_id=session_id,
        cipher_suites=cipher_suites,
        compression_methods=compression_methods,
        extensions=tuple(extensions),
        server_name=server_name,
        server_name_invalid=server_name_invalid,
        alpn_protocols=_parse_alpn(extensions.get(EXT_ALPN)),
        supported_versions=_parse_supported_versions(extensions.get(EXT_SUPPORTED_VERSIONS)),
    )


def _parse_extensions(block: bytes) -> dict[int, bytes]:
    """
    Read the extensions block (which ends the message).

    @return: each extension's data by type, in the client's order.
    @raise HelloError: C{malformed} on a duplicate type, a truncated
        extension, or a C{pre_shared_key} that is not last (RFC 8446
        section 4.2.11).
    """
    extensions: dict[int, bytes] = {}
    pos, end = 0, len(block)
    while pos < end:
        if end - pos < 2:
            raise _malformed(f"extensions.extension_type: needs 2 bytes, {end - pos} remain")
        kind = block[pos] << 8 | block[pos + 1]
        a, pos = _vector(block, pos + 2, end, 2, "extensions", f"extension[{kind}]")
        if kind in extensions:
            raise _malformed(f"duplicate extension {kind}")
        if EXT_PRE_SHARED_KEY in extensions:
            raise _malformed("pre_shared_key is not the last extension")
        extensions[kind] = block[a:pos]
    return extensions


def _parse_server_name(data: bytes) -> bytes:
    """
    Parse the C{server_name} extension, which (as OpenSSL requires) must
    hold exactly one entry, of type C{host_name}.

    @return: the raw host name.
    """
    end = len(data)
    a, b = _vector(data, 0, end, 2, "server_name", "server_name_list", 1)
    _trailing("server_name", b, end)
    name_type = data[a]
    if name_type != _HOST_NAME:
        raise _malformed(f"server_name: name_type {name_type}")
    h0, h1 = _vector(data, a + 1, b, 2, "server_name_list", "host_name", 1)
    _trailing("server_name_list", h1, b)
    return data[h0:h1]


def _host_name(raw: bytes) -> str | None:
    """
    Validate a SNI host name as a DNS name.

    Labels are 1 to 63 letters, digits and hyphens, not starting or ending
    with a hyphen; the whole is at most 253 characters and has no trailing
    dot (RFC 6066).  A single label such as C{localhost} is allowed.  IP
    literals are refused: a name whose last label is a number (decimal, or
    C{0x} hexadecimal, as in the WHATWG URL host parser) would be read as
    an IPv4 address, and IPv6 literals contain colons.

    @param raw: the C{host_name} bytes.
    @return: the lower-cased name, or C{None} if it is not valid.
    """
    if len(raw) > _MAX_HOST_NAME or not raw.isascii():
        return None
    labels = raw.decode("ascii").lower().split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    return ".".join(labels)


def _parse_alpn(data: bytes | None) -> tuple[bytes, ...]:
    """
    Parse the ALPN extension (RFC 7301 section 3.1).

    @param data: the extension data, or C{None} when it is absent.
    @return: the protocol names; none when the extension is absent.
    """
    if data is None:
        return ()
    a, b = _vector(data, 0, len(data), 2, "alpn", "protocol_name_list", 2)
    _trailing("alpn", b, len(data))
    protocols = []
    while a < b:
        p0, a = _vector(data, a, b, 1, "protocol_name_list", "protocol_name", 1)
        protocols.append(data[p0:a])
    return tuple(protocols)


def _parse_supported_versions(data: bytes | None) -> tuple[int, ...]:
    """
    Parse the ClientHello form of C{supported_versions} (RFC 8446 section
    4.2.1).

    @param data: the extension data, or C{None} when it is absent.
    @return: the versions; none when the extension is absent.
    """
    if data is None:
        return ()
    a, b = _vector(data, 0, len(data), 1, "supported_versions", "versions", 2, 254)
    _trailing("supported_versions", b, len(data))
    return _uint16s("versions", data[a:b])

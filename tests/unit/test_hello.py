"""Tests for L{veil.edge.hello}."""

from __future__ import annotations

import datetime
import functools
import struct
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from veil.edge.hello import REASONS, ClientHello, HelloError, HelloReader
from veil.errors import VeilError

PROPERTY = settings(max_examples=300, derandomize=True, deadline=None, database=None)


# Real hellos, written by OpenSSL.

@functools.cache
def openssl_hello(server_name: bytes | None = b"example.com",
                  alpn: tuple[bytes, ...] = (b"h2", b"http/1.1"),
                  max_version: int | None = None) -> bytes:
    """
    @return: the bytes an OpenSSL client writes to open a connection.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    client = SSL.Connection(context, None)
    client.set_connect_state()
    if server_name is not None:
        client.set_tlsext_host_name(server_name)
    if alpn:
        client.set_alpn_protos(list(alpn))
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    return client.bio_read(65536)


def records(data: bytes) -> list[tuple[int, int, bytes]]:
    """
    @return: the (type, version, fragment) of each record in C{data}.
    """
    result = []
    while data:
        kind, version, length = struct.unpack("!BHH", data[:5])
        result.append((kind, version, data[5:5 + length]))
        data = data[5 + length:]
    return result


def handshake_message(data: bytes) -> bytes:
    """
    @return: the handshake bytes carried by the records in C{data}.
    """
    return b"".join(fragment for _, _, fragment in records(data))


def extension_types(data: bytes) -> tuple[int, ...]:
    """
    Walk the extensions of a well-formed hello, trusting its lengths.

    @return: the extension types in wire order.
    """
    message = handshake_message(data)
    pos = 4 + 2 + 32
    pos += 1 + message[pos]
    pos += 2 + int.from_bytes(message[pos:pos + 2], "big")
    pos += 1 + message[pos]
    pos += 2
    types = []
    while pos < len(message):
        kind, length = struct.unpack("!HH", message[pos:pos + 4])
        types.append(kind)
        pos += 4 + length
    return tuple(types)


def record(fragment: bytes, kind: int = 22, version: int = 0x0301) -> bytes:
    """
    @return: one TLS record carrying C{fragment}.
    """
    return struct.pack("!BHH", kind, version, len(fragment)) + fragment


def refragment(data: bytes, size: int) -> bytes:
    """
    Split the handshake message of a hello over records of C{size} bytes.

    @param data: a hello as written to the wire.
    @return: the same hello in several records.
    """
    message = handshake_message(data)
    return b"".join(
        record(message[i:i + size], version=0x0303 if i else 0x0301)
        for i in range(0, len(message), size)
    )


# Hand-made hellos, for what OpenSSL would never write.

def vector(prefix: int, data: bytes) -> bytes:
    """
    @return: C{data} preceded by its length in C{prefix} bytes.
    """
    return len(data).to_bytes(prefix, "big") + data


def extension(kind: int, data: bytes) -> bytes:
    """
    @return: one encoded extension.
    """
    return struct.pack("!H", kind) + vector(2, data)


def sni(name: bytes) -> bytes:
    """
    @return: a server_name extension naming C{name}.
    """
    return extension(0, vector(2, b"\x00" + vector(2, name)))


def alpn(*names: bytes) -> bytes:
    """
    @return: an ALPN extension offering C{names}.
    """
    return extension(16, vector(2, b"".join(vector(1, n) for n in names)))


def body(extensions: Sequence[bytes] | None = (), version: bytes = b"\x03\x03",
         session_id: bytes = vector(1, bytes(32)),
         suites: bytes = vector(2, b"\x13\x01\x13\x02"),
         compression: bytes = b"\x01\x00", trailer: bytes = b"") -> bytes:
    """
    @param extensions: encoded extensions, or C{None} to omit the block.
    @return: a ClientHello body, without its handshake header.
    """
    block = b"" if extensions is None else vector(2, b"".join(extensions))
    return version + bytes(range(32)) + session_id + suites + compression + block + trailer


def message(hello_body: bytes, kind: int = 1) -> bytes:
    """
    @return: a handshake message with C{hello_body}.
    """
    return bytes([kind]) + vector(3, hello_body)


def wire(hello_body: bytes) -> bytes:
    """
    @return: a ClientHello with C{hello_body} in one record.
    """
    return record(message(hello_body))


def parse(data: bytes, chunks: Iterable[int] = (), max_size: int = 16384) -> ClientHello | None:
    """
    Feed C{data} to a new reader, cut after the offsets in C{chunks}.

    @return: what the last call to C{feed} returned.
    """
    reader = HelloReader(max_size)
    cuts = sorted(set(chunks) | {0, len(data)})
    result = None
    for start, end in zip(cuts, cuts[1:]):
        result = reader.feed(data[start:end])
    return result


def reason(data: bytes, max_size: int = 16384) -> str:
    """
    @return: the reason of the L{HelloError} that C{data} provokes.
    """
    try:
        parse(data, (), max_size)
    except HelloError as e:
        return e.reason
    raise AssertionError(f"no HelloError for {data[:20]!r}")


class RealHelloTests(SynchronousTestCase):
    """Hellos written by OpenSSL parse to their name, protocols and versions."""

    def test_whole(self) -> None:
        """A default OpenSSL hello yields its SNI, ALPN, TLS 1.3 and extensions in order."""
        data = openssl_hello()
        hello = parse(data)
        assert hello is not None
        self.assertEqual(hello.server_name, "example.com")
        self.assertFalse(hello.server_name_invalid)
        self.assertEqual(hello.alpn_protocols, (b"h2", b"http/1.1"))
        self.assertTrue(hello.offers_tls13)
        self.assertFalse(hello.offers_acme_tls_alpn)
        self.assertIn(0x1301, hello.cipher_suites)
        self.assertEqual(hello.compression_methods, (0,))
        self.assertEqual(hello.legacy_version, 0x0303)
        self.assertEqual(hello.random, handshake_message(data)[6:38])
        self.assertEqual(hello.extensions, extension_types(data))
        self.assertTrue({0, 16, 43} <= set(hello.extensions))

    def test_one_byte_at_a_time(self) -> None:
        """Fed byte by byte, the reader wants more until the very last byte."""
        data = openssl_hello()
        reader = HelloReader()
        results = [reader.feed(data[i:i + 1]) for i in range(len(data))]
        self.assertEqual(results[:-1], [None] * (len(data) - 1))
        self.assertEqual(results[-1], parse(data))
        self.assertEqual(reader.buffered, data)

    def test_fragmented_records(self) -> None:
        """A hello split over 100-byte records parses as it does in one record."""
        data = openssl_hello()
        split = refragment(data, 100)
        self.assertGreater(len(records(split)), 10)
        self.assertEqual(parse(split), parse(data))

    def test_one_byte_records(self) -> None:
        """
        A hello in 1-byte records, which splits even the handshake header,
        parses, also when fed a byte at a time.
        """
        data = openssl_hello()
        split = refragment(data, 1)
        self.assertEqual(parse(split), parse(data))
        self.assertEqual(parse(split, range(len(split))), parse(data))

    def test_buffered_keeps_everything(self) -> None:
        """Bytes after the hello are kept for replay, and the hello is returned again."""
        data = openssl_hello()
        reader = HelloReader()
        hello = reader.feed(data[:700])
        self.assertIsNone(hello)
        hello = reader.feed(data[700:] + b"\x14\x03\x03\x00\x01\x01")
        self.assertIsNotNone(hello)
        self.assertIs(reader.feed(b"more"), hello)
        self.assertEqual(reader.buffered, data + b"\x14\x03\x03\x00\x01\x01more")
        self.assertIs(reader.finish(), hello)

    def test_no_sni(self) -> None:
        """Without server_name the name is None and not flagged invalid."""
        hello = parse(openssl_hello(server_name=None))
        assert hello is not None
        self.assertIsNone(hello.server_name)
        self.assertFalse(hello.server_name_invalid)
        self.assertNotIn(0, hello.extensions)

    def test_acme_tls_alpn(self) -> None:
        """A hello offering only acme-tls/1 is recognised as a tls-alpn-01 probe."""
        hello = parse(openssl_hello(alpn=(b"acme-tls/1",)))
        assert hello is not None
        self.assertTrue(hello.offers_acme_tls_alpn)
        self.assertEqual(hello.alpn_protocols, (b"acme-tls/1",))

    def test_no_alpn(self) -> None:
        """Without ALPN the protocol list is empty."""
        hello = parse(openssl_hello(alpn=()))
        assert hello is not None
        self.assertEqual(hello.alpn_protocols, ())
        self.assertNotIn(16, hello.extensions)

    def test_tls12_only(self) -> None:
        """A TLS 1.2-only client does not offer TLS 1.3."""
        hello = parse(openssl_hello(max_version=SSL.TLS1_2_VERSION))
        assert hello is not None
        self.assertFalse(hello.offers_tls13)
        self.assertNotIn(0x0304, hello.supported_versions)
        self.assertEqual(hello.server_name, "example.com")

    def test_lower_case(self) -> None:
        """The name is lower-cased."""
        hello = parse(openssl_hello(server_name=b"WWW.Example.COM"))
        assert hello is not None
        self.assertEqual(hello.server_name, "www.example.com")

    def test_ip_literal_from_openssl(self) -> None:
        """OpenSSL sends an IP literal when told to; the name is flagged invalid."""
        hello = parse(openssl_hello(server_name=b"192.0.2.1"))
        assert hello is not None
        self.assertIsNone(hello.server_name)
        self.assertTrue(hello.server_name_invalid)

    def test_openssl_accepts_replay(self) -> None:
        """
        OpenSSL accepts the buffered bytes replayed, even when the hello was
        split over 100-byte records, and answers with a ServerHello.
        """
        for data in (openssl_hello(), refragment(openssl_hello(), 100)):
            reader = HelloReader()
            self.assertIsNotNone(parse(data))
            for i in range(0, len(data), 300):
                reader.feed(data[i:i + 300])
            server = SSL.Connection(server_context(), None)
            server.set_accept_state()
            server.bio_write(reader.buffered)
            self.assertRaises(SSL.WantReadError, server.do_handshake)
            reply = server.bio_read(65536)
            self.assertEqual(reply[0], 22)
            self.assertEqual(reply[5], 2)


@functools.cache
def server_context() -> SSL.Context:
    """
    @return: a server context with a self-signed certificate for example.com.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("example.com")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate(cert)
    context.use_privatekey(key)
    return context


class NotTlsTests(SynchronousTestCase):
    """Connections that do not open with a TLS handshake record are refused at once."""

    def test_plain_http(self) -> None:
        """A plain HTTP request is reported as plain_http and looks like HTTP."""
        e = self.assertRaises(HelloError, parse, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(e.reason, "plain_http")
        self.assertTrue(e.looks_like_http)
        self.assertIsInstance(e, VeilError)

    def test_plain_http_by_bytes(self) -> None:
        """The reader waits while the bytes could still be a method, then decides."""
        reader = HelloReader()
        self.assertIsNone(reader.feed(b"OPT"))
        self.assertIsNone(reader.feed(b"IONS"))
        e = self.assertRaises(HelloError, reader.feed, b" * HTTP/1.1\r\n")
        self.assertEqual(e.reason, "plain_http")

    def test_http2_preface(self) -> None:
        """The cleartext HTTP/2 preface counts as plain HTTP."""
        self.assertEqual(reason(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), "plain_http")

    def test_garbage(self) -> None:
        """Bytes that are neither TLS nor HTTP are not_tls, and do not look like HTTP."""
        e = self.assertRaises(HelloError, parse, b"\x00\x01garbage")
        self.assertEqual(e.reason, "not_tls")
        self.assertFalse(e.looks_like_http)
        self.assertEqual(reason(b"GETX / HTTP/1.1"), "not_tls")
        self.assertEqual(reason(b"SSH-2.0-OpenSSH_9.9\r\n"), "not_tls")

    def test_other_record_first(self) -> None:
        """An alert or application data record first is not_tls."""
        self.assertEqual(reason(record(b"\x02\x28", kind=21)), "not_tls")
        self.assertEqual(reason(record(b"data", kind=23)), "not_tls")

    def test_sslv2(self) -> None:
        """An SSL 2.0-style hello (length with the high bit, then type 1) is sslv2."""
        v2 = b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + bytes(21) + bytes(16)
        self.assertEqual(reason(v2), "sslv2")
        self.assertEqual(reason(b"\x80\x2e\x02rest"), "not_tls")

    def test_errors_are_final(self) -> None:
        """After an error, every later call raises the same error."""
        reader = HelloReader()
        first = self.assertRaises(HelloError, reader.feed, b"\x00")
        self.assertIs(self.assertRaises(HelloError, reader.feed, openssl_hello()), first)
        self.assertIs(self.assertRaises(HelloError, reader.finish), first)


class RecordLayerTests(SynchronousTestCase):
    """Records are checked as soon as their headers arrive."""

    def test_bad_record_version(self) -> None:
        """A record version other than 3.0 to 3.4 is bad_record_version."""
        self.assertEqual(reason(b"\x16\x02\x00"), "bad_record_version")
        self.assertEqual(reason(b"\x16\x03\x05"), "bad_record_version")
        later = refragment(openssl_hello(), 100)
        later = later[:105] + b"\x16\x04\x03" + later[108:]
        self.assertEqual(reason(later), "bad_record_version")

    def test_record_too_large(self) -> None:
        """A record longer than 2^14 bytes is record_too_large, from its header."""
        self.assertEqual(reason(b"\x16\x03\x01\x40\x01", max_size=20000), "record_too_large")

    def test_empty_record(self) -> None:
        """A handshake record with no fragment is malformed."""
        self.assertEqual(reason(record(b"") + openssl_hello()), "malformed")

    def test_non_handshake_record(self) -> None:
        """A record of another type in the middle of the hello is refused."""
        split = refragment(openssl_hello(), 100)
        self.assertEqual(reason(split[:105] + record(b"\x01", kind=20)),
                         "non_handshake_record")

    def test_not_client_hello(self) -> None:
        """A handshake message other than ClientHello is refused from its first byte."""
        self.assertEqual(reason(b"\x16\x03\x03\x00\x40\x02"), "not_client_hello")

    def test_too_large_declared(self) -> None:
        """A hello whose handshake length exceeds max_size is too_large from its header."""
        self.assertEqual(reason(b"\x16\x03\x01\x00\x40\x01\x00\x40\x00"), "too_large")
        self.assertEqual(reason(openssl_hello(), max_size=1000), "too_large")

    def test_too_large_partial(self) -> None:
        """The reader refuses an oversized hello before all of it has arrived."""
        data = openssl_hello()
        reader = HelloReader(max_size=1000)
        e = self.assertRaises(HelloError, reader.feed, data[:9])
        self.assertEqual(e.reason, "too_large")

    def test_record_headers_do_not_count(self) -> None:
        """
        max_size bounds the hello message, not its records' headers: a hello
        of exactly max_size bytes is accepted in one record or cut into
        many, one byte more is too_large either way.
        """
        data = openssl_hello()
        size = len(handshake_message(data))
        for cut in (data, refragment(data, 100), refragment(data, 7)):
            self.assertGreater(len(cut), size)
            hello = parse(cut, max_size=size)
            self.assertEqual(hello.server_name, "example.com")
            self.assertEqual(reason(cut, max_size=size - 1), "too_large")

    def test_sixteen_kib_hello(self) -> None:
        """
        A hello of exactly 16 KiB (the default limit), which needs two
        records on the wire (16,394 bytes), is read; 16 KiB and one byte
        is too_large.
        """
        padding = 16384 - len(message(body([sni(b"big.example")]))) - 4
        big = message(body([sni(b"big.example"), extension(21, bytes(padding))]))
        self.assertEqual(len(big), 16384)
        data = record(big[:16000]) + record(big[16000:])
        self.assertEqual(len(data), 16394)
        self.assertEqual(parse(data).server_name, "big.example")
        bigger = message(body([sni(b"big.example"), extension(21, bytes(padding + 1))]))
        self.assertEqual(reason(record(bigger[:16000]) + record(bigger[16000:])), "too_large")

    def test_too_fragmented(self) -> None:
        """
        Record headers may add up to max_size bytes on top of the hello;
        a hello cut into more records than that (one byte each) is
        too_fragmented, before it is all buffered.
        """
        data = openssl_hello()
        size = len(handshake_message(data))
        self.assertIsNotNone(parse(refragment(data, 6), max_size=size))
        tiny = refragment(data, 1)
        reader = HelloReader(max_size=size)
        fed = 0
        with self.assertRaises(HelloError) as raised:
            while fed < len(tiny):
                reader.feed(tiny[fed:fed + 64])
                fed += 64
        self.assertEqual(raised.exception.reason, "too_fragmented")
        self.assertLess(fed, 2 * size)
        self.assertLess(fed, len(tiny))

    def test_trailing_handshake_data(self) -> None:
        """Bytes after the hello inside its last record are malformed."""
        data = record(handshake_message(openssl_hello()) + b"\x00\x00\x00\x00")
        e = self.assertRaises(HelloError, parse, data)
        self.assertEqual(e.reason, "malformed")

    def test_truncated(self) -> None:
        """A hello cut short waits for more; at the end of input it is truncated."""
        data = openssl_hello()
        reader = HelloReader()
        self.assertIsNone(reader.feed(data[:-1]))
        e = self.assertRaises(HelloError, reader.finish)
        self.assertEqual(e.reason, "truncated")
        self.assertEqual(reader.buffered, data[:-1])

    def test_empty(self) -> None:
        """Input that ends before any byte is empty."""
        self.assertEqual(self.assertRaises(HelloError, HelloReader().finish).reason, "empty")


class StructureTests(SynchronousTestCase):
    """Every length inside the hello is checked against its container."""

    def assert_malformed(self, hello_body: bytes, detail: str) -> None:
        """
        Assert that a hello with C{hello_body} is malformed and the detail
        mentions C{detail}.
        """
        e = self.assertRaises(HelloError, parse, wire(hello_body))
        self.assertEqual(e.reason, "malformed")
        self.assertIn(detail, e.detail)

    def test_minimal(self) -> None:
        """A hand-made hello without any extension block parses."""
        hello = parse(wire(body(None)))
        self.assertEqual(hello, ClientHello(
            legacy_version=0x0303, random=bytes(range(32)), session_id=bytes(32),
            cipher_suites=(0x1301, 0x1302), compression_methods=(0,), extensions=()))

    def test_extensions(self) -> None:
        """Hand-made SNI, ALPN and supported_versions are read."""
        versions = extension(43, vector(1, b"\x03\x04\x03\x03"))
        hello = parse(wire(body([alpn(b"acme-tls/1", b"h2"), sni(b"a.example"), versions])))
        assert hello is not None
        self.assertEqual(hello.extensions, (16, 0, 43))
        self.assertEqual(hello.server_name, "a.example")
        self.assertEqual(hello.supported_versions, (0x0304, 0x0303))
        self.assertTrue(hello.offers_acme_tls_alpn)
        self.assertTrue(hello.offers_tls13)

    def test_session_id_too_long(self) -> None:
        """A session id over 32 bytes is malformed."""
        self.assert_malformed(body(session_id=vector(1, bytes(33))), "session_id")

    def test_length_overflows(self) -> None:
        """A length that runs past the end of its container is malformed."""
        self.assert_malformed(body(None, suites=b"\x01\x00\x13\x01"), "cipher_suites")
        self.assert_malformed(body([b"\x00\x17\x00\x09abc"]), "extension[23]")
        self.assert_malformed(body(None) + b"\x00\x10\x00\x00", "extensions")
        self.assert_malformed(body(None, compression=b"\x05\x00"), "compression_methods")
        self.assert_malformed(body(None)[:20], "random")

    def test_message_length_overflow(self) -> None:
        """A handshake length larger than the records that follow never completes."""
        data = record(b"\x01\x00\x10\x00" + body(None))
        reader = HelloReader()
        self.assertIsNone(reader.feed(data))
        self.assertEqual(self.assertRaises(HelloError, reader.finish).reason, "truncated")

    def test_empty_vectors(self) -> None:
        """Empty cipher suites, compression methods, names and protocol lists are malformed."""
        self.assert_malformed(body(None, suites=b"\x00\x00"), "cipher_suites")
        self.assert_malformed(body(None, suites=b"\x00\x03\x13\x01\x13"), "multiple")
        self.assert_malformed(body(None, compression=b"\x00"), "compression_methods")
        self.assert_malformed(body([sni(b"")]), "host_name")
        self.assert_malformed(body([extension(0, b"")]), "server_name")
        self.assert_malformed(body([alpn()]), "protocol_name_list")
        self.assert_malformed(body([alpn(b"h2", b"")]), "protocol_name")
        self.assert_malformed(body([extension(43, vector(1, b"\x03"))]), "versions")

    def test_trailing_garbage(self) -> None:
        """Bytes after the extensions, or inside an extension, are malformed."""
        self.assert_malformed(body([sni(b"a.example")], trailer=b"\x00"), "trailing")
        self.assert_malformed(body([extension(0, vector(2, b"\x00" + vector(2, b"a")) + b"x")]),
                              "trailing")
        self.assert_malformed(body([extension(16, vector(2, b"\x02h2") + b"x")]), "trailing")

    def test_duplicate_extension(self) -> None:
        """The same extension twice is malformed."""
        self.assert_malformed(body([sni(b"a.example"), alpn(b"h2"), sni(b"b.example")]),
                              "duplicate extension 0")

    def test_pre_shared_key_last(self) -> None:
        """pre_shared_key must be the last extension."""
        self.assert_malformed(body([extension(41, b""), sni(b"a.example")]), "pre_shared_key")
        self.assertIsNotNone(parse(wire(body([sni(b"a.example"), extension(41, b"")]))))

    def test_server_name_list(self) -> None:
        """A server_name list must hold exactly one host_name entry."""
        two = b"\x00" + vector(2, b"a") + b"\x00" + vector(2, b"b")
        self.assert_malformed(body([extension(0, vector(2, two))]), "trailing")
        other = b"\x01" + vector(2, b"a")
        self.assert_malformed(body([extension(0, vector(2, other))]), "name_type")

    def test_legacy_version(self) -> None:
        """A legacy_version that is not 3.x is malformed."""
        self.assert_malformed(body(None, version=b"\x02\x00"), "legacy_version")


class ServerNameTests(SynchronousTestCase):
    """Names that are not DNS host names are flagged instead of returned."""

    def name(self, raw: bytes) -> str | None:
        """
        @return: the server name parsed from a hello naming C{raw}, after
            checking that the invalid flag agrees.
        """
        hello = parse(wire(body([sni(raw)])))
        assert hello is not None
        self.assertEqual(hello.server_name_invalid, hello.server_name is None)
        return hello.server_name

    def test_valid(self) -> None:
        """Ordinary names, single labels, digits, hyphens and IDNA A-labels are kept."""
        for raw in (b"example.com", b"localhost", b"a-b.c0.example", b"123.example",
                    b"xn--bcher-kva.example", b"a"):
            self.assertEqual(self.name(raw), raw.decode())

    def test_ip_literals(self) -> None:
        """IPv4, shortened IPv4, hexadecimal and IPv6 literals are invalid."""
        for raw in (b"192.0.2.1", b"127.1", b"10", b"0x7f000001", b"example.0x10",
                    b"2001:db8::1", b"[2001:db8::1]"):
            self.assertIsNone(self.name(raw), raw)

    def test_bad_characters(self) -> None:
        """Underscores, spaces, NUL, slashes and non-ASCII bytes are invalid."""
        for raw in (b"under_score.example", b"a b.example", b"a\x00.example",
                    b"a/b.example", "b\u00fccher.example".encode(), b"a\xff.example",
                    b"*.example.com"):
            self.assertIsNone(self.name(raw), raw)

    def test_empty_labels(self) -> None:
        """Empty labels, leading dots and trailing dots are invalid."""
        for raw in (b"a..example", b".example", b"example.", b"."):
            self.assertIsNone(self.name(raw), raw)

    def test_hyphens(self) -> None:
        """A label may not start or end with a hyphen."""
        for raw in (b"-a.example", b"a-.example", b"-"):
            self.assertIsNone(self.name(raw), raw)

    def test_lengths(self) -> None:
        """Labels are at most 63 characters and names at most 253."""
        self.assertIsNone(self.name(b"a" * 64 + b".example"))
        longest = b".".join([b"a" * 63] * 3 + [b"b" * 61])
        self.assertEqual(len(longest), 253)
        self.assertEqual(self.name(longest), longest.decode())
        self.assertIsNone(self.name(longest + b"b"))
        self.assertIsNone(self.name(b"a" * 1000))


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """
    @return: C{data} cut at random places.
    """
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=40))
    points = sorted(set(cuts) | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@st.composite
def chunked_bytes(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> list[bytes]:
    """
    @return: bytes drawn from C{base}, cut at random places.
    """
    return draw(chunked(draw(base)))


@functools.cache
def real_hellos() -> list[bytes]:
    """
    @return: several OpenSSL hellos, in one record and split over records.
    """
    plain = [openssl_hello(), openssl_hello(server_name=None),
             openssl_hello(alpn=(b"acme-tls/1",)), openssl_hello(max_version=SSL.TLS1_2_VERSION)]
    return plain + [refragment(h, size) for h in plain[:2] for size in (7, 100, 1000)]


@st.composite
def mutated_hellos(draw: st.DrawFn) -> bytes:
    """
    @return: a real hello with some bytes changed and perhaps cut short.
    """
    data = bytearray(draw(st.sampled_from(real_hellos())))
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[:draw(st.integers(0, len(data)))])


class PropertyTests(SynchronousTestCase):
    """Whatever the bytes and however they are cut, only HelloError is raised."""

    def outcome(self, chunks: list[bytes], max_size: int = 16384) -> ClientHello | str | None:
        """
        Feed C{chunks} to a reader, checking that it raises only
        L{HelloError} with a known reason and keeps every byte.

        @return: the hello, the error's reason, or C{None} if more is needed.
        """
        reader = HelloReader(max_size)
        result: ClientHello | None = None
        fed = b""
        for chunk in chunks:
            try:
                result = reader.feed(chunk)
            except HelloError as e:
                self.assertIn(e.reason, REASONS)
                return e.reason
            fed += chunk
            self.assertEqual(reader.buffered, fed)
        return result

    @PROPERTY
    @given(chunked_bytes(st.binary(max_size=300)))
    def test_arbitrary_bytes(self, chunks: list[bytes]) -> None:
        """Arbitrary bytes raise nothing but HelloError."""
        self.outcome(chunks)

    @PROPERTY
    @given(chunked_bytes(st.binary(max_size=300).map(lambda b: b"\x16\x03\x01" + b)))
    def test_arbitrary_records(self, chunks: list[bytes]) -> None:
        """Arbitrary bytes after a handshake record opening raise nothing but HelloError."""
        self.outcome(chunks)

    @PROPERTY
    @given(st.data())
    def test_real_hello_any_chunking(self, data: st.DataObject) -> None:
        """A real hello parses to the same result however it is cut."""
        hello = data.draw(st.sampled_from(real_hellos()))
        expected = parse(hello)
        self.assertIsInstance(expected, ClientHello)
        self.assertEqual(self.outcome(data.draw(chunked(hello))), expected)

    @PROPERTY
    @given(st.data())
    def test_mutated_hellos(self, data: st.DataObject) -> None:
        """
        Real hellos with bytes changed and cut short raise nothing but
        HelloError, and reach the same outcome however they are cut.
        """
        hello = data.draw(mutated_hellos())
        whole = self.outcome([hello])
        self.assertEqual(self.outcome(data.draw(chunked(hello))), whole)

"""
Tests for L{veil.edge.contexts} and L{veil.edge.keys}.

Handshakes are real: a pyOpenSSL client and server connection on memory
BIOs, with the bytes moved between them by L{handshake}.
"""

from __future__ import annotations

import functools
import ipaddress
from datetime import datetime, timedelta, timezone

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _openssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from veil.edge.contexts import (
    ACME_TLS_1,
    HTTP11,
    ServerTLS,
    build_challenge_tls,
    build_server_tls,
)
from veil.edge.keys import (
    CertInfo,
    certificate_info,
    generate_key,
    key_type_of,
    load_chain,
    load_key,
    split_chain,
)
from veil.errors import CertificateError

NAME = "a.example"
NOW = datetime(2027, 3, 1, 12, 0, tzinfo=timezone.utc)


@attrs.frozen
class Chain:
    """
    A leaf for L{NAME} signed by an intermediate signed by a root.
    """

    chain_pem: bytes
    key_pem: bytes
    leaf: x509.Certificate
    intermediate: x509.Certificate
    root: x509.Certificate


def _ca_cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    signer: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


@functools.cache
def make_chain(key_type: str) -> Chain:
    """
    A three-level chain whose leaf has a C{key_type} key (cached: RSA keys
    take a while to make).
    """
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("Test Root", root_key, None, root_key)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = _ca_cert("Test Intermediate", inter_key, root.subject, root_key)
    key_pem = generate_key(key_type)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]))
        .issuer_name(inter.subject)
        .public_key(load_key(key_pem).public_key())
        .serial_number(0xABCDEF0123)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=90))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(NAME), x509.DNSName("www." + NAME)]),
            critical=False,
        )
        .sign(inter_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return Chain(
        chain_pem=leaf.public_bytes(pem) + inter.public_bytes(pem),
        key_pem=key_pem,
        leaf=leaf,
        intermediate=inter,
        root=root,
    )


def client_context(
    max_version: int | None = None,
    min_version: int | None = None,
    ciphers: bytes | None = None,
) -> SSL.Context:
    """
    A client context that does not verify the server (these tests look at
    what the server sends, not at trust).
    """
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if min_version is not None:
        ctx.set_min_proto_version(min_version)
    if max_version is not None:
        ctx.set_max_proto_version(max_version)
    if ciphers is not None:
        ctx.set_cipher_list(ciphers)
    return ctx


def client_connection(
    ctx: SSL.Context, alpn: list[bytes] | None = None, session: SSL.Session | None = None
) -> SSL.Connection:
    """
    A client connection on memory BIOs sending SNI L{NAME}.
    """
    conn = SSL.Connection(ctx, None)
    conn.set_tlsext_host_name(NAME.encode("ascii"))
    if alpn is not None:
        conn.set_alpn_protos(alpn)
    if session is not None:
        conn.set_session(session)
    conn.set_connect_state()
    return conn


def handshake(client: SSL.Connection, server: SSL.Connection) -> dict[str, SSL.Error]:
    """
    Run a handshake between two memory-BIO connections, moving bytes until
    neither has anything to send.  Afterwards the client reads once, so that
    it processes TLS 1.3 session tickets.

    @return: the error each side raised, by C{"client"} / C{"server"}; empty
        when the handshake succeeded.
    """
    server.set_accept_state()
    errors: dict[str, SSL.Error] = {}
    sides = {"client": client, "server": server}
    for _ in range(100):
        for name, conn in sides.items():
            if name not in errors:
                try:
                    conn.do_handshake()
                except SSL.WantReadError:
                    pass
                except SSL.Error as e:
                    errors[name] = e
        moved = False
        for source, sink in ((client, server), (server, client)):
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                continue
            sink.bio_write(data)
            moved = True
        if not moved:
            break
    if not errors:
        try:
            client.recv(1)
        except SSL.WantReadError:
            pass
    return errors


def session_reused(conn: SSL.Connection) -> bool:
    """
    Whether C{conn} resumed a session.  pyOpenSSL has no wrapper for
    C{SSL_session_reused}, so this calls the binding.
    """
    return bool(_openssl.SSL_session_reused(conn._ssl))


def client_groups(ctx: SSL.Context, groups: str) -> SSL.Context:
    """C{ctx}, offering only the key exchange C{groups} (OpenSSL's list syntax)."""
    assert _openssl.SSL_CTX_set1_curves_list(ctx._context, groups.encode()) == 1
    return ctx


def negotiated_group(conn: SSL.Connection) -> str:
    """The key exchange group of a completed handshake, by OpenSSL's name."""
    name = _openssl.SSL_get0_group_name(conn._ssl)
    return _ffi.string(name).decode() if name != _ffi.NULL else ""


def reasons(error: SSL.Error) -> list[str]:
    """
    The OpenSSL reason strings of an error, e.g. C{["no shared cipher"]}.
    """
    return [reason for _, _, reason in error.args[0]]


class _HandshakeTestsMixin:
    """
    Handshake behaviour of L{build_server_tls}, for one leaf key type.
    """

    key_type: str

    def setUp(self) -> None:
        self.chain = make_chain(self.key_type)
        self.tls = build_server_tls(self.chain.chain_pem, self.chain.key_pem)

    def connect(
        self,
        ctx: SSL.Context,
        alpn: list[bytes] | None = None,
        session: SSL.Session | None = None,
        tls: ServerTLS | None = None,
    ) -> tuple[SSL.Connection, SSL.Connection, dict[str, SSL.Error]]:
        client = client_connection(ctx, alpn, session)
        server = (tls or self.tls).serverConnectionForTLS(None)
        return client, server, handshake(client, server)

    def test_tls13(self) -> None:
        """
        A TLS 1.3 client completes a handshake and receives the leaf and
        the intermediate, in that order.
        """
        client, server, errors = self.connect(client_context())
        self.assertEqual(errors, {})
        self.assertEqual(client.get_protocol_version_name(), "TLSv1.3")
        self.assertEqual(client.get_peer_certificate(as_cryptography=True), self.chain.leaf)
        self.assertEqual(
            [c.to_cryptography() for c in client.get_peer_cert_chain()],
            [self.chain.leaf, self.chain.intermediate],
        )

    def test_tls12(self) -> None:
        """
        A client limited to TLS 1.2 completes a handshake with an ECDHE
        suite for the leaf's key type and receives the leaf.
        """
        client, server, errors = self.connect(client_context(max_version=SSL.TLS1_2_VERSION))
        self.assertEqual(errors, {})
        self.assertEqual(client.get_protocol_version_name(), "TLSv1.2")
        self.assertEqual(client.get_peer_certificate(as_cryptography=True), self.chain.leaf)
        auth = "ECDSA" if self.key_type.startswith("ecdsa") else "RSA"
        cipher = client.get_cipher_name()
        self.assertTrue(cipher.startswith(f"ECDHE-{auth}-"), cipher)

    def test_tls11_refused(self) -> None:
        """
        The server refuses a client that speaks at most TLS 1.1 (the client
        lowers its security level so that it sends such a hello at all).
        """
        ctx = client_context(
            min_version=SSL.TLS1_VERSION,
            max_version=SSL.TLS1_1_VERSION,
            ciphers=b"DEFAULT:@SECLEVEL=0",
        )
        client, server, errors = self.connect(ctx)
        self.assertIn("unsupported protocol", reasons(errors["server"]))
        self.assertIn("client", errors)

    def test_groups(self) -> None:
        """
        Key exchange uses X25519, P-256 or P-384 only (Mozilla's
        intermediate profile): a TLS 1.3 client offering one of them gets
        it, one offering only X448, P-521 or a finite-field group is
        refused, and OpenSSL's default offer (hybrid ML-KEM first) gets
        X25519.  TLS 1.2 the same (where the client also offers P-256 for
        an ECDSA P-256 certificate, as RFC 8422 has it): P-521 is never
        chosen.
        """
        for offered, expected in [("X25519", "x25519"), ("P-256", "secp256r1"),
                                  ("P-384", "secp384r1"), ("X448:ffdhe2048:P-384", "secp384r1")]:
            _, server, errors = self.connect(client_groups(client_context(), offered))
            self.assertEqual(errors, {}, offered)
            self.assertEqual(negotiated_group(server).lower(), expected, offered)
        for offered in ("X448", "P-521", "ffdhe2048", "X448:P-521:ffdhe3072"):
            _, _, errors = self.connect(client_groups(client_context(), offered))
            self.assertIn("server", errors, offered)
        tls12 = SSL.TLS1_2_VERSION
        for offered, expected in [("P-521:P-256", "secp256r1"), ("X448:P-256", "secp256r1"),
                                  ("P-521:X25519:P-256", "x25519")]:
            _, server, errors = self.connect(client_groups(client_context(tls12), offered))
            self.assertEqual(errors, {}, offered)
            self.assertEqual(negotiated_group(server).lower(), expected, offered)
        _, _, errors = self.connect(client_groups(client_context(tls12), "X448:P-521"))
        self.assertIn("server", errors)
        _, server, errors = self.connect(client_context())
        self.assertEqual(errors, {})
        self.assertEqual(negotiated_group(server).lower(), "x25519")

    def test_weak_cipher_refused(self) -> None:
        """
        A TLS 1.2 client offering only a non-AEAD, non-forward-secret suite
        finds no shared cipher.
        """
        ctx = client_context(max_version=SSL.TLS1_2_VERSION, ciphers=b"AES128-SHA")
        client, server, errors = self.connect(ctx)
        self.assertIn("no shared cipher", reasons(errors["server"]))

    def test_tls12_suite_order(self) -> None:
        """
        TLS 1.2: among AES suites the server's order decides (a client that
        lists AES-256-GCM first gets AES-128-GCM); a client that lists
        ChaCha20 first gets ChaCha20.
        """
        auth = "ECDSA" if self.key_type.startswith("ecdsa") else "RSA"
        for offered, expected in [
            ("AES256-GCM-SHA384:AES128-GCM-SHA256", "AES128-GCM-SHA256"),
            ("CHACHA20-POLY1305:AES128-GCM-SHA256", "CHACHA20-POLY1305"),
        ]:
            ciphers = ":".join(f"ECDHE-{auth}-{suite}" for suite in offered.split(":")).encode()
            client, server, errors = self.connect(
                client_context(SSL.TLS1_2_VERSION, ciphers=ciphers))
            self.assertEqual(errors, {})
            self.assertEqual(client.get_cipher_name(), f"ECDHE-{auth}-{expected}", offered)

    def test_tls13_suite_order(self) -> None:
        """
        TLS 1.3: a client listing AES-256-GCM first (OpenSSL's own default
        order) gets AES-128-GCM; one listing ChaCha20 first gets ChaCha20.
        """
        for offered, expected in [
            (b"TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256",
             "TLS_AES_128_GCM_SHA256"),
            (b"TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
             "TLS_CHACHA20_POLY1305_SHA256"),
            (b"TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"),
        ]:
            ctx = client_context()
            ctx.set_tls13_ciphersuites(offered)
            client, server, errors = self.connect(ctx)
            self.assertEqual(errors, {})
            self.assertEqual(client.get_protocol_version_name(), "TLSv1.3")
            self.assertEqual(client.get_cipher_name(), expected, offered)

    def test_alpn_http11(self) -> None:
        """
        A client offering C{h2} and C{http/1.1} gets C{http/1.1}.
        """
        client, server, errors = self.connect(client_context(), alpn=[b"h2", HTTP11])
        self.assertEqual(errors, {})
        self.assertEqual(client.get_alpn_proto_negotiated(), HTTP11)
        self.assertEqual(server.get_alpn_proto_negotiated(), HTTP11)

    def test_alpn_h2_only(self) -> None:
        """
        A client offering only C{h2} completes the handshake without ALPN.
        """
        client, server, errors = self.connect(client_context(), alpn=[b"h2"])
        self.assertEqual(errors, {})
        self.assertEqual(client.get_alpn_proto_negotiated(), b"")

    def test_no_alpn(self) -> None:
        """
        A client offering no ALPN completes the handshake without ALPN.
        """
        client, server, errors = self.connect(client_context())
        self.assertEqual(errors, {})
        self.assertEqual(server.get_alpn_proto_negotiated(), b"")

    def _resume(self, max_version: int | None) -> None:
        ctx = client_context(max_version=max_version)
        first, _, errors = self.connect(ctx)
        self.assertEqual(errors, {})
        self.assertFalse(session_reused(first))
        second, server, errors = self.connect(ctx, session=first.get_session())
        self.assertEqual(errors, {})
        self.assertTrue(session_reused(second))
        self.assertTrue(session_reused(server))

    def test_resumption_tls13(self) -> None:
        """
        A TLS 1.3 client resumes its session (by ticket) on a second
        connection to the same context.
        """
        self._resume(None)

    def test_resumption_tls12(self) -> None:
        """
        A TLS 1.2 client resumes its session on a second connection to the
        same context.
        """
        self._resume(SSL.TLS1_2_VERSION)

    def test_resumption_tls12_without_tickets(self) -> None:
        """
        With tickets off, a TLS 1.2 client still resumes from the server's
        session cache.
        """
        self.tls = build_server_tls(self.chain.chain_pem, self.chain.key_pem, tickets=False)
        self._resume(SSL.TLS1_2_VERSION)

    def test_no_resumption_across_contexts(self) -> None:
        """
        A session from one context is not resumed by another context for the
        same certificate: each has its own cache and ticket keys.
        """
        ctx = client_context()
        first, _, _ = self.connect(ctx)
        other = build_server_tls(self.chain.chain_pem, self.chain.key_pem)
        second, server, errors = self.connect(ctx, session=first.get_session(), tls=other)
        self.assertEqual(errors, {})
        self.assertFalse(session_reused(second))

    def test_renegotiation_refused(self) -> None:
        """
        A TLS 1.2 client that asks to renegotiate is told no.
        """
        client, server, errors = self.connect(client_context(max_version=SSL.TLS1_2_VERSION))
        self.assertEqual(errors, {})
        self.assertTrue(client.renegotiate())
        with self.assertRaises(SSL.WantReadError):
            client.do_handshake()
        server.bio_write(client.bio_read(65536))
        with self.assertRaises(SSL.WantReadError):
            server.recv(100)
        self.assertEqual(server.total_renegotiations(), 0)
        client.bio_write(server.bio_read(65536))
        with self.assertRaises(SSL.Error) as caught:
            client.recv(100)
        self.assertIn("no renegotiation", reasons(caught.exception))

    def test_info(self) -> None:
        """
        The context carries what the leaf says.
        """
        self.assertEqual(self.tls.info.names, (NAME, "www." + NAME))
        self.assertEqual(self.tls.info.key_type, self.key_type)


class ECDSAHandshakeTests(_HandshakeTestsMixin, SynchronousTestCase):
    """
    Handshakes with an ECDSA P-256 certificate.
    """

    key_type = "ecdsa-p256"


class RSAHandshakeTests(_HandshakeTestsMixin, SynchronousTestCase):
    """
    Handshakes with an RSA-2048 certificate.
    """

    key_type = "rsa-2048"


class ServerTLSTests(SynchronousTestCase):
    """
    Building L{ServerTLS} objects and what they promise.
    """

    def test_interface(self) -> None:
        """
        A L{ServerTLS} is an C{IOpenSSLServerConnectionCreator} whose
        connections use its context.
        """
        chain = make_chain("ecdsa-p256")
        tls = build_server_tls(chain.chain_pem, chain.key_pem)
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, tls))
        self.assertIs(tls.serverConnectionForTLS(object()).get_context(), tls.context)

    def test_key_mismatch(self) -> None:
        """
        A key that does not belong to the leaf is refused.
        """
        chain = make_chain("ecdsa-p256")
        with self.assertRaises(CertificateError) as caught:
            build_server_tls(chain.chain_pem, generate_key())
        self.assertIn("do not fit", str(caught.exception))

    def test_key_type_mismatch(self) -> None:
        """
        A key of another type than the leaf's is refused.
        """
        chain = make_chain("ecdsa-p256")
        with self.assertRaises(CertificateError):
            build_server_tls(chain.chain_pem, make_chain("rsa-2048").key_pem)

    def test_garbage(self) -> None:
        """
        Unparsable chains and keys are refused with L{CertificateError}.
        """
        chain = make_chain("ecdsa-p256")
        self.assertRaises(CertificateError, build_server_tls, b"nonsense", chain.key_pem)
        self.assertRaises(CertificateError, build_server_tls, chain.chain_pem, b"nonsense")


class ChallengeTLSTests(SynchronousTestCase):
    """
    The tls-alpn-01 challenge context.
    """

    def setUp(self) -> None:
        chain = make_chain("ecdsa-p256")
        self.leaf = chain.leaf
        self.tls = build_challenge_tls(split_chain(chain.chain_pem)[0], chain.key_pem)

    def test_acme_tls_1(self) -> None:
        """
        A client offering C{acme-tls/1} gets it and the challenge certificate.
        """
        client = client_connection(client_context(), alpn=[ACME_TLS_1])
        server = self.tls.serverConnectionForTLS(None)
        self.assertEqual(handshake(client, server), {})
        self.assertEqual(client.get_alpn_proto_negotiated(), ACME_TLS_1)
        self.assertEqual(client.get_peer_certificate(as_cryptography=True), self.leaf)

    def test_other_protocols(self) -> None:
        """
        A client offering only C{http/1.1} is not given C{acme-tls/1} (nor
        C{http/1.1}).
        """
        client = client_connection(client_context(), alpn=[HTTP11])
        server = self.tls.serverConnectionForTLS(None)
        self.assertEqual(handshake(client, server), {})
        self.assertEqual(client.get_alpn_proto_negotiated(), b"")

    def test_no_session_cache(self) -> None:
        """
        Challenge contexts keep no sessions.
        """
        self.assertEqual(self.tls.context.get_session_cache_mode(), SSL.SESS_CACHE_OFF)


class KeysTests(SynchronousTestCase):
    """
    L{veil.edge.keys}: key generation and loading, chain parsing.
    """

    def test_generate_ecdsa(self) -> None:
        """
        The default key is an unencrypted PKCS#8 ECDSA P-256 key.
        """
        pem = generate_key()
        self.assertTrue(pem.startswith(b"-----BEGIN PRIVATE KEY-----\n"))
        key = load_key(pem)
        self.assertIsInstance(key, ec.EllipticCurvePrivateKey)
        self.assertEqual(key_type_of(key), "ecdsa-p256")

    def test_generate_rsa(self) -> None:
        """
        C{rsa-2048} makes a PKCS#8 RSA key of 2048 bits.
        """
        pem = make_chain("rsa-2048").key_pem
        self.assertTrue(pem.startswith(b"-----BEGIN PRIVATE KEY-----\n"))
        key = load_key(pem)
        self.assertIsInstance(key, rsa.RSAPrivateKey)
        self.assertEqual(key_type_of(key), "rsa-2048")

    def test_generate_unknown(self) -> None:
        """
        An unknown key type is a programming error.
        """
        self.assertRaises(ValueError, generate_key, "dsa-1024")

    def test_load_garbage(self) -> None:
        """
        Malformed keys raise L{CertificateError}.
        """
        truncated = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        self.assertRaises(CertificateError, load_key, truncated)
        self.assertRaises(CertificateError, load_key, b"")

    def test_load_unsupported(self) -> None:
        """
        Key types Veil does not serve with raise L{CertificateError}.
        """
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with self.assertRaises(CertificateError) as caught:
            load_key(pem)
        self.assertIn("Ed25519", str(caught.exception))

    def test_certificate_info(self) -> None:
        """
        L{certificate_info} describes the leaf of a chain.
        """
        chain = make_chain("ecdsa-p256")
        self.assertEqual(
            certificate_info(chain.chain_pem),
            CertInfo(
                names=(NAME, "www." + NAME),
                not_before=NOW,
                not_after=NOW + timedelta(days=90),
                issuer="CN=Test Intermediate",
                serial="abcdef0123",
                key_type="ecdsa-p256",
            ),
        )
        self.assertEqual(certificate_info(chain.chain_pem).not_after.tzinfo, timezone.utc)

    def test_certificate_info_ip_and_no_san(self) -> None:
        """
        IP address SANs are listed after DNS names; no SAN gives no names.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(NOW)
            .not_valid_after(NOW + timedelta(days=1))
        )
        bare = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        self.assertEqual(certificate_info(bare).names, ())
        san = x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("192.0.2.1")), x509.DNSName("b.example")]
        )
        both = builder.add_extension(san, critical=False).sign(key, hashes.SHA256())
        info = certificate_info(both.public_bytes(serialization.Encoding.PEM))
        self.assertEqual(info.names, ("b.example", "192.0.2.1"))

    def test_split_chain(self) -> None:
        """
        L{split_chain} returns each certificate block, ignoring other text
        and normalising CRLF line ends.
        """
        chain = make_chain("ecdsa-p256")
        leaf, inter = chain.chain_pem.split(b"-----END CERTIFICATE-----\n", 1)
        leaf += b"-----END CERTIFICATE-----\n"
        noisy = b"# comment\n" + leaf.replace(b"\n", b"\r\n") + b"junk\n" + inter + b"\n\n"
        self.assertEqual(split_chain(noisy), [leaf, inter])
        self.assertEqual(load_chain(noisy), [chain.leaf, chain.intermediate])

    def test_split_chain_empty(self) -> None:
        """
        Text with no certificate raises L{CertificateError}.
        """
        self.assertRaises(CertificateError, split_chain, b"")
        self.assertRaises(CertificateError, certificate_info, generate_key())

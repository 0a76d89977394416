"""
Tests for L{veil.acme.internal_ca}.
"""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import service_identity
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from veil.acme.internal_ca import BACKDATE, DEFAULT_LIFETIME, ROOT_LIFETIME, InternalCA
from veil.edge.contexts import build_server_tls
from veil.edge.keys import certificate_info, generate_key, load_key
from veil.errors import CertificateError, IssuanceFailed, IssuanceRefused

#: 2027-01-15T08:00:00Z, the fake clock's "now".
START = 1_800_000_000.0


def fake_clock(when: float = START) -> Clock:
    """
    A L{Clock} showing C{when}.
    """
    clock = Clock()
    clock.advance(when)
    return clock


def at(when: float) -> datetime:
    """
    C{when} as an aware UTC datetime.
    """
    return datetime.fromtimestamp(when, timezone.utc)


def verify(ca: InternalCA, chain_pem: bytes, name: str, when: datetime) -> None:
    """
    Verify C{chain_pem} as a server certificate for C{name} at C{when}, with
    the CA's root as the only trust anchor (cryptography's WebPKI verifier).

    @raise VerificationError: if it does not verify.
    """
    certs = x509.load_pem_x509_certificates(chain_pem)
    verifier = (
        PolicyBuilder()
        .store(Store([x509.load_pem_x509_certificate(ca.root_path.read_bytes())]))
        .time(when)
        .build_server_verifier(x509.DNSName(name))
    )
    verifier.verify(certs[0], certs[1:])


class LoadOrCreateTests(SynchronousTestCase):
    """
    L{InternalCA.load_or_create} makes a root once and then reuses it.
    """

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()) / "ca"

    def test_reload(self) -> None:
        """
        A second load finds the same root and key.
        """
        first = InternalCA.load_or_create(self.directory, fake_clock())
        second = InternalCA.load_or_create(self.directory, fake_clock(START + 86400))
        self.assertEqual(second.root_pem, first.root_pem)
        self.assertEqual(second.root_path.read_bytes(), first.root_pem)
        issued = second.issue("a.example", generate_key())
        verify(first, issued.chain_pem, "a.example", at(START + 86400))

    def test_file_modes(self) -> None:
        """
        The key is mode 0600, the certificate 0644 even under a strict umask,
        the directory is created 0700, and no temporary file is left behind.
        """
        old = os.umask(0o077)
        self.addCleanup(os.umask, old)
        ca = InternalCA.load_or_create(self.directory, fake_clock())
        mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
        self.assertEqual(mode(self.directory / "ca.key"), 0o600)
        self.assertEqual(mode(ca.root_path), 0o644)
        self.assertEqual(mode(self.directory), 0o700)
        names = sorted(p.name for p in self.directory.iterdir())
        self.assertEqual(names, ["ca.crt", "ca.key", "ca.lock"])

    def test_root(self) -> None:
        """
        The root is a self-signed ECDSA P-256 CA limited to signing end
        entities, valid ten years, with a recognisable random name.
        """
        ca = InternalCA.load_or_create(self.directory, fake_clock())
        root = x509.load_pem_x509_certificate(ca.root_pem)
        self.assertEqual(root.issuer, root.subject)
        root.verify_directly_issued_by(root)
        (cn,) = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.assertRegex(cn.value, r"^Veil Internal Root CA [0-9a-f]{8}$")
        bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(bc.critical)
        self.assertEqual((bc.value.ca, bc.value.path_length), (True, 0))
        ku = root.extensions.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(ku.critical)
        self.assertTrue(ku.value.key_cert_sign and ku.value.crl_sign)
        self.assertFalse(ku.value.digital_signature)
        self.assertEqual(
            root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value,
            x509.SubjectKeyIdentifier.from_public_key(root.public_key()),
        )
        self.assertEqual(root.not_valid_before_utc, at(START) - BACKDATE)
        self.assertEqual(root.not_valid_after_utc, at(START) + ROOT_LIFETIME)
        key = load_key((self.directory / "ca.key").read_bytes())
        self.assertEqual(key.public_key(), root.public_key())
        self.assertEqual(key.curve.name, "secp256r1")

    def test_roots_differ(self) -> None:
        """
        Two directories get two different roots.
        """
        one = InternalCA.load_or_create(self.directory, fake_clock())
        two = InternalCA.load_or_create(Path(self.mktemp()), fake_clock())
        self.assertNotEqual(one.root.subject, two.root.subject)
        self.assertNotEqual(one.root.public_key(), two.root.public_key())

    def test_certificate_without_key(self) -> None:
        """
        A directory with C{ca.crt} but no C{ca.key} is an error, and the
        certificate is left alone.
        """
        ca = InternalCA.load_or_create(self.directory, fake_clock())
        (self.directory / "ca.key").unlink()
        with self.assertRaises(CertificateError) as caught:
            InternalCA.load_or_create(self.directory, fake_clock())
        self.assertIn("ca.key does not", str(caught.exception))
        self.assertEqual(ca.root_path.read_bytes(), ca.root_pem)

    def test_key_without_certificate(self) -> None:
        """
        A directory with only C{ca.key} (a crash between the two writes) gets
        a new root for that key.
        """
        ca = InternalCA.load_or_create(self.directory, fake_clock())
        ca.root_path.unlink()
        again = InternalCA.load_or_create(self.directory, fake_clock())
        self.assertEqual(again.root.public_key(), ca.root.public_key())
        self.assertTrue(again.root_path.exists())

    def test_mismatch(self) -> None:
        """
        A certificate that does not belong to the key is an error.
        """
        InternalCA.load_or_create(self.directory, fake_clock())
        other = InternalCA.load_or_create(Path(self.mktemp()), fake_clock())
        (self.directory / "ca.crt").write_bytes(other.root_pem)
        with self.assertRaises(CertificateError) as caught:
            InternalCA.load_or_create(self.directory, fake_clock())
        self.assertIn("does not belong", str(caught.exception))

    def test_corrupt_certificate(self) -> None:
        """
        An unparsable C{ca.crt} is an error.
        """
        InternalCA.load_or_create(self.directory, fake_clock())
        (self.directory / "ca.crt").write_bytes(b"garbage")
        with self.assertRaises(CertificateError):
            InternalCA.load_or_create(self.directory, fake_clock())


class IssueTests(SynchronousTestCase):
    """
    L{InternalCA.issue} signs server certificates for exactly one name.
    """

    def setUp(self) -> None:
        self.clock = fake_clock()
        self.ca = InternalCA.load_or_create(Path(self.mktemp()), self.clock)

    def test_chains_to_root(self) -> None:
        """
        An ECDSA and an RSA leaf verify against the root for their name and
        for no other name.
        """
        for key_type in ("ecdsa-p256", "rsa-2048"):
            issued = self.ca.issue("a.example", generate_key(key_type))
            verify(self.ca, issued.chain_pem, "a.example", at(START))
            for other in ("b.example", "www.a.example", "example"):
                with self.assertRaises(VerificationError):
                    verify(self.ca, issued.chain_pem, other, at(START))

    def test_certificate(self) -> None:
        """
        The leaf carries exactly the name as SAN, serverAuth, the root's key
        identifier, a random 128-bit serial, and the given public key; the
        chain holds only the leaf.
        """
        key_pem = generate_key()
        issued = self.ca.issue("a.example", key_pem)
        (leaf,) = x509.load_pem_x509_certificates(issued.chain_pem)
        ext = leaf.extensions
        self.assertEqual(
            ext.get_extension_for_class(x509.SubjectAlternativeName).value,
            x509.SubjectAlternativeName([x509.DNSName("a.example")]),
        )
        self.assertEqual(
            list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value),
            [ExtendedKeyUsageOID.SERVER_AUTH],
        )
        root_ski = self.ca.root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        self.assertEqual(
            ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier,
            root_ski.value.digest,
        )
        self.assertFalse(ext.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertEqual(leaf.public_key(), load_key(key_pem).public_key())
        self.assertEqual(leaf.issuer, self.ca.root.subject)
        self.assertIsInstance(leaf.signature_hash_algorithm, hashes.SHA256)
        self.assertLess(leaf.serial_number, 2**128)
        self.assertEqual(issued.serial, format(leaf.serial_number, "x"))
        self.assertNotEqual(self.ca.issue("a.example", key_pem).serial, issued.serial)

    def test_default_lifetime(self) -> None:
        """
        By default a certificate is valid from five minutes ago for 30 days.
        """
        issued = self.ca.issue("a.example", generate_key())
        self.assertEqual(DEFAULT_LIFETIME, timedelta(days=30))
        self.assertEqual(issued.not_before, at(START) - timedelta(minutes=5))
        self.assertEqual(issued.not_after, at(START) + DEFAULT_LIFETIME)
        info = certificate_info(issued.chain_pem)
        self.assertEqual((info.not_before, info.not_after), (issued.not_before, issued.not_after))

    def test_lifetime_follows_clock(self) -> None:
        """
        Validity is computed from the clock at signing time, for the lifetime
        asked for, and verification fails once it has passed.
        """
        self.clock.advance(3600)
        issued = self.ca.issue("a.example", generate_key(), lifetime=timedelta(hours=12))
        self.assertEqual(issued.not_before, at(START + 3600) - BACKDATE)
        self.assertEqual(issued.not_after, at(START + 3600 + 12 * 3600))
        verify(self.ca, issued.chain_pem, "a.example", at(START + 3600 + 11 * 3600))
        with self.assertRaises(VerificationError):
            verify(self.ca, issued.chain_pem, "a.example", at(START + 3600 + 13 * 3600))

    def test_lifetime_capped_at_root(self) -> None:
        """
        No certificate outlives the root.
        """
        self.clock.advance((ROOT_LIFETIME - timedelta(days=2)).total_seconds())
        issued = self.ca.issue("a.example", generate_key())
        self.assertEqual(issued.not_after, self.ca.root.not_valid_after_utc)

    def test_root_expired(self) -> None:
        """
        An expired root refuses to sign, saying so.
        """
        self.clock.advance(ROOT_LIFETIME.total_seconds())
        with self.assertRaises(IssuanceFailed) as caught:
            self.ca.issue("a.example", generate_key())
        self.assertIn("expired", str(caught.exception))

    def test_name_normalised(self) -> None:
        """
        Names are lowercased and lose a trailing dot; wildcards are allowed.
        """
        self.assertEqual(self.ca.issue("A.Example.", generate_key()).name, "a.example")
        wild = self.ca.issue("*.a.example", generate_key())
        self.assertEqual(certificate_info(wild.chain_pem).names, ("*.a.example",))
        verify(self.ca, wild.chain_pem, "www.a.example", at(START))

    def test_long_name(self) -> None:
        """
        A name too long for a common name gets an empty subject and a
        critical SAN, and still verifies.
        """
        name = ".".join(["a" * 60] * 3) + ".example"
        issued = self.ca.issue(name, generate_key())
        (leaf,) = x509.load_pem_x509_certificates(issued.chain_pem)
        self.assertEqual(len(leaf.subject), 0)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertTrue(san.critical)
        verify(self.ca, issued.chain_pem, name, at(START))

    def test_bad_names(self) -> None:
        """
        Things that are not DNS names are refused.
        """
        for bad in ("", ".", "*", "a..example", "-a.example", "a b.example", "bücher.example",
                    "a.*.example", "x" * 64 + ".example", "a/b"):
            with self.assertRaises(IssuanceRefused, msg=bad):
                self.ca.issue(bad, generate_key())

    def test_bad_key(self) -> None:
        """
        An unloadable key is a L{CertificateError}.
        """
        self.assertRaises(CertificateError, self.ca.issue, "a.example", b"nonsense")


class Echo(Protocol):
    """
    Sends back whatever it receives.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Greeter(Protocol):
    """
    Sends a greeting on connect and records what comes back and how the
    connection ended.
    """

    def __init__(self) -> None:
        self.received = b""
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        self.transport.write(b"hello")

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason


class EndToEndTests(SynchronousTestCase):
    """
    A Twisted TLS client that trusts only the internal root, against a
    Twisted TLS server using L{build_server_tls}, over L{iosim}.

    OpenSSL checks validity against the real time, so here the fake clock
    is set to the wall-clock time.  The same clock drives Twisted's TLS
    write aggregation and the pump.
    """

    def setUp(self) -> None:
        self.clock = fake_clock(datetime.now(timezone.utc).timestamp())
        self.ca = InternalCA.load_or_create(Path(self.mktemp()), self.clock)
        key_pem = generate_key()
        issued = self.ca.issue("a.example", key_pem)
        tls = build_server_tls(issued.chain_pem, key_pem)
        self.server_factory = TLSMemoryBIOFactory(
            tls, False, Factory.forProtocol(Echo), self.clock
        )

    def connect(self, hostname: str) -> Greeter:
        creator = optionsForClientTLS(
            hostname,
            trustRoot=Certificate.loadPEM(self.ca.root_pem),
            acceptableProtocols=[b"h2", b"http/1.1"],
        )
        client_factory = TLSMemoryBIOFactory(
            creator, True, Factory.forProtocol(Greeter), self.clock
        )
        client, server, pump = connectedServerAndClient(
            lambda: self.server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
            greet=False,
            clock=self.clock,
        )
        greeter = client.wrappedProtocol
        pump.flush()
        self.client = client
        return greeter

    def test_verified(self) -> None:
        """
        The client verifies the chain and the host name, negotiates
        C{http/1.1}, and data flows both ways.
        """
        greeter = self.connect("a.example")
        self.assertEqual(greeter.received, b"hello")
        self.assertIsNone(greeter.reason)
        self.assertEqual(self.client.negotiatedProtocol, b"http/1.1")

    def test_wrong_host_name(self) -> None:
        """
        A client expecting another host name refuses the certificate.
        """
        greeter = self.connect("b.example")
        self.assertEqual(greeter.received, b"")
        self.assertIsNotNone(greeter.reason)
        self.assertIsInstance(greeter.reason.value, service_identity.VerificationError)
        self.assertIn("b.example", str(greeter.reason.value))

"""
The internal certificate authority: Caddy's C{tls internal} for Veil.

In the embedded default and in tests, Veil signs its own certificates.  On
first use a CA key (ECDSA P-256) and a self-signed root certificate (valid
ten years) are written to the data directory as C{ca.key} (mode 0600) and
C{ca.crt} (mode 0644); later loads reuse them, so clients only need to
trust C{ca.crt} once (C{curl --cacert ca.crt}, or the system trust store).

Leaf certificates are signed directly by the root: there is no
intermediate, and L{IssuedCertificate.chain_pem} holds the leaf alone (a
client that trusts the root needs nothing else, and sending the root in
the chain would only add bytes to every handshake).

Signing is synchronous and takes well under a millisecond (ECDSA P-256
with SHA-256), so it runs on the reactor thread.  Loading or creating the
CA does blocking file I/O once at startup; it holds an exclusive
C{flock} on C{ca.lock} so that several Veil processes starting together
agree on one root.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import ClassVar

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from veil.edge.keys import load_key
from veil.errors import CertificateError, IssuanceFailed, IssuanceRefused

#: Validity of a new root certificate.
ROOT_LIFETIME = timedelta(days=3650)

#: Default validity of an issued certificate; renewal runs at two thirds.
DEFAULT_LIFETIME = timedelta(days=30)

#: Certificates start this long before "now", to tolerate clock skew.
BACKDATE = timedelta(minutes=5)

KEY_FILE = "ca.key"
CERT_FILE = "ca.crt"
LOCK_FILE = "ca.lock"

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def _now(clock: IReactorTime) -> datetime:
    return datetime.fromtimestamp(clock.seconds(), timezone.utc)


def _random_serial() -> int:
    """
    A random positive serial of 128 bits.
    """
    while True:
        serial = secrets.randbits(128)
        if serial:
            return serial


def _check_name(name: str) -> str:
    """
    Normalise a DNS name for a certificate, or refuse it.

    Accepts ASCII host names (IDNs must already be A-labels) and a
    wildcard C{*.} as the whole first label; drops one trailing dot and
    lowercases.

    @raise IssuanceRefused: if C{name} is not such a name.
    """
    candidate = name.strip().lower()
    if candidate.endswith("."):
        candidate = candidate[:-1]
    labels = candidate.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]
    if (
        not candidate.isascii()
        or len(candidate) > 253
        or len(labels) < 1
        or not all(_LABEL.match(label) for label in labels)
    ):
        raise IssuanceRefused(f"not a DNS name the internal CA signs: {name!r}")
    return candidate


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """
    Write C{data} to C{path} with exactly C{mode}: into a new temporary file
    in the same directory, synced, then renamed over C{path}.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _make_root(key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
    common_name = f"Veil Internal Root CA {secrets.token_hex(4)}"
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Veil"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_random_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


@attrs.frozen
class IssuedCertificate:
    """
    A certificate the internal CA signed.

    @ivar name: the (normalised) DNS name, the only SAN.
    @ivar chain_pem: the leaf certificate, PEM (no intermediates exist; the
        root is the trust anchor and is not included).
    @ivar not_before: start of validity, aware UTC.
    @ivar not_after: end of validity, aware UTC.
    @ivar serial: serial number, lowercase hexadecimal.
    """

    name: str
    chain_pem: bytes
    not_before: datetime
    not_after: datetime
    serial: str


@attrs.frozen(eq=False)
class InternalCA:
    """
    A local root CA that signs server certificates for any DNS name.

    Make one with L{load_or_create}.

    @ivar directory: where C{ca.key} and C{ca.crt} live.
    @ivar clock: the source of "now" for validity periods.
    @ivar root: the root certificate.
    """

    directory: Path
    clock: IReactorTime
    root: x509.Certificate
    _key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    _log: ClassVar[Logger] = Logger()

    @property
    def root_pem(self) -> bytes:
        """
        The root certificate, PEM: what clients must trust.
        """
        return self.root.public_bytes(serialization.Encoding.PEM)

    @property
    def root_path(self) -> Path:
        """
        The file holding L{root_pem}.
        """
        return self.directory / CERT_FILE

    @classmethod
    def load_or_create(cls, directory: Path, clock: IReactorTime) -> InternalCA:
        """
        Load the CA from C{directory}, creating the key and root on first use.

        C{directory} is created (mode 0700) if missing.  If only C{ca.key}
        exists (a crash between the two writes), a new root is made for that
        key.  If only C{ca.crt} exists, nothing is overwritten.

        @raise CertificateError: if C{ca.crt} exists without C{ca.key}, if
            either cannot be parsed, or if they do not belong together.
        """
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
        with _locked(directory):
            if key_path.exists():
                if key_path.stat().st_mode & 0o077:
                    cls._log.warn(
                        "{path} is readable by other users; it should be mode 0600",
                        path=str(key_path),
                    )
                key = load_key(key_path.read_bytes())
                if not isinstance(key, ec.EllipticCurvePrivateKey):
                    raise CertificateError(f"{key_path}: the internal CA key must be ECDSA")
            elif cert_path.exists():
                raise CertificateError(
                    f"{cert_path} exists but {key_path} does not; restore the key,"
                    " or remove both to make a new internal CA"
                )
            else:
                key = ec.generate_private_key(ec.SECP256R1())
                pem = key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                _write_atomically(key_path, pem, 0o600)
            if cert_path.exists():
                try:
                    root = x509.load_pem_x509_certificate(cert_path.read_bytes())
                except ValueError as e:
                    raise CertificateError(f"{cert_path}: {e}") from None
                if root.public_key() != key.public_key():
                    raise CertificateError(f"{cert_path} does not belong to {key_path}")
            else:
                root = _make_root(key, _now(clock))
                _write_atomically(cert_path, root.public_bytes(serialization.Encoding.PEM), 0o644)
                cls._log.info(
                    "Created internal root CA {subject} in {path}",
                    subject=root.subject.rfc4514_string(),
                    path=str(cert_path),
                )
        return cls(directory=directory, clock=clock, root=root, key=key)

    def issue(
        self, name: str, key_pem: bytes, lifetime: timedelta = DEFAULT_LIFETIME
    ) -> IssuedCertificate:
        """
        Sign a server certificate for exactly one DNS name.

        The certificate's only SAN is C{name}, its extended key usage is
        serverAuth, and it is valid from five minutes before now for
        C{lifetime} (cut short at the root's own expiry).

        @param key_pem: the certificate's private key, PEM (only its public
            half is used).
        @raise IssuanceRefused: if C{name} is not a DNS name.
        @raise IssuanceFailed: if the root has expired.
        @raise CertificateError: if C{key_pem} cannot be loaded.
        """
        name = _check_name(name)
        public = load_key(key_pem).public_key()
        now = _now(self.clock)
        root_expires = self.root.not_valid_after_utc
        if now + BACKDATE >= root_expires:
            raise IssuanceFailed(
                f"the internal root CA in {self.directory} expired on {root_expires.isoformat()};"
                " remove ca.key and ca.crt to make a new one"
            )
        not_before = now - BACKDATE
        not_after = min(now + lifetime, root_expires)
        subject = (
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
            if len(name) <= 64
            else x509.Name([])
        )
        key_usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=isinstance(public, rsa.RSAPublicKey),
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        ski = self.root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.root.subject)
            .public_key(public)
            .serial_number(_random_serial())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage, critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name)]),
                critical=len(subject) == 0,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        self._log.info(
            "Internal CA issued a certificate for {name}",
            name=name,
            serial=format(cert.serial_number, "x"),
            not_after=not_after.isoformat(),
        )
        return IssuedCertificate(
            name=name,
            chain_pem=cert.public_bytes(serialization.Encoding.PEM),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            serial=format(cert.serial_number, "x"),
        )

"""
Private keys and certificate chains as the edge stores and serves them.

Keys are PEM, PKCS#8, unencrypted (encryption at rest is the job of
L{veil.secretbox}).  Chains are PEM, leaf first, then intermediates, as
ACME delivers them.  Everything here is synchronous: ECDSA P-256 key
generation takes well under a millisecond, RSA-2048 takes tens of
milliseconds, so callers on the reactor that make RSA keys in bulk should
move that to a thread.
"""

from __future__ import annotations

import re
from datetime import datetime

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from veil.errors import CertificateError

#: The key types Veil generates, default first.
KEY_TYPES: tuple[str, ...] = ("ecdsa-p256", "rsa-2048")

#: The key type used when none is configured.
DEFAULT_KEY_TYPE = "ecdsa-p256"

#: A private key Veil can generate or load.
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----",
    re.DOTALL,
)

_CURVE_NAMES = {"secp256r1": "p256", "secp384r1": "p384", "secp521r1": "p521"}


def generate_key(key_type: str = DEFAULT_KEY_TYPE) -> bytes:
    """
    Generate a new private key.

    @param key_type: one of L{KEY_TYPES}.
    @return: the key, PEM-encoded PKCS#8 without encryption.
    @raise ValueError: for a key type not in L{KEY_TYPES} (configuration
        validation should have refused it).
    """
    key: PrivateKey
    if key_type == "ecdsa-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "rsa-2048":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"unsupported key type {key_type!r}; use one of {', '.join(KEY_TYPES)}")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(key_pem: bytes) -> PrivateKey:
    """
    Load an unencrypted PEM private key (PKCS#8 or the traditional format).

    @raise CertificateError: if it is malformed, encrypted, or neither an
        ECDSA nor an RSA key.
    """
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"cannot load private key: {e}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CertificateError(f"unsupported private key type {type(key).__name__}")
    return key


def key_type_of(key: object) -> str:
    """
    Describe a public or private key in L{KEY_TYPES} style.

    @return: for example C{"ecdsa-p256"}, C{"rsa-2048"}, C{"rsa-4096"},
        C{"ed25519"}.
    """
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return f"rsa-{key.key_size}"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ecdsa-" + _CURVE_NAMES.get(key.curve.name, key.curve.name)
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    if isinstance(key, (ed448.Ed448PrivateKey, ed448.Ed448PublicKey)):
        return "ed448"
    return type(key).__name__.lower()


def split_chain(chain_pem: bytes) -> list[bytes]:
    """
    Split a PEM chain into its certificates, in order.

    Text outside the C{CERTIFICATE} blocks (comments, other PEM types) is
    dropped.  Each block is returned with a trailing newline.  Blocks are not
    parsed; see L{load_chain}.

    @raise CertificateError: if there is no certificate block.
    """
    blocks = [
        m.group(0).replace(b"\r\n", b"\n") + b"\n" for m in _PEM_CERTIFICATE.finditer(chain_pem)
    ]
    if not blocks:
        raise CertificateError("no PEM certificate found")
    return blocks


def load_chain(chain_pem: bytes) -> list[x509.Certificate]:
    """
    Parse every certificate of a PEM chain, leaf first.

    @raise CertificateError: if there is none or one is malformed.
    """
    certs = []
    for block in split_chain(chain_pem):
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError as e:
            raise CertificateError(f"cannot parse certificate: {e}") from None
    return certs


@attrs.frozen
class CertInfo:
    """
    What Veil needs to know about a certificate: names, validity, origin.

    @ivar names: the subject alternative names, DNS names then IP addresses,
        in certificate order (empty when there is no SAN extension).
    @ivar not_before: start of validity, an aware UTC datetime.
    @ivar not_after: end of validity, an aware UTC datetime.
    @ivar issuer: the issuer's distinguished name as an RFC 4514 string.
    @ivar serial: the serial number in lowercase hexadecimal.
    @ivar key_type: the leaf's public key type, as L{key_type_of} gives it.
    """

    names: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    issuer: str
    serial: str
    key_type: str

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> CertInfo:
        """
        Describe a parsed certificate.
        """
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            names: tuple[str, ...] = ()
        else:
            names = tuple(san.get_values_for_type(x509.DNSName)) + tuple(
                str(ip) for ip in san.get_values_for_type(x509.IPAddress)
            )
        return cls(
            names=names,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            issuer=cert.issuer.rfc4514_string(),
            serial=format(cert.serial_number, "x"),
            key_type=key_type_of(cert.public_key()),
        )


def certificate_info(chain_pem: bytes) -> CertInfo:
    """
    Describe the leaf (first certificate) of a PEM chain.

    @raise CertificateError: if the chain holds no parsable leaf.
    """
    leaf = split_chain(chain_pem)[0]
    try:
        cert = x509.load_pem_x509_certificate(leaf)
    except ValueError as e:
        raise CertificateError(f"cannot parse certificate: {e}") from None
    return CertInfo.from_certificate(cert)

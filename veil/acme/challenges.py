"""
ACME challenge answers: key authorizations, the RFC 8737 C{tls-alpn-01}
certificate, and an in-memory responder.

Everything here is synchronous and cheap (one P-256 key and one signature for
a C{tls-alpn-01} certificate), so it may run on the reactor thread.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import attrs
import josepy
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from veil.acme.interfaces import IChallengeResponder

HTTP_01 = "http-01"
TLS_ALPN_01 = "tls-alpn-01"

#: The path prefix under which C{http-01} answers are served (RFC 8555 §8.3).
HTTP01_PATH_PREFIX = "/.well-known/acme-challenge/"

#: The ALPN protocol a CA offers when it validates C{tls-alpn-01} (RFC 8737 §6.2).
ACME_TLS_ALPN_PROTOCOL = b"acme-tls/1"

#: id-pe-acmeIdentifier (RFC 8737 §6.1).
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")

#: How long a C{tls-alpn-01} certificate is valid either side of "now".
_TLS_ALPN_VALIDITY_BEFORE = timedelta(hours=1)
_TLS_ALPN_VALIDITY_AFTER = timedelta(days=1)


def jwk_thumbprint(account_key: josepy.JWK) -> str:
    """The base64url SHA-256 JWK thumbprint (RFC 7638) of an account key's public part."""
    digest = account_key.public_key().thumbprint(hash_function=hashes.SHA256)
    return josepy.b64encode(digest).decode("ascii")


def key_authorization(token: str, account_key: josepy.JWK) -> str:
    """
    The key authorization for a challenge token (RFC 8555 §8.1):
    C{token || '.' || base64url(thumbprint(accountKey))}.
    """
    return f"{token}.{jwk_thumbprint(account_key)}"


def _ascii_name(name: str) -> str:
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"host name must be ASCII (an A-label): {name!r}") from None
    return name


def tls_alpn01_certificate(name: str, key_authorization: str,
                           clock: IReactorTime) -> tuple[bytes, bytes]:
    """
    Build the self-signed C{tls-alpn-01} validation certificate (RFC 8737 §3).

    The certificate has a fresh P-256 key, a subjectAltName of exactly the one
    C{name}, and the critical acmeIdentifier extension whose value is the DER
    OCTET STRING of SHA-256(key authorization). It is valid from an hour before
    C{clock.seconds()} until a day after.

    @return: C{(cert_pem, key_pem)}, the key in unencrypted PKCS#8.
    """
    name = _ascii_name(name)
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    # An OCTET STRING (tag 4) of 32 bytes, DER-encoded.
    acme_identifier = b"\x04\x20" + digest
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.fromtimestamp(clock.seconds(), timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME tls-alpn-01 challenge")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _TLS_ALPN_VALIDITY_BEFORE)
        .not_valid_after(now + _TLS_ALPN_VALIDITY_AFTER)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, acme_identifier), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


@attrs.frozen
class Challenge:
    """One challenge a responder is answering."""

    type: str
    name: str
    token: str
    key_authorization: str


@implementer(IChallengeResponder)
@attrs.define(eq=False)
class MemoryResponder:
    """
    Keeps challenge answers in memory, for tests and single-process setups.

    A test's HTTP server answers C{http-01} with L{http01}; its TLS server
    answers C{tls-alpn-01} with L{tls_alpn01}. L{history} records every add and
    remove, in order, as C{("add" | "remove", Challenge)}.
    """

    supported_types: tuple[str, ...] = (TLS_ALPN_01, HTTP_01)
    _active: dict[tuple[str, str, str], Challenge] = attrs.field(factory=dict, init=False)
    history: list[tuple[str, Challenge]] = attrs.field(factory=list, init=False)

    def add(self, challenge_type: str, name: str, token: str,
            key_authorization: str) -> Deferred[None]:
        c = Challenge(challenge_type, name, token, key_authorization)
        self._active[(challenge_type, name, token)] = c
        self.history.append(("add", c))
        return succeed(None)

    def remove(self, challenge_type: str, name: str, token: str,
               key_authorization: str) -> Deferred[None]:
        c = self._active.pop((challenge_type, name, token), None)
        if c is not None:
            self.history.append(("remove", c))
        return succeed(None)

    @property
    def active(self) -> list[Challenge]:
        """The challenges currently being answered."""
        return list(self._active.values())

    def http01(self, token: str) -> str | None:
        """The key authorization to serve at C{/.well-known/acme-challenge/<token>}."""
        for (typ, _, tok), c in self._active.items():
            if typ == HTTP_01 and tok == token:
                return c.key_authorization
        return None

    def tls_alpn01(self, name: str) -> str | None:
        """The key authorization to embed in the C{tls-alpn-01} certificate for C{name}."""
        wanted = name.lower().rstrip(".")
        for (typ, n, _), c in self._active.items():
            if typ == TLS_ALPN_01 and n.lower() == wanted:
                return c.key_authorization
        return None

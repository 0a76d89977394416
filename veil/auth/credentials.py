"""
The secrets clients hold, and how Veil recognises them without storing them.

Every secret is 32 bytes from the operating system's CSPRNG (256 bits; ASVS
7.2.3 and 11.5.1 ask for at least 128), shown to the client in base64url,
and stored only as the SHA-256 of that text (L{digest}): with that many
random bits a plain hash is enough (ASVS 6.5.2), and lookups stay one index
probe.

API tokens carry a prefix and a checksum, as GitHub's do, so that secret
scanners recognise a leaked one and a mistyped one is refused without a
database query::

    veil_pat_<43 characters of base64url>_<6 characters of base62 CRC-32>
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

#: Random bytes in every secret.
SECRET_BYTES = 32

API_TOKEN_PREFIX = "veil_pat_"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_API_TOKEN = re.compile(r"veil_pat_([A-Za-z0-9_-]{43})_([0-9A-Za-z]{6})")
#: Characters of an API token shown in lists.
DISPLAY_PREFIX_LENGTH = len(API_TOKEN_PREFIX) + 6


def new_secret() -> str:
    """A fresh random secret as base64url text without padding (43 characters)."""
    return b64url(secrets.token_bytes(SECRET_BYTES))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def digest(secret: str) -> bytes:
    """The SHA-256 of a secret's text: what the database keeps."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


def keyed(key: bytes, purpose: str, value: str | bytes) -> bytes:
    """HMAC-SHA-256 of C{value} under C{key}, separated by C{purpose}."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return hmac.new(key, purpose.encode("ascii") + b"\x00" + data, hashlib.sha256).digest()


def same(a: str | bytes, b: str | bytes) -> bool:
    """Compare two secrets in constant time."""
    a_bytes = a.encode("utf-8") if isinstance(a, str) else a
    b_bytes = b.encode("utf-8") if isinstance(b, str) else b
    return hmac.compare_digest(a_bytes, b_bytes)


def looks_like_secret(text: str) -> bool:
    """Whether C{text} has the shape of a L{new_secret} (cheap, before any query)."""
    return len(text) == 43 and re.fullmatch(r"[A-Za-z0-9_-]{43}", text) is not None


# -- API tokens ------------------------------------------------------------------


def _checksum(body: str) -> str:
    value = binascii.crc32(body.encode("ascii"))
    out = []
    for _ in range(6):
        value, digit = divmod(value, 62)
        out.append(_BASE62[digit])
    return "".join(reversed(out))


def new_api_token() -> str:
    """A fresh API token: C{veil_pat_}, 43 random characters, C{_}, checksum."""
    body = new_secret()
    return f"{API_TOKEN_PREFIX}{body}_{_checksum(body)}"


def is_api_token(text: str) -> bool:
    """Whether C{text} is a well-formed API token whose checksum matches."""
    match = _API_TOKEN.fullmatch(text)
    return match is not None and hmac.compare_digest(match.group(2), _checksum(match.group(1)))


def display_prefix(token: str) -> str:
    """What lists show of a token: enough to recognise it, far too little to use it."""
    return token[:DISPLAY_PREFIX_LENGTH]


# -- OAuth -----------------------------------------------------------------------


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier (RFC 7636 section 4.2)."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())

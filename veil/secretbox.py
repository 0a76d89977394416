"""
Encryption at rest for private keys, tokens and other secrets in the store.

A L{SecretBox} holds one or more 256-bit keys.  The first seals; all of
them open, so keys can be rotated: put the new key first, keep the old ones
until every row has been resealed (L{SecretBox.needs_reseal},
L{SecretBox.reseal}), then drop them.

Sealed format, version 1::

    1 byte   version (0x01)
    4 bytes  key id: the first four bytes of SHA-256(key)
    12 bytes random nonce
    n bytes  AES-256-GCM ciphertext, then the 16-byte tag

The associated data is the 5-byte header (version and key id) followed by
the caller's context, for example the certificate name a private key
belongs to, so that a sealed value copied onto another row does not open.

Keys come from a key file (L{SecretBox.load_or_create}: one base64 key per
line, the sealing key first, C{#} comments allowed, created with one fresh
key and mode 0600 if missing) or from configuration (L{SecretBox.from_key}).
A random 96-bit nonce per message is safe for far more than the number of
secrets Veil seals under one key (NIST's limit is 2**32 messages).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path
from typing import ClassVar

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.logger import Logger

from veil.errors import SecretError

VERSION = 1
KEY_BYTES = 32
KEY_ID_BYTES = 4
NONCE_BYTES = 12
TAG_BYTES = 16
_HEADER_BYTES = 1 + KEY_ID_BYTES
_OVERHEAD = _HEADER_BYTES + NONCE_BYTES + TAG_BYTES


def key_id(key: bytes) -> bytes:
    """
    The identifier of a key as stored in sealed values: SHA-256 prefix.
    """
    return hashlib.sha256(key).digest()[:KEY_ID_BYTES]


def generate_key() -> str:
    """
    A new random key, base64-encoded as L{SecretBox.from_key} takes it.
    """
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def _decode_key(text: str) -> bytes:
    """
    Decode a base64 key (standard or URL-safe alphabet, padding optional).

    @raise SecretError: unless it is valid base64 of exactly 32 bytes.
    """
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        key = base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise SecretError("a secret-box key must be base64") from None
    if len(key) != KEY_BYTES:
        raise SecretError(f"a secret-box key must be {KEY_BYTES} bytes, not {len(key)}")
    return key


def _parse_key_file(path: Path, text: str) -> list[bytes]:
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(_decode_key(line))
        except SecretError as e:
            raise SecretError(f"{path} line {number}: {e}") from None
    if not keys:
        raise SecretError(f"{path} holds no key")
    return keys


def _create_key_file(path: Path) -> None:
    """
    Create C{path} holding one new key, mode 0600, without ever replacing a
    file someone else created meanwhile: the key is written to a temporary
    file and hard-linked into place, which fails if C{path} exists.
    """
    content = (
        "# Veil secret-box keys, base64, one per line; the first seals.\n"
        "# Losing this file makes every sealed secret unreadable.\n"
        f"{generate_key()}\n"
    ).encode("ascii")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return  # another process won; the caller reads its key
        dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    finally:
        tmp.unlink(missing_ok=True)


@attrs.frozen(repr=False)
class SecretBox:
    """
    Seal and open secrets with AES-256-GCM under one of several keys.

    @ivar keys: the raw 32-byte keys; the first seals, all open.
    """

    keys: tuple[bytes, ...] = attrs.field(converter=tuple)
    _by_id: dict[bytes, AESGCM] = attrs.field(init=False, repr=False, eq=False)
    _log: ClassVar[Logger] = Logger()

    def __attrs_post_init__(self) -> None:
        if not self.keys:
            raise SecretError("a secret box needs at least one key")
        by_id: dict[bytes, AESGCM] = {}
        for key in self.keys:
            if len(key) != KEY_BYTES:
                raise SecretError(f"a secret-box key must be {KEY_BYTES} bytes, not {len(key)}")
            kid = key_id(key)
            if kid in by_id:
                raise SecretError(f"two keys share the key id {kid.hex()} (the same key twice?)")
            by_id[kid] = AESGCM(key)
        object.__setattr__(self, "_by_id", by_id)

    def __repr__(self) -> str:
        return f"<SecretBox key ids {', '.join(self.key_ids)}>"

    @classmethod
    def from_key(cls, key: str, *old_keys: str) -> SecretBox:
        """
        A box from base64 keys given by configuration.

        @param key: the sealing key.
        @param old_keys: keys that still open older secrets.
        @raise SecretError: if a key is not base64 of 32 bytes.
        """
        return cls([_decode_key(k) for k in (key, *old_keys)])

    @classmethod
    def load_or_create(cls, path: Path) -> SecretBox:
        """
        A box from a key file, created with one new key (mode 0600) if it
        does not exist.  Safe when several processes start at once: they all
        end up with the key of whichever created the file first.

        @raise SecretError: if the file exists but holds no valid key.
        """
        if not path.exists():
            _create_key_file(path)
            cls._log.info("Created secret-box key file {path}", path=str(path))
        elif path.stat().st_mode & 0o077:
            cls._log.warn(
                "{path} is readable by other users; it should be mode 0600", path=str(path)
            )
        return cls(_parse_key_file(path, path.read_text("ascii")))

    @property
    def key_ids(self) -> tuple[str, ...]:
        """
        The key ids in hexadecimal, the sealing key's first.
        """
        return tuple(key_id(k).hex() for k in self.keys)

    def seal(self, plaintext: bytes, context: bytes = b"") -> bytes:
        """
        Encrypt and authenticate C{plaintext} under the first key.

        @param context: bound as associated data; the same bytes must be
            given to L{open}.
        """
        header = bytes([VERSION]) + key_id(self.keys[0])
        nonce = secrets.token_bytes(NONCE_BYTES)
        return header + nonce + self._by_id[header[1:]].encrypt(nonce, plaintext, header + context)

    def open(self, sealed: bytes, context: bytes = b"") -> bytes:
        """
        Check and decrypt a value made by L{seal}.

        @raise SecretError: if C{sealed} is not a sealed value of a known
            version, was sealed under a key this box does not hold, or was
            altered or sealed with another context.
        """
        if len(sealed) < _OVERHEAD:
            raise SecretError(f"not a sealed secret: only {len(sealed)} bytes")
        if sealed[0] != VERSION:
            raise SecretError(f"unknown sealed-secret version {sealed[0]}")
        header = sealed[:_HEADER_BYTES]
        kid = header[1:]
        aead = self._by_id.get(kid)
        if aead is None:
            raise SecretError(
                f"sealed under key id {kid.hex()}, which this box does not hold"
                f" (it holds {', '.join(self.key_ids)}): wrong or missing key"
            )
        nonce = sealed[_HEADER_BYTES : _HEADER_BYTES + NONCE_BYTES]
        try:
            return aead.decrypt(nonce, sealed[_HEADER_BYTES + NONCE_BYTES :], header + context)
        except InvalidTag:
            raise SecretError(
                f"sealed secret (key id {kid.hex()}) failed authentication:"
                " it was altered, or sealed for a different context"
            ) from None

    def needs_reseal(self, sealed: bytes) -> bool:
        """
        Whether C{sealed} was sealed under a key other than the sealing key
        (without checking it).
        """
        return sealed[1:_HEADER_BYTES] != key_id(self.keys[0])

    def reseal(self, sealed: bytes, context: bytes = b"") -> bytes:
        """
        Open C{sealed} with whichever key fits and seal it under the first.

        @raise SecretError: as L{open} does.
        """
        return self.seal(self.open(sealed, context), context)

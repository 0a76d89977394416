"""
Tests for L{veil.secretbox}.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from veil.errors import SecretError, VeilError
from veil.secretbox import SecretBox, _create_key_file, generate_key, key_id

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(32, 64))).decode()


class SealOpenTests(SynchronousTestCase):
    """
    L{SecretBox.seal} and L{SecretBox.open}.
    """

    def setUp(self) -> None:
        self.box = SecretBox.from_key(KEY_A)

    def test_round_trip(self) -> None:
        """
        What is sealed opens to the same bytes, with or without a context,
        including the empty plaintext.
        """
        for plaintext in (b"", b"secret", os.urandom(5000)):
            self.assertEqual(self.box.open(self.box.seal(plaintext)), plaintext)
            sealed = self.box.seal(plaintext, b"a.example")
            self.assertEqual(self.box.open(sealed, b"a.example"), plaintext)

    def test_format(self) -> None:
        """
        A sealed value is version 1, the key id, a 12-byte nonce, then the
        ciphertext and a 16-byte tag; nonces differ between seals.
        """
        one, two = self.box.seal(b"secret"), self.box.seal(b"secret")
        self.assertEqual(one[0], 1)
        self.assertEqual(one[1:5], key_id(base64.b64decode(KEY_A)))
        self.assertEqual(len(one), 1 + 4 + 12 + len(b"secret") + 16)
        self.assertNotEqual(one[5:17], two[5:17])
        self.assertNotIn(b"secret", one)

    def test_tampering(self) -> None:
        """
        Flipping any bit of a sealed value makes it fail to open.
        """
        sealed = self.box.seal(b"secret", b"ctx")
        for index in range(len(sealed)):
            for bit in (0x01, 0x80):
                altered = bytearray(sealed)
                altered[index] ^= bit
                with self.assertRaises(SecretError):
                    self.box.open(bytes(altered), b"ctx")

    def test_tampering_message(self) -> None:
        """
        An altered ciphertext is reported as failing authentication.
        """
        sealed = bytearray(self.box.seal(b"secret"))
        sealed[-1] ^= 1
        with self.assertRaises(SecretError) as caught:
            self.box.open(bytes(sealed))
        self.assertIn("failed authentication", str(caught.exception))
        self.assertIsInstance(caught.exception, VeilError)

    def test_truncated(self) -> None:
        """
        Values too short to be sealed, or of an unknown version, are refused.
        """
        sealed = self.box.seal(b"secret")
        with self.assertRaises(SecretError) as caught:
            self.box.open(sealed[:20])
        self.assertIn("not a sealed secret", str(caught.exception))
        with self.assertRaises(SecretError) as caught:
            self.box.open(b"\x02" + sealed[1:])
        self.assertIn("version 2", str(caught.exception))

    def test_wrong_context(self) -> None:
        """
        A value sealed for one context does not open for another, nor for
        none.
        """
        sealed = self.box.seal(b"private key", b"a.example")
        self.assertRaises(SecretError, self.box.open, sealed, b"b.example")
        self.assertRaises(SecretError, self.box.open, sealed)

    def test_wrong_key(self) -> None:
        """
        A value sealed under another key is refused, naming its key id and
        the ids the box holds.
        """
        sealed = SecretBox.from_key(KEY_B).seal(b"secret")
        with self.assertRaises(SecretError) as caught:
            self.box.open(sealed)
        message = str(caught.exception)
        self.assertIn(key_id(base64.b64decode(KEY_B)).hex(), message)
        self.assertIn(key_id(base64.b64decode(KEY_A)).hex(), message)
        self.assertIn("does not hold", message)

    def test_repr_hides_keys(self) -> None:
        """
        The box's repr shows key ids, not keys.
        """
        text = repr(SecretBox.from_key(KEY_A, KEY_B))
        self.assertNotIn(KEY_A, text)
        self.assertNotIn(repr(base64.b64decode(KEY_A)), text)
        self.assertIn(key_id(base64.b64decode(KEY_B)).hex(), text)


class KeyTests(SynchronousTestCase):
    """
    Keys given by configuration.
    """

    def test_urlsafe(self) -> None:
        """
        Keys may use the URL-safe alphabet and omit padding.
        """
        raw = b"\xfb\xff" * 16
        standard = base64.b64encode(raw).decode()
        urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        self.assertEqual(SecretBox.from_key(standard).keys, SecretBox.from_key(urlsafe).keys)

    def test_bad_keys(self) -> None:
        """
        Keys that are not base64 of 32 bytes are refused with a reason.
        """
        with self.assertRaises(SecretError) as caught:
            SecretBox.from_key(base64.b64encode(b"short").decode())
        self.assertIn("32 bytes, not 5", str(caught.exception))
        self.assertRaises(SecretError, SecretBox.from_key, "not base64 !")
        self.assertRaises(SecretError, SecretBox.from_key, "")

    def test_duplicate_keys(self) -> None:
        """
        The same key twice is refused.
        """
        self.assertRaises(SecretError, SecretBox.from_key, KEY_A, KEY_A)

    def test_generate_key(self) -> None:
        """
        L{generate_key} makes distinct usable keys.
        """
        one, two = generate_key(), generate_key()
        self.assertNotEqual(one, two)
        box = SecretBox.from_key(one)
        self.assertEqual(box.open(box.seal(b"x")), b"x")


class RotationTests(SynchronousTestCase):
    """
    Boxes with several keys: the first seals, all open.
    """

    def test_rotation(self) -> None:
        """
        After rotation, old values still open, new values are sealed under
        the new key, and resealing moves old values to the new key.
        """
        old_box = SecretBox.from_key(KEY_A)
        old = old_box.seal(b"secret", b"ctx")
        box = SecretBox.from_key(KEY_B, KEY_A)
        self.assertEqual(box.open(old, b"ctx"), b"secret")
        new = box.seal(b"secret", b"ctx")
        self.assertEqual(new[1:5], key_id(base64.b64decode(KEY_B)))
        self.assertRaises(SecretError, old_box.open, new, b"ctx")
        self.assertTrue(box.needs_reseal(old))
        self.assertFalse(box.needs_reseal(new))
        resealed = box.reseal(old, b"ctx")
        self.assertFalse(box.needs_reseal(resealed))
        self.assertEqual(SecretBox.from_key(KEY_B).open(resealed, b"ctx"), b"secret")
        ids = tuple(key_id(base64.b64decode(k)).hex() for k in (KEY_B, KEY_A))
        self.assertEqual(box.key_ids, ids)

    def test_reseal_checks_context(self) -> None:
        """
        Resealing with the wrong context fails rather than rebinding.
        """
        old = SecretBox.from_key(KEY_A).seal(b"secret", b"a.example")
        self.assertRaises(SecretError, SecretBox.from_key(KEY_B, KEY_A).reseal, old, b"b.example")


class KeyFileTests(SynchronousTestCase):
    """
    L{SecretBox.load_or_create} keeps keys in a file.
    """

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.path = self.directory / "secret.key"

    def test_create_and_reuse(self) -> None:
        """
        The first load creates the file with mode 0600 even under a lax
        umask, leaving no temporary file; later loads use the same key.
        """
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        box = SecretBox.load_or_create(self.path)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        self.assertEqual([p.name for p in self.directory.iterdir()], ["secret.key"])
        sealed = box.seal(b"secret", b"ctx")
        again = SecretBox.load_or_create(self.path)
        self.assertEqual(again.keys, box.keys)
        self.assertEqual(again.open(sealed, b"ctx"), b"secret")

    def test_not_replaced(self) -> None:
        """
        An existing file is never overwritten, even when creating races
        with another process that got there first.
        """
        self.path.write_text(KEY_A + "\n")
        _create_key_file(self.path)
        self.assertEqual(self.path.read_text(), KEY_A + "\n")
        self.assertEqual([p.name for p in self.directory.iterdir()], ["secret.key"])

    def test_several_keys(self) -> None:
        """
        A file may hold several keys and comments; the first key seals.
        """
        self.path.write_text(f"# new key\n{KEY_B}\n\n# old key\n{KEY_A}\n")
        self.path.chmod(0o600)
        box = SecretBox.load_or_create(self.path)
        self.assertEqual(box.keys, SecretBox.from_key(KEY_B, KEY_A).keys)

    def test_bad_file(self) -> None:
        """
        A file with a malformed key, or none, is an error naming the file.
        """
        self.path.write_text(f"{KEY_A}\nnonsense\n")
        with self.assertRaises(SecretError) as caught:
            SecretBox.load_or_create(self.path)
        self.assertIn("line 2", str(caught.exception))
        self.assertIn(str(self.path), str(caught.exception))
        self.path.write_text("# nothing\n")
        self.assertRaises(SecretError, SecretBox.load_or_create, self.path)

    def test_lax_mode_warns(self) -> None:
        """
        A key file others can read is used, with a warning.
        """
        self.path.write_text(KEY_A + "\n")
        self.path.chmod(0o644)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        SecretBox.load_or_create(self.path)
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn])
        self.assertEqual(events[0]["path"], str(self.path))

"""Tests for the redaction backstop of L{veil.logs}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from veil.logs import RedactingObserver, redact, redact_text


class RedactionTests(SynchronousTestCase):
    """Addresses, tokens and secret-named fields never reach the JSON log."""

    def test_text(self) -> None:
        """E-mail addresses, API and GitHub tokens and bearer credentials are masked."""
        text = ("from Bob.Smith+x@mail.example.co.uk with veil_pat_abc_DEF-123_xyz and"
                " gho_16C7e42F292c6912E7710c838347Ae178B4a, Authorization: Bearer abc.def")
        cleaned = redact_text(text)
        for secret in ("Bob.Smith", "veil_pat_abc", "gho_16C7", "abc.def"):
            self.assertNotIn(secret, cleaned)
        self.assertIn("[email]", cleaned)

    def test_event(self) -> None:
        """Fields named like secrets are masked; others are cleaned; the original is untouched."""
        event = {"log_format": "sent to {to}", "to": "ann@example.com", "password": "x",
                 "token": "y", "count": 3, "setup_link": "http://127.0.0.1:8081/setup?token=Ab_c"}
        cleaned = redact(event)
        self.assertEqual(cleaned["to"], "[email]")
        self.assertEqual((cleaned["password"], cleaned["token"]), ("[redacted]", "[redacted]"))
        self.assertEqual(cleaned["setup_link"], event["setup_link"])
        self.assertEqual(event["to"], "ann@example.com")
        self.assertIs(redact({"log_format": "nothing", "n": 1}).get("n"), 1)

    def test_observer(self) -> None:
        """The observer passes on the cleaned event."""
        seen = []
        RedactingObserver(seen.append)({"log_format": "{x}", "x": "a@b.example"})
        self.assertEqual(seen[0]["x"], "[email]")

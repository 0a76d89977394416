"""Tests for L{veil.dns.caa} and L{veil.dns.records}: CAA parsing and evaluation."""

from __future__ import annotations

from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from veil.config import load
from veil.dns import caa
from veil.dns.records import CaaRecord, parse_caa, printable

LE = caa.CaPolicy(True, ("letsencrypt.org",), ("tls-alpn-01", "http-01"), "Let's Encrypt")


def issue(value: str, flags: int = 0) -> CaaRecord:
    return CaaRecord(flags, "issue", value)


class RecordTests(SynchronousTestCase):
    """CAA wire format and the display of DNS text."""

    def test_parse(self) -> None:
        """Flags, tag (lower-cased) and value are read from the RDATA."""
        self.assertEqual(parse_caa(b"\x80\x05ISSUEletsencrypt.org"),
                         CaaRecord(128, "issue", "letsencrypt.org"))
        self.assertTrue(CaaRecord(128, "x", "").critical)
        self.assertFalse(CaaRecord(0, "x", "").critical)

    def test_malformed(self) -> None:
        """Short RDATA, an empty or overlong tag, or a tag of other characters is refused."""
        for rdata in (b"", b"\x00", b"\x00\x00value", b"\x00\x10" + b"a" * 16,
                      b"\x00\x05iss", b"\x00\x05is-ue;"):
            self.assertRaises(ValueError, parse_caa, rdata)

    def test_text(self) -> None:
        """A record reads as a zone file line."""
        self.assertEqual(issue("letsencrypt.org").text(), '0 issue "letsencrypt.org"')

    def test_printable(self) -> None:
        """Control and non-ASCII characters are escaped and long text is cut."""
        self.assertEqual(printable("ok\x1b[31m\u00e9"), "ok\\x1b[31m\\xe9")
        self.assertEqual(printable("x" * 200, limit=10), "xxxxxxx...")


class EvaluateTests(SynchronousTestCase):
    """The relevant CAA set allows or forbids the CA, as RFC 8659 and RFC 8657 say."""

    def test_listed(self) -> None:
        """An issue property naming the CA allows it, whatever else is listed."""
        verdict = caa.evaluate((issue("digicert.com"), issue(" LetsEncrypt.org ; foo=bar")),
                               LE, "example.test")
        self.assertEqual(verdict.verdict, caa.ALLOWED)
        self.assertTrue(verdict.ok)

    def test_not_listed(self) -> None:
        """Issue properties naming only other CAs forbid it."""
        verdict = caa.evaluate((issue("digicert.com"), issue("sectigo.com")), LE,
                               "example.test")
        self.assertEqual((verdict.verdict, verdict.reason), (caa.FORBIDDEN, caa.NOT_LISTED))
        self.assertEqual(verdict.issuers, ("digicert.com", "sectigo.com"))
        self.assertFalse(verdict.ok)

    def test_nobody(self) -> None:
        """An issue property with no issuer (";") forbids every CA."""
        verdict = caa.evaluate((issue(";"),), LE, "example.test")
        self.assertEqual((verdict.verdict, verdict.reason), (caa.FORBIDDEN, caa.NOBODY))

    def test_malformed_issuer(self) -> None:
        """An issuer that is not a domain name authorizes nobody."""
        verdict = caa.evaluate((issue("lets encrypt"),), LE, "example.test")
        self.assertEqual(verdict.reason, caa.NOBODY)

    def test_no_issue_property(self) -> None:
        """A set with only issuewild and iodef does not restrict non-wildcard issuance."""
        verdict = caa.evaluate((CaaRecord(0, "issuewild", ";"),
                                CaaRecord(0, "iodef", "mailto:x@example.test")), LE, "x")
        self.assertEqual(verdict.verdict, caa.ALLOWED)

    def test_critical_unknown_tag(self) -> None:
        """An unknown property with the critical flag forbids issuance even when listed."""
        verdict = caa.evaluate((issue("letsencrypt.org"), CaaRecord(128, "future", "x")),
                               LE, "example.test")
        self.assertEqual((verdict.verdict, verdict.reason), (caa.FORBIDDEN, caa.CRITICAL_TAG))

    def test_critical_known_tag(self) -> None:
        """The critical flag on a known property changes nothing."""
        verdict = caa.evaluate((issue("letsencrypt.org", flags=128),), LE, "example.test")
        self.assertEqual(verdict.verdict, caa.ALLOWED)

    def test_validation_methods(self) -> None:
        """validationmethods without any challenge Veil uses forbids; with one, allows."""
        only_dns = caa.evaluate((issue("letsencrypt.org; validationmethods=dns-01"),), LE, "x")
        self.assertEqual((only_dns.verdict, only_dns.reason), (caa.FORBIDDEN, caa.METHODS))
        some = caa.evaluate((issue("letsencrypt.org; validationmethods=dns-01,http-01"),),
                            LE, "x")
        self.assertEqual(some.verdict, caa.ALLOWED)

    def test_unknown_ca(self) -> None:
        """Without the CA's identifiers an issue set cannot be judged."""
        verdict = caa.evaluate((issue("letsencrypt.org"),), caa.CaPolicy(True), "x")
        self.assertEqual(verdict.verdict, caa.UNKNOWN_CA)
        self.assertTrue(verdict.ok)


class PolicyTests(SynchronousTestCase):
    """Which CA identifiers are checked follows tls.mode, the directory and dns.caa_identifiers."""

    acme: ClassVar[dict[str, str]] = {"VEIL_TLS_MODE": "acme", "VEIL_ACME_AGREE_TOS": "true"}

    def test_internal(self) -> None:
        """Veil's internal CA does not consult CAA: nothing is checked."""
        policy = caa.ca_policy(load(None, {}))
        self.assertFalse(policy.applies)

    def test_known_directory(self) -> None:
        """Let's Encrypt's directory means letsencrypt.org and Veil's challenge types."""
        config = load(None, {**self.acme, "VEIL_ACME_DIRECTORY_URL":
                             "https://acme-v02.api.letsencrypt.org/directory"})
        policy = caa.ca_policy(config)
        self.assertEqual((policy.applies, policy.identifiers, policy.methods, policy.name),
                         (True, ("letsencrypt.org",), ("tls-alpn-01", "http-01"),
                          "Let's Encrypt"))

    def test_zerossl(self) -> None:
        """ZeroSSL publishes sectigo.com as its CAA name."""
        config = load(None, {**self.acme,
                             "VEIL_ACME_DIRECTORY_URL": "https://acme.zerossl.com/v2/DV90"})
        self.assertEqual(caa.ca_policy(config).identifiers, ("sectigo.com",))

    def test_unknown_directory(self) -> None:
        """Another CA's identifiers are unknown unless configured."""
        config = load(None, {**self.acme,
                             "VEIL_ACME_DIRECTORY_URL": "https://ca.internal:14000/dir"})
        policy = caa.ca_policy(config)
        self.assertEqual((policy.applies, policy.identifiers), (True, ()))
        self.assertIn("ca.internal", policy.name)

    def test_configured(self) -> None:
        """dns.caa_identifiers overrides the known names, in either mode."""
        config = load(None, {**self.acme,
                             "VEIL_DNS_CAA_IDENTIFIERS": "example-ca.test, Other.test",
                             "VEIL_ACME_DIRECTORY_URL":
                             "https://acme-v02.api.letsencrypt.org/directory"})
        self.assertEqual(caa.ca_policy(config).identifiers, ("example-ca.test", "other.test"))
        internal = caa.ca_policy(load(None, {"VEIL_DNS_CAA_IDENTIFIERS": "example-ca.test"}))
        self.assertEqual((internal.applies, internal.identifiers), (True, ("example-ca.test",)))

"""
Tests for the DNS verification check (L{veil.dns.check}) and the origin
proposal (L{veil.dns.origin}) against a DNS server on loopback, including
the words each problem is explained in.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import attrs
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.dns_server import (
    NetworkWithClock,
    World,
    a,
    aaaa,
    caa,
    cname,
    dns_server_for,
    expire_until_fired,
    mx,
    txt,
)
from veil.dns import caa as caa_module
from veil.dns.check import DnsSettings, Report, check, check_domain, dns_instructions
from veil.dns.origin import propose_origin
from veil.dns.resolver import StubResolver

TOKEN = "0123456789abcdef0123456789abcdef"
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
LE = caa_module.CaPolicy(True, ("letsencrypt.org",), ("tls-alpn-01", "http-01"),
                         "Let's Encrypt")
SETTINGS = DnsSettings("edge.veil.test", ("198.51.100.7", "2001:db8::7"), LE)


def world() -> World:
    w = World()
    for zone in ("example.test", "veil.test", "other.test"):
        w.add_zone(zone)
    w.add("edge.veil.test", a("198.51.100.7"), aaaa("2001:db8::7"))
    w.add("old.other.test", a("203.0.113.9"))
    return w


class CheckCase(TestCase):
    """Base: a server on loopback with Veil's proxy name and a shop's zone."""

    timeout = 20

    def setUp(self) -> None:
        self.server = dns_server_for(self, world())
        self.world = self.server.world
        self.resolver = StubResolver(reactor, (self.server.server,), timeout=2, attempts=1)

    async def check(self, domain: str = "shop.example.test",
                    settings: DnsSettings = SETTINGS) -> Report:
        report = await check_domain(self.resolver, settings, domain, TOKEN, NOW)
        # Whatever the case, the report survives its trip through JSON.
        self.assertEqual(Report.from_json(json.loads(json.dumps(report.to_json()))), report)
        return report

    def owned(self, domain: str = "shop.example.test") -> None:
        self.world.add(f"_veil.{domain}", txt(TOKEN))


class PointingTests(CheckCase):
    """The domain must point at Veil: a CNAME, or for an apex its addresses."""

    async def test_cname_ok(self) -> None:
        """A CNAME to the proxy name and the token: the site passes, record by record."""
        self.world.add("shop.example.test", cname("edge.veil.test"))
        self.owned()
        report = await self.check()
        self.assertTrue(report.ok)
        self.assertFalse(report.apex)
        pointing, ownership, authority = report.records
        self.assertEqual((pointing.name, pointing.type, pointing.expected, pointing.ok),
                         ("shop.example.test", "CNAME", "edge.veil.test", True))
        self.assertEqual(pointing.found, ("CNAME edge.veil.test", "A 198.51.100.7",
                                          "AAAA 2001:db8::7"))
        self.assertEqual((ownership.name, ownership.expected, ownership.found, ownership.ok),
                         ("_veil.shop.example.test", TOKEN, (TOKEN,), True))
        self.assertTrue(authority.ok)
        self.assertEqual(report.problems, ())
        self.assertEqual(report.summary, "DNS points at Veil and the ownership token matches.")
        self.assertEqual(report.resolvers, self.server.address)

    async def test_cname_ok_despite_failing_lookups(self) -> None:
        """A CNAME to the proxy name passes even if another lookup of the name fails."""
        self.world.add("shop.example.test", cname("edge.veil.test"))
        self.world.servfail.add("edge.veil.test AAAA")
        self.owned()
        report = await self.check()
        self.assertTrue(report.ok)
        self.assertEqual(report.records[0].found, ("CNAME edge.veil.test", "A 198.51.100.7"))

    async def test_addresses_unknown_when_a_lookup_fails(self) -> None:
        """Without a CNAME, a failed AAAA lookup fails the check: IPv6 might bypass Veil."""
        self.world.add("example.test", a("198.51.100.7"))
        self.world.servfail.add("example.test AAAA")
        self.owned("example.test")
        [problem] = (await self.check("example.test")).problems
        self.assertEqual(problem.problem, "servfail")
        self.assertIn("Looking up the IPv6 address (AAAA) records of example.test failed",
                      problem.explanation)

    async def test_cname_wrong(self) -> None:
        """A CNAME elsewhere is explained with what it points at now."""
        self.world.add("shop.example.test", cname("old.other.test"))
        self.owned()
        report = await self.check()
        self.assertFalse(report.ok)
        [problem] = report.problems
        self.assertEqual((problem.problem, problem.found),
                         ("cname_wrong", ("CNAME old.other.test", "A 203.0.113.9")))
        self.assertEqual(problem.explanation,
                         "shop.example.test points at old.other.test, at 203.0.113.9, not at"
                         " Veil. Change the CNAME record of shop.example.test so that it"
                         " points at edge.veil.test.")
        self.assertEqual(report.summary, problem.explanation)

    async def test_cname_chain(self) -> None:
        """A chain that reaches the proxy name through another alias passes."""
        self.world.add("shop.example.test", cname("alias.example.test"))
        self.world.add("alias.example.test", cname("edge.veil.test"))
        self.owned()
        report = await self.check()
        self.assertTrue(report.ok)
        self.assertEqual(report.records[0].found[:2],
                         ("CNAME alias.example.test", "CNAME edge.veil.test"))

    async def test_cname_chain_elsewhere(self) -> None:
        """A chain that ends elsewhere names its first link and where it leads."""
        self.world.add("shop.example.test", cname("alias.example.test"))
        self.world.add("alias.example.test", cname("old.other.test"))
        self.owned()
        [problem] = (await self.check()).problems
        self.assertIn("shop.example.test points at alias.example.test (which leads on to"
                      " old.other.test), at 203.0.113.9, not at Veil.", problem.explanation)

    async def test_cname_to_nothing(self) -> None:
        """A CNAME to a name that does not exist says so."""
        self.world.add("shop.example.test", cname("gone.other.test"))
        self.owned()
        [problem] = (await self.check()).problems
        self.assertIn("points at gone.other.test, which does not exist, not at Veil",
                      problem.explanation)

    async def test_addresses_instead_of_cname(self) -> None:
        """A subdomain with address records elsewhere is told to use a CNAME instead."""
        self.world.add("shop.example.test", a("203.0.113.9"))
        self.owned()
        [problem] = (await self.check()).problems
        self.assertEqual(problem.problem, "cname_missing")
        self.assertEqual(problem.explanation,
                         "shop.example.test has no CNAME record: it has address records"
                         " (A 203.0.113.9) that point elsewhere. Delete them and create a"
                         " CNAME record shop.example.test → edge.veil.test.")

    async def test_flattened(self) -> None:
        """A subdomain whose addresses are all Veil's (a flattened CNAME) passes."""
        self.world.add("shop.example.test", a("198.51.100.7"))
        self.owned()
        self.assertTrue((await self.check()).ok)

    async def test_apex_addresses(self) -> None:
        """A zone apex passes with A/AAAA records that are Veil's addresses."""
        self.world.add("example.test", a("198.51.100.7"), aaaa("2001:db8::7"))
        self.owned("example.test")
        report = await self.check("example.test")
        self.assertTrue(report.ok)
        self.assertTrue(report.apex)
        self.assertEqual((report.records[0].type, report.records[0].expected),
                         ("A/AAAA", "A 198.51.100.7, AAAA 2001:db8::7"))

    async def test_apex_wrong(self) -> None:
        """An apex at another address is told which addresses to use and why."""
        self.world.add("example.test", a("203.0.113.9"))
        self.owned("example.test")
        [problem] = (await self.check("example.test")).problems
        self.assertEqual(problem.problem, "address_wrong")
        self.assertEqual(problem.explanation,
                         "example.test has address records that are not Veil's: A 203.0.113.9."
                         " Replace all of its A and AAAA records with A 198.51.100.7, AAAA"
                         " 2001:db8::7. A zone apex cannot have a CNAME record, so it points"
                         " at Veil by address.")

    async def test_apex_ipv6_elsewhere(self) -> None:
        """An AAAA record left pointing elsewhere fails: IPv6 visitors would bypass Veil."""
        self.world.add("example.test", a("198.51.100.7"), aaaa("2001:db8::bad"))
        self.owned("example.test")
        [problem] = (await self.check("example.test")).problems
        self.assertIn("not Veil's: AAAA 2001:db8::bad. Visitors using IPv6 would bypass Veil.",
                      problem.explanation)

    async def test_apex_missing(self) -> None:
        """An apex without addresses is told to create them."""
        self.owned("example.test")
        [problem] = (await self.check("example.test")).problems
        self.assertEqual(problem.problem, "address_missing")
        self.assertIn("example.test has no A or AAAA records. Create these address records"
                      " for example.test: A 198.51.100.7, AAAA 2001:db8::7.",
                      problem.explanation)

    async def test_mx_name(self) -> None:
        """A name with MX records cannot be a CNAME, so it must use Veil's addresses."""
        self.world.add("shop.example.test", mx("mail.example.test"), a("203.0.113.9"))
        self.owned()
        report = await self.check()
        [problem] = report.problems
        self.assertFalse(report.apex)
        self.assertEqual((problem.type, problem.problem), ("A/AAAA", "address_wrong"))
        self.assertIn("A name with MX records cannot have a CNAME record", problem.explanation)

    async def test_apex_without_proxy_addresses(self) -> None:
        """An apex where the operator set no addresses says so, and suggests a subdomain."""
        settings = attrs.evolve(SETTINGS, proxy_addresses=())
        self.world.add("example.test", a("203.0.113.9"))
        self.owned("example.test")
        [problem] = (await self.check("example.test", settings)).problems
        self.assertEqual(problem.problem, "proxy_not_configured")
        self.assertEqual(problem.explanation,
                         "example.test is a zone apex (it has an SOA record), so it cannot have"
                         " a CNAME record and must point at Veil's IP addresses, but the"
                         " operator of this Veil has not configured them"
                         " (dns.proxy_addresses). Ask the operator to configure them, or"
                         " onboard a subdomain such as www.example.test instead.")

    async def test_addresses_only(self) -> None:
        """With dns.proxy_addresses but no dns.proxy_cname, every name points by address."""
        settings = attrs.evolve(SETTINGS, proxy_cname=None)
        self.world.add("shop.example.test", cname("old.other.test"))
        self.world.add("www.example.test", a("198.51.100.7"), aaaa("2001:db8::7"))
        self.owned()
        self.owned("www.example.test")
        self.assertTrue((await self.check("www.example.test", settings)).ok)
        [problem] = (await self.check(settings=settings)).problems
        self.assertEqual((problem.type, problem.problem, problem.expected),
                         ("A/AAAA", "address_wrong", "A 198.51.100.7, AAAA 2001:db8::7"))
        self.assertEqual(problem.explanation,
                         "shop.example.test is a CNAME to old.other.test, which does not lead to"
                         " Veil's addresses (A 198.51.100.7, AAAA 2001:db8::7). Replace the"
                         " CNAME with address records: A 198.51.100.7, AAAA 2001:db8::7.")

    async def test_proxy_not_configured(self) -> None:
        """Without dns.proxy_cname and dns.proxy_addresses nothing can pass, and it says why."""
        settings = attrs.evolve(SETTINGS, proxy_cname=None, proxy_addresses=())
        self.world.add("shop.example.test", cname("edge.veil.test"))
        self.owned()
        report = await self.check(settings=settings)
        [problem] = report.problems
        self.assertEqual((problem.problem, problem.expected),
                         ("proxy_not_configured", "Veil's host name (not configured)"))
        self.assertIn("the operator has not set dns.proxy_cname", problem.explanation)

    async def test_nxdomain(self) -> None:
        """A domain that does not exist is explained, and so is the missing TXT record."""
        report = await self.check()
        pointing, ownership, _ = report.records
        self.assertEqual((pointing.problem, pointing.outcome), ("nxdomain", "nxdomain"))
        self.assertEqual(pointing.explanation,
                         "shop.example.test does not exist in DNS (the resolvers answered"
                         " NXDOMAIN). Check the spelling, then create a CNAME record"
                         " shop.example.test → edge.veil.test at your DNS provider. A record"
                         " that was just created can take a few minutes to be seen.")
        self.assertEqual(ownership.problem, "txt_missing")
        self.assertEqual(report.summary, pointing.explanation + " (and 1 more problem)")


class OwnershipTests(CheckCase):
    """TXT _veil.<domain> must hold the site's token."""

    def setUp(self) -> None:
        super().setUp()
        self.world.add("shop.example.test", cname("edge.veil.test"))

    async def test_missing(self) -> None:
        """No TXT record: the owner is told the name and the value to create."""
        [problem] = (await self.check()).problems
        self.assertEqual((problem.name, problem.problem, problem.outcome),
                         ("_veil.shop.example.test", "txt_missing", "nxdomain"))
        self.assertEqual(problem.explanation,
                         "There is no TXT record at _veil.shop.example.test. Create a TXT record"
                         " with the name _veil.shop.example.test (in many DNS providers' forms,"
                         " the name without your zone, such as _veil) and the value"
                         f" {TOKEN}; it proves that you control shop.example.test.")

    async def test_wrong(self) -> None:
        """TXT records without the token are quoted back."""
        self.world.add("_veil.shop.example.test", txt("old-token"), txt("v=spf1 -all"))
        [problem] = (await self.check()).problems
        self.assertEqual(problem.problem, "txt_wrong")
        self.assertEqual(set(problem.found), {"old-token", "v=spf1 -all"})
        self.assertIn("but not this site's ownership token. Add a TXT record at"
                      f" _veil.shop.example.test whose value is exactly {TOKEN} (other TXT"
                      " records there may stay).", problem.explanation)

    async def test_among_several(self) -> None:
        """The token passes among other TXT records, also split over several strings."""
        self.world.add("_veil.shop.example.test", txt("v=spf1 -all"),
                       txt(TOKEN[:10], TOKEN[10:]), txt("google-site-verification=x"))
        self.assertTrue((await self.check()).ok)

    async def test_quoted_by_a_dns_form(self) -> None:
        """A token pasted with its quotes by a DNS provider's form still counts."""
        self.world.add("_veil.shop.example.test", txt(f'"{TOKEN}"'))
        self.assertTrue((await self.check()).ok)

    async def test_hostile_text(self) -> None:
        """Control characters in a TXT record are escaped in the report."""
        self.world.add("_veil.shop.example.test", txt("\x1b[2Jgotcha"))
        [problem] = (await self.check()).problems
        self.assertEqual(problem.found, ("\\x1b[2Jgotcha",))
        self.assertNotIn("\x1b", problem.explanation)


class CaaTests(CheckCase):
    """A CAA record that forbids Veil's CA keeps the site pending, with the fix."""

    def setUp(self) -> None:
        super().setUp()
        self.world.add("shop.example.test", cname("edge.veil.test"))
        self.owned()

    async def test_no_caa(self) -> None:
        """Without CAA records anywhere up the tree any CA may issue."""
        report = await self.check()
        self.assertTrue(report.ok)
        self.assertEqual(sorted(self.world.asked("CAA")),
                         ["edge.veil.test", "example.test", "shop.example.test", "test"])

    async def test_parent_forbids(self) -> None:
        """A CAA set at the parent naming another CA forbids, found by climbing."""
        self.world.add("example.test", caa(0, "issue", "digicert.com"))
        report = await self.check()
        [problem] = report.problems
        self.assertEqual((problem.name, problem.type, problem.problem, problem.found),
                         ("example.test", "CAA", "caa_forbids", ('0 issue "digicert.com"',)))
        self.assertEqual(problem.expected, "Let's Encrypt (letsencrypt.org) may issue")
        self.assertEqual(problem.explanation,
                         "The CAA records at example.test allow only digicert.com to issue"
                         " certificates for shop.example.test, so Let's Encrypt"
                         " (letsencrypt.org) would refuse and Veil could not get a certificate."
                         ' Add the record example.test CAA 0 issue "letsencrypt.org", or remove'
                         " the CAA records.")

    async def test_closest_set_allows(self) -> None:
        """The closest CAA set is the relevant one: the name's own allows, the parent's is moot."""
        self.world.set("shop.example.test", cname("edge.veil.test"))
        self.world.add("edge.veil.test", caa(0, "issue", "letsencrypt.org"))
        self.world.add("example.test", caa(0, "issue", "digicert.com"))
        report = await self.check()
        self.assertTrue(report.ok)
        self.assertEqual(report.records[2].name, "shop.example.test")

    async def test_through_cname(self) -> None:
        """CAA at the CNAME's target applies to the alias (RFC 8659 §3)."""
        self.world.add("edge.veil.test", caa(0, "issue", ";"))
        [problem] = (await self.check()).problems
        self.assertEqual(problem.problem, "caa_forbids")
        self.assertIn("forbid every certificate authority to issue certificates for"
                      ' shop.example.test (0 issue ";")', problem.explanation)

    async def test_validation_methods(self) -> None:
        """A listed CA limited to methods Veil does not use is explained."""
        self.world.add("example.test", caa(0, "issue", "letsencrypt.org; validationmethods=dns-01"))
        [problem] = (await self.check()).problems
        self.assertIn("allow letsencrypt.org only with validation methods Veil does not use"
                      " (Veil uses tls-alpn-01, http-01)", problem.explanation)

    async def test_critical(self) -> None:
        """An unknown critical property forbids issuance and is named."""
        self.world.add("example.test", caa(128, "future", "x"))
        [problem] = (await self.check()).problems
        self.assertIn("carries the critical flag on a property certificate authorities do"
                      " not know (future)", problem.explanation)

    async def test_unknown_ca(self) -> None:
        """When Veil does not know its CA's CAA name, a CAA set is a note, not a failure."""
        self.world.add("example.test", caa(0, "issue", "digicert.com"))
        settings = attrs.evolve(SETTINGS, ca=caa_module.CaPolicy(True, (), (), "the CA"))
        report = await self.check(settings=settings)
        self.assertTrue(report.ok)
        [note] = report.notes
        self.assertIn("CAA records at example.test allow only digicert.com", note)
        self.assertIn("dns.caa_identifiers", note)

    async def test_internal_ca(self) -> None:
        """With the internal CA, CAA is not looked up at all."""
        self.world.add("example.test", caa(0, "issue", "digicert.com"))
        settings = attrs.evolve(SETTINGS, ca=caa_module.CaPolicy(False, name="Veil's internal"
                                                                 " certificate authority"))
        report = await self.check(settings=settings)
        self.assertTrue(report.ok)
        self.assertEqual(report.records[2].outcome, "not_checked")
        self.assertEqual(self.world.asked("CAA"), [])


class ResolverTroubleTests(TestCase):
    """Resolver time-outs and SERVFAIL make the check fail with the reason in words."""

    timeout = 30

    async def test_timeout(self) -> None:
        """A resolver that never answers: every record reports the time-out."""
        clock = Clock()
        server = dns_server_for(self, world())
        server.world.mode = "silent"
        resolver = StubResolver(NetworkWithClock(clock), (server.server,), timeout=2,
                                attempts=1)
        d = check(resolver, SETTINGS, "shop.example.test", TOKEN, NOW)
        await expire_until_fired(clock, d, 2.0, server)
        report = await d
        self.assertFalse(report.ok)
        self.assertEqual([r.problem for r in report.records], ["timeout"] * 3)
        self.assertEqual(report.records[0].explanation,
                         f"The DNS resolvers ({server.address}) did not answer in time when"
                         " Veil looked up the address (A) records of shop.example.test. This"
                         " is usually temporary and Veil will check again; if it keeps"
                         " happening, the domain's name servers may be unreachable.")
        self.assertTrue(report.summary.endswith("(and 2 more problems)"))

    async def test_servfail(self) -> None:
        """A resolver answering SERVFAIL: the check fails and points at the name servers."""
        server = dns_server_for(self, world())
        server.world.add("shop.example.test", cname("edge.veil.test"))
        server.world.servfail.add("_veil.shop.example.test")
        resolver = StubResolver(reactor, (server.server,), timeout=2, attempts=1)
        report = await check(resolver, SETTINGS, "shop.example.test", TOKEN, NOW)
        [problem] = report.problems
        self.assertEqual((problem.problem, problem.outcome), ("servfail", "servfail"))
        self.assertEqual(problem.explanation,
                         "Looking up the TXT records of _veil.shop.example.test failed:"
                         f" {server.address} answered SERVFAIL. This usually means the"
                         " domain's name servers are not answering correctly (for example a"
                         " broken delegation or a DNSSEC error); check the name servers at"
                         " your registrar.")

    async def test_cname_loop(self) -> None:
        """A CNAME loop is a problem of its own."""
        server = dns_server_for(self, world())
        server.world.add("shop.example.test", cname("loop.example.test"))
        server.world.add("loop.example.test", cname("shop.example.test"))
        resolver = StubResolver(reactor, (server.server,), timeout=2, attempts=1)
        report = await check(resolver, SETTINGS, "shop.example.test", TOKEN, NOW)
        self.assertEqual(report.records[0].problem, "cname_loop")
        self.assertIn("The CNAME records starting at shop.example.test are broken: the CNAME"
                      " chain loops back to shop.example.test.", report.records[0].explanation)


class InstructionsTests(SynchronousTestCase):
    """The records the API tells a new site's owner to create."""

    def test_cname(self) -> None:
        """A CNAME to the proxy name and the TXT token; address records for an apex."""
        dns = dns_instructions(SETTINGS, "shop.example.test", TOKEN)
        self.assertEqual(dns["records"], [
            {"type": "CNAME", "name": "shop.example.test", "value": "edge.veil.test"},
            {"type": "TXT", "name": "_veil.shop.example.test", "value": TOKEN}])
        self.assertEqual([r["type"] for r in dns["apex_records"]], ["A", "AAAA"])
        self.assertEqual(dns["missing"], [])

    def test_apex(self) -> None:
        """For an apex the address records replace the CNAME."""
        dns = dns_instructions(SETTINGS, "example.test", TOKEN, apex=True)
        self.assertEqual([(r["type"], r["value"]) for r in dns["records"]],
                         [("A", "198.51.100.7"), ("AAAA", "2001:db8::7"), ("TXT", TOKEN)])

    def test_not_configured(self) -> None:
        """Without the operator's keys only the TXT record is given, and the keys are named."""
        settings = attrs.evolve(SETTINGS, proxy_cname=None, proxy_addresses=())
        dns = dns_instructions(settings, "shop.example.test", TOKEN)
        self.assertEqual([r["type"] for r in dns["records"]], ["TXT"])
        self.assertEqual(dns["missing"], ["dns.proxy_cname", "dns.proxy_addresses"])


class OriginTests(CheckCase):
    """The origin proposed for a new site comes from its DNS before the change."""

    async def propose(self, domain: str = "shop.example.test") -> dict:
        proposal = await propose_origin(self.resolver, SETTINGS, domain)
        return proposal.to_json()

    async def test_cname(self) -> None:
        """A CNAME to a hosting platform: https to that host, http as the alternative."""
        self.world.add("shop.example.test", cname("shops.other.test"))
        self.world.add("shops.other.test", a("203.0.113.20"))
        proposal = await self.propose()
        self.assertEqual(proposal["origin"], "https://shops.other.test")
        self.assertEqual(proposal["alternatives"], ["http://shops.other.test"])
        self.assertEqual(proposal["found"], ["CNAME shops.other.test", "A 203.0.113.20"])
        self.assertIn("is an alias (CNAME) of shops.other.test", proposal["reason"])
        self.assertFalse(proposal["apex"])

    async def test_address(self) -> None:
        """Addresses: plain HTTP to the first IPv4 one, and why not HTTPS."""
        self.world.add("example.test", a("203.0.113.7"), a("203.0.113.8"),
                       aaaa("2001:db8::20"))
        proposal = await self.propose("example.test")
        self.assertEqual(proposal["origin"], "http://203.0.113.7")
        self.assertEqual(proposal["alternatives"], ["http://203.0.113.8",
                                                    "http://[2001:db8::20]",
                                                    "https://203.0.113.7"])
        self.assertIn("HTTPS to the address would fail certificate verification",
                      proposal["reason"])
        self.assertTrue(proposal["apex"])

    async def test_ipv6_only(self) -> None:
        """An IPv6-only site gets a bracketed origin."""
        self.world.add("shop.example.test", aaaa("2001:db8::20"))
        self.assertEqual((await self.propose())["origin"], "http://[2001:db8::20]")

    async def test_private(self) -> None:
        """A private address is proposed with a word that Veil must reach it."""
        self.world.add("shop.example.test", a("10.1.2.3"))
        proposal = await self.propose()
        self.assertEqual(proposal["origin"], "http://10.1.2.3")
        self.assertIn("10.1.2.3 is a private address", proposal["reason"])

    async def test_loopback(self) -> None:
        """A loopback address is never proposed: Veil would proxy to itself."""
        self.world.add("shop.example.test", a("127.0.0.1"))
        proposal = await self.propose()
        self.assertIsNone(proposal["origin"])
        self.assertIn("127.0.0.1, a loopback address, which cannot be an origin",
                      proposal["reason"])

    async def test_already_veil(self) -> None:
        """A domain that already points at Veil gets no proposal."""
        self.world.add("shop.example.test", cname("edge.veil.test"))
        proposal = await self.propose()
        self.assertIsNone(proposal["origin"])
        self.assertIn("already points at Veil", proposal["reason"])

    async def test_nxdomain(self) -> None:
        """A domain that does not exist yet gets no proposal."""
        proposal = await self.propose()
        self.assertIsNone(proposal["origin"])
        self.assertIn("does not exist in DNS yet", proposal["reason"])

    async def test_failure(self) -> None:
        """When the lookups fail the reason says so."""
        self.world.mode = "servfail"
        proposal = await self.propose()
        self.assertIsNone(proposal["origin"])
        self.assertIn("answered SERVFAIL", proposal["reason"])
        self.assertTrue(proposal["reason"].endswith("Enter the origin yourself."))

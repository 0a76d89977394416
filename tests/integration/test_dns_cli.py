"""Tests for C{veil sites verify} and the DNS instructions of C{veil sites add}."""

from __future__ import annotations

from tests.integration.test_cli import CliCase
from tests.integration.test_dns_check import world
from tests.support.dns_server import cname, dns_server_for, txt


class SitesAddTextTests(CliCase):
    """A pending site is told which records to create, from the operator's dns.* keys."""

    async def test_instructions(self) -> None:
        """The CNAME to dns.proxy_cname, the apex alternative and the TXT token are printed."""
        self.environ.update(VEIL_DNS_PROXY_CNAME="edge.veil.test",
                            VEIL_DNS_PROXY_ADDRESSES="198.51.100.7,2001:db8::7")
        result = await self.ok("sites", "add", "shop.example.test", "--origin",
                               "http://10.0.0.5")
        [(token,)] = self.rows("SELECT dns_token FROM sites")
        self.assertIn("  shop.example.test CNAME edge.veil.test\n", result.out)
        self.assertIn(f"  _veil.shop.example.test TXT {token}\n", result.out)
        self.assertIn("(for a zone apex, which cannot have a CNAME: A 198.51.100.7,"
                      " AAAA 2001:db8::7)", result.out)
        self.assertIn("`veil sites verify shop.example.test` checks at once", result.out)
        self.assertNotIn("not configurable", result.out)
        self.assertNotIn("nothing for sites to point at", result.out)

    async def test_not_configured(self) -> None:
        """Without dns.proxy_cname the operator is told which keys to set."""
        result = await self.ok("sites", "add", "shop.example.test", "--origin",
                               "http://10.0.0.5")
        self.assertIn("This Veil has nothing for sites to point at yet: set dns.proxy_cname"
                      " and dns.proxy_addresses and restart Veil", result.out)


class SitesVerifyTests(CliCase):
    """C{veil sites verify DOMAIN} runs Check now and prints the report in plain words."""

    def setUp(self) -> None:
        super().setUp()
        self.server = dns_server_for(self, world())
        self.environ.update(VEIL_DNS_RESOLVERS=self.server.address,
                            VEIL_DNS_PROXY_CNAME="edge.veil.test")

    async def test_becomes_active(self) -> None:
        """DNS pointing at Veil: the site becomes active and the command exits 0."""
        await self.ok("sites", "add", "shop.example.test", "--origin", "http://10.0.0.5")
        [(token,)] = self.rows("SELECT dns_token FROM sites")
        self.server.world.add("shop.example.test", cname("edge.veil.test"))
        self.server.world.add("_veil.shop.example.test", txt(token))
        result = await self.ok("sites", "verify", "shop.example.test")
        self.assertIn(f"DNS check of shop.example.test (resolvers {self.server.address}):",
                      result.out)
        self.assertIn("  ok   CNAME  shop.example.test\n         expected: edge.veil.test\n"
                      "         found:    CNAME edge.veil.test", result.out)
        self.assertIn("shop.example.test is verified and now active", result.out)
        [(status, actor)] = self.rows(
            "SELECT s.status, a.actor_user_id FROM sites s JOIN audit_log a"
            " ON a.target_id = s.id::text AND a.action = 'site.dns_verified'")
        self.assertEqual((status, actor), ("active", self.operator_id()))

    async def test_still_pending(self) -> None:
        """DNS not ready: each problem is explained and the command exits 1."""
        await self.ok("sites", "add", "shop.example.test", "--origin", "http://10.0.0.5")
        self.server.world.add("shop.example.test", cname("old.other.test"))
        result = await self.veil("sites", "verify", "shop.example.test")
        self.assertEqual(result.status, 1)
        self.assertIn("  FAIL CNAME  shop.example.test", result.out)
        self.assertIn("* shop.example.test points at old.other.test, at 203.0.113.9, not at"
                      " Veil.", result.out)
        self.assertIn("* There is no TXT record at _veil.shop.example.test.", result.out)
        self.assertIn("shop.example.test stays pending", result.out)
        self.assertEqual(self.rows("SELECT status FROM sites"), [("pending",)])

    async def test_too_soon(self) -> None:
        """Running it again at once is refused with the wait, as the dashboard's button is."""
        await self.ok("sites", "add", "shop.example.test", "--origin", "http://10.0.0.5")
        await self.veil("sites", "verify", "shop.example.test")
        result = await self.veil("sites", "verify", "shop.example.test")
        self.assertEqual(result.status, 1)
        self.assertRegex(result.err, r"^veil: shop\.example\.test was checked moments ago;"
                                     r" check again in \d+ s\n$")

    async def test_unknown(self) -> None:
        """An unknown domain is an error naming it."""
        result = await self.veil("sites", "verify", "nope.example.test")
        self.assertEqual((result.status, result.err), (1, "veil: no site nope.example.test\n"))

"""
L{veil.proxy.origins.OriginPolicy}: which addresses a site's origin may be,
as saved and as connected to.
"""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from veil.config import load
from veil.proxy.origins import OriginPolicy


def teredo(client: str) -> str:
    """A Teredo address whose (obfuscated) client is C{client}."""
    server = int(ipaddress.IPv4Address("192.0.2.1"))
    value = (0x20010000 << 96) | (server << 64) | (int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF)
    return str(ipaddress.IPv6Address(value))


ALWAYS = [
    "169.254.169.254", "169.254.170.2", "fe80::1", "fd00:ec2::254", "100.100.100.200",
    "168.63.129.16", "192.0.0.192", "0.0.0.0", "0.1.2.3", "::", "224.0.0.1", "ff02::1",
    "255.255.255.255", "240.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::a9fe:a9fe", "2002:a9fe:a9fe::1", "::a9fe:a9fe", teredo("169.254.169.254"),
    "2001:db8::1%eth0",
]
PRIVATE = [
    "127.0.0.1", "127.1.2.3", "10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1",
    "100.64.0.1", "198.18.0.1", "fd12::1", "::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1",
    "64:ff9b::a00:1",
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:2800:220:1::1", "::ffff:8.8.8.8", "172.32.0.1",
          "2001:4860:4860::8888"]


class AddressTests(SynchronousTestCase):
    """Addresses are refused always, unless private origins are allowed, or never."""

    def test_always_refused(self) -> None:
        """Link-local, metadata, unspecified, multicast, reserved and zoned addresses: always."""
        for allow in (False, True):
            policy = OriginPolicy(allow_private=allow)
            for address in ALWAYS:
                self.assertIsNotNone(policy.refusal(address, 80), (address, allow))
        self.assertIn("link-local", OriginPolicy(True).refusal("169.254.169.254", 80))
        self.assertIn("inside an IPv6", OriginPolicy(True).refusal("::ffff:169.254.169.254", 80))

    def test_private(self) -> None:
        """Loopback and private ranges (also inside IPv6): refused unless allowed."""
        for address in PRIVATE:
            reason = OriginPolicy(allow_private=False).refusal(address, 80)
            self.assertIsNotNone(reason, address)
            self.assertIn("proxy.allow_private_origins", reason)
            self.assertIsNone(OriginPolicy(allow_private=True).refusal(address, 80), address)

    def test_public(self) -> None:
        """Public addresses are fine."""
        for address in PUBLIC:
            self.assertIsNone(OriginPolicy(allow_private=False).refusal(address, 443), address)

    def test_not_an_address(self) -> None:
        """The guard is given addresses; anything else is refused."""
        self.assertIsNotNone(OriginPolicy(True).refusal("example.com", 80))


class OwnListenerTests(SynchronousTestCase):
    """Veil's own listening addresses are never an origin."""

    def test_exact(self) -> None:
        """A listener on 127.0.0.1:8443 refuses that address and port only."""
        policy = OriginPolicy(allow_private=True)
        policy.add_listener("127.0.0.1", 8443)
        self.assertIn("own listening", policy.refusal("127.0.0.1", 8443))
        self.assertIn("own listening", policy.refusal("::ffff:127.0.0.1", 8443))
        self.assertIsNone(policy.refusal("127.0.0.1", 8444))
        self.assertIsNone(policy.refusal("127.0.0.2", 8443))

    def test_every_address(self) -> None:
        """
        A listener on 0.0.0.0:443 refuses any address of this machine on
        443 (loopback or not), and not another machine's.
        """
        policy = OriginPolicy(allow_private=True)
        policy.add_listener("0.0.0.0", 443)
        self.assertIsNotNone(policy.refusal("127.0.0.5", 443))
        self.assertIsNone(policy.refusal("192.0.2.1", 443))
        self.assertIsNone(policy.refusal("127.0.0.5", 444))

    def test_port_zero_ignored(self) -> None:
        """A configured port 0 (chosen at bind time) is not a listener until bound."""
        policy = OriginPolicy(allow_private=True)
        policy.add_listener("127.0.0.1", 0)
        self.assertEqual(policy.listeners, set())


class UpstreamTests(SynchronousTestCase):
    """An origin as written in a site: names by what they plainly are, addresses as above."""

    def test_names(self) -> None:
        """Metadata service names are refused; localhost unless private is allowed; others pass."""
        strict, lenient = OriginPolicy(False), OriginPolicy(True)
        for name in ("metadata.google.internal", "METADATA.google.internal.", "instance-data"):
            self.assertIsNotNone(lenient.upstream_refusal(name, 80), name)
        for name in ("localhost", "api.localhost"):
            self.assertIsNotNone(strict.upstream_refusal(name, 80), name)
            self.assertIsNone(lenient.upstream_refusal(name, 80), name)
        self.assertIsNone(strict.upstream_refusal("shop.example.com", 443))

    def test_addresses(self) -> None:
        """Addresses, bracketed or not, get the address rules."""
        strict = OriginPolicy(False)
        self.assertIsNotNone(strict.upstream_refusal("169.254.169.254", 80))
        self.assertIsNotNone(strict.upstream_refusal("[fe80::1]", 80))
        self.assertIsNotNone(strict.upstream_refusal("10.0.0.5", 8080))
        self.assertIsNone(strict.upstream_refusal("[2001:4860:4860::8888]", 443))


class FromConfigTests(SynchronousTestCase):
    """The policy of a configuration."""

    def test_embedded_default(self) -> None:
        """The embedded default (loopback only) allows private origins and knows its ports."""
        policy = OriginPolicy.from_config(load(None, {}))
        self.assertTrue(policy.allow_private)
        self.assertEqual({port for _, port in policy.listeners}, {8443, 8080, 8081})

    def test_public_listeners(self) -> None:
        """Listening beyond loopback, private origins are refused unless the operator allows them."""
        public = {"VEIL_EDGE_ADDRESS": "0.0.0.0", "VEIL_HTTP_ADDRESS": "0.0.0.0"}
        self.assertFalse(OriginPolicy.from_config(load(None, public)).allow_private)
        allowed = dict(public, VEIL_PROXY_ALLOW_PRIVATE_ORIGINS="true")
        self.assertTrue(OriginPolicy.from_config(load(None, allowed)).allow_private)
        refused = {"VEIL_PROXY_ALLOW_PRIVATE_ORIGINS": "false"}
        self.assertFalse(OriginPolicy.from_config(load(None, refused)).allow_private)

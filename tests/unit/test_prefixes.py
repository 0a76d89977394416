"""Tests for L{veil.waf.prefixes}."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from veil.waf.prefixes import PrefixMap, format_network, parse_address, parse_network

PROPERTY = settings(max_examples=200, derandomize=True, deadline=None, database=None)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

GARBAGE: list[object] = [
    "", " ", "1.2.3", "01.2.3.4", "0x7f.0.0.1", "1.2.3.4 ", " 1.2.3.4", "256.0.0.1",
    "1.2.3.4/32", "10.0.0.0/8", "1.2.3.4\x00", "::g", ":::", "1::2::3", "example.com",
    "%", "::1%", "\u0661.2.3.4", None, b"1.2.3.4", 42, 1.5, ["1.2.3.4"], object(),
]


class PrefixMapTests(SynchronousTestCase):
    """PrefixMap finds the longest network containing an address."""

    def test_ipv4_exact(self) -> None:
        """An address added bare or as /32 matches only that address."""
        m: PrefixMap[str] = PrefixMap()
        m.add("192.0.2.7", "bare")
        m.add("192.0.2.9/32", "slash")
        self.assertEqual(m.lookup("192.0.2.7"), "bare")
        self.assertEqual(m.lookup("192.0.2.9"), "slash")
        self.assertIsNone(m.lookup("192.0.2.8"))
        self.assertIsNone(m.lookup("192.0.2.6"))
        self.assertEqual(len(m), 2)

    def test_ipv4_cidr(self) -> None:
        """A CIDR network matches every address in it and none outside it."""
        m = PrefixMap.from_items([("198.51.100.0/22", "net")])
        self.assertEqual(m.lookup("198.51.100.0"), "net")
        self.assertEqual(m.lookup("198.51.103.255"), "net")
        self.assertIsNone(m.lookup("198.51.104.0"))
        self.assertIsNone(m.lookup("198.51.99.255"))

    def test_ipv6_exact_and_cidr(self) -> None:
        """IPv6 addresses and networks match in any textual form of the address."""
        m = PrefixMap.from_items([("2001:db8::1", "host"), ("2001:db8:1::/48", "net")])
        self.assertEqual(m.lookup("2001:db8::1"), "host")
        self.assertEqual(m.lookup("2001:0db8:0000:0000:0000:0000:0000:0001"), "host")
        self.assertIsNone(m.lookup("2001:db8::2"))
        self.assertEqual(m.lookup("2001:db8:1:ffff:ffff:ffff:ffff:ffff"), "net")
        self.assertEqual(m.lookup("2001:DB8:1::abcd"), "net")
        self.assertIsNone(m.lookup("2001:db8:2::"))

    def test_longest_prefix_wins(self) -> None:
        """With overlapping networks, the most specific one containing the address wins."""
        m = PrefixMap.from_items([
            ("10.0.0.0/8", "/8"), ("10.1.0.0/16", "/16"), ("10.1.2.0/24", "/24"),
            ("10.1.2.3/32", "/32"), ("10.1.2.128/25", "/25"),
        ])
        self.assertEqual(m.lookup("10.1.2.3"), "/32")
        self.assertEqual(m.lookup("10.1.2.4"), "/24")
        self.assertEqual(m.lookup("10.1.2.200"), "/25")
        self.assertEqual(m.lookup("10.1.3.1"), "/16")
        self.assertEqual(m.lookup("10.2.0.0"), "/8")
        self.assertIsNone(m.lookup("11.0.0.0"))

    def test_lookup_all_and_matches(self) -> None:
        """lookup_all and matches list every containing network, longest first."""
        m = PrefixMap.from_items([
            ("10.0.0.0/8", "a"), ("10.1.2.0/24", "b"), ("10.1.2.3", "c"), ("10.9.0.0/16", "x"),
        ])
        self.assertEqual(m.lookup_all("10.1.2.3"), ["c", "b", "a"])
        self.assertEqual(m.matches("10.1.2.3"), [(32, "c"), (24, "b"), (8, "a")])
        self.assertEqual(m.lookup_all("10.1.2.4"), ["b", "a"])
        self.assertEqual(m.lookup_all("11.0.0.1"), [])
        self.assertEqual(m.lookup_all("garbage"), [])
        self.assertEqual(m.matches(None), [])

    def test_default_routes(self) -> None:
        """/0 matches every address of its own family, and only that family."""
        m = PrefixMap.from_items([("0.0.0.0/0", "v4"), ("::/0", "v6")])
        self.assertEqual(m.lookup("0.0.0.0"), "v4")
        self.assertEqual(m.lookup("255.255.255.255"), "v4")
        self.assertEqual(m.lookup("::"), "v6")
        self.assertEqual(m.lookup("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), "v6")
        only4 = PrefixMap.from_items([("0.0.0.0/0", "v4")])
        self.assertIsNone(only4.lookup("2001:db8::1"))
        only6 = PrefixMap.from_items([("::/0", "v6")])
        self.assertIsNone(only6.lookup("192.0.2.1"))

    def test_ipv6_default_route_does_not_cover_mapped(self) -> None:
        """IPv4-mapped addresses are IPv4, so ::/0 does not match them."""
        m = PrefixMap.from_items([("::/0", "v6")])
        self.assertIsNone(m.lookup("::ffff:192.0.2.1"))
        self.assertEqual(m.lookup("::192.0.2.1"), "v6")  # IPv4-compatible is plain IPv6

    def test_ipv4_mapped_lookup(self) -> None:
        """::ffff:a.b.c.d, in any spelling, is looked up as a.b.c.d."""
        m = PrefixMap.from_items([("192.0.2.0/24", "net"), ("203.0.113.5", "host")])
        self.assertEqual(m.lookup("::ffff:192.0.2.77"), "net")
        self.assertEqual(m.lookup("::FFFF:c000:024d"), "net")
        self.assertEqual(m.lookup("0:0:0:0:0:ffff:203.0.113.5"), "host")
        self.assertIsNone(m.lookup("::ffff:203.0.113.6"))
        self.assertEqual(m.lookup_all("::ffff:203.0.113.5"), ["host"])

    def test_ipv4_mapped_network(self) -> None:
        """An IPv6 network inside ::ffff:0:0/96 is stored as the IPv4 network it maps."""
        m = PrefixMap.from_items([("::ffff:10.0.0.0/104", "mapped"), ("::ffff:192.0.2.1", "one")])
        self.assertEqual(m.lookup("10.200.0.1"), "mapped")
        self.assertEqual(m.lookup("::ffff:10.0.0.1"), "mapped")
        self.assertEqual(m.lookup("192.0.2.1"), "one")
        self.assertIn("10.0.0.0/8", m)
        self.assertEqual(m.prefix_lengths(4), (32, 8))
        self.assertEqual(m.prefix_lengths(6), ())
        self.assertEqual(m.remove("10.0.0.0/8"), "mapped")
        self.assertEqual(len(m), 1)

    def test_remove(self) -> None:
        """Removing a network exposes the shorter networks under it; absent ones raise KeyError."""
        m = PrefixMap.from_items([("10.0.0.0/8", "/8"), ("10.1.0.0/16", "/16"),
                                  ("2001:db8::/32", "v6")])
        self.assertEqual(m.remove("10.1.0.0/16"), "/16")
        self.assertEqual(m.lookup("10.1.2.3"), "/8")
        self.assertEqual(m.prefix_lengths(4), (8,))
        self.assertEqual(len(m), 2)
        self.assertRaises(KeyError, m.remove, "10.1.0.0/16")
        self.assertRaises(KeyError, m.remove, "10.0.0.0/9")
        self.assertEqual(m.remove(ipaddress.ip_network("2001:db8::/32")), "v6")
        self.assertIsNone(m.lookup("2001:db8::1"))
        m.remove("10.0.0.0/8")
        self.assertEqual(len(m), 0)
        self.assertFalse(m)
        self.assertIsNone(m.lookup("10.1.2.3"))

    def test_replace(self) -> None:
        """Adding a network again replaces its value without growing the map."""
        m = PrefixMap.from_items([("10.0.0.0/8", "old"), ("10.0.0.0/8", "new")])
        self.assertEqual(len(m), 1)
        self.assertEqual(m.lookup("10.9.9.9"), "new")
        self.assertEqual(m.get("10.0.0.0/8"), "new")
        self.assertIsNone(m.get("10.0.0.0/9"))

    def test_items(self) -> None:
        """items lists every network in canonical text with its value."""
        m = PrefixMap.from_items([("10.0.0.0/8", 1), ("192.0.2.1", 2), ("2001:DB8::/32", 3),
                                  ("::ffff:198.51.100.0/120", 4)])
        self.assertEqual(sorted(m.items()), sorted([
            ("10.0.0.0/8", 1), ("192.0.2.1/32", 2), ("2001:db8::/32", 3),
            ("198.51.100.0/24", 4)]))

    def test_zone_ignored(self) -> None:
        """An IPv6 zone suffix does not stop a lookup."""
        m = PrefixMap.from_items([("fe80::/10", "link-local")])
        self.assertEqual(m.lookup("fe80::1%eth0"), "link-local")

    def test_garbage_lookups(self) -> None:
        """Anything that is not an address finds nothing (or the default) and never raises."""
        m = PrefixMap.from_items([("0.0.0.0/0", "v4"), ("::/0", "v6")])
        for junk in GARBAGE:
            self.assertIsNone(m.lookup(junk), junk)
            self.assertEqual(m.lookup(junk, "dflt"), "dflt", junk)
            self.assertEqual(m.lookup_all(junk), [], junk)
            self.assertIsNone(parse_address(junk), junk)
        self.assertNotIn("not a network", m)
        self.assertNotIn(None, m)

    def test_bad_networks(self) -> None:
        """add refuses host bits, non-networks and None values with ValueError."""
        m: PrefixMap[str] = PrefixMap()
        for bad in ["10.1.2.3/8", "2001:db8::1/32", "garbage", "10.0.0.0/33", "", None]:
            self.assertRaises(ValueError, m.add, bad, "x")
        self.assertRaises(ValueError, m.add, "10.0.0.0/8", None)
        self.assertEqual(len(m), 0)

    def test_parse_helpers(self) -> None:
        """parse_address and parse_network agree, and format_network is canonical."""
        self.assertEqual(parse_address("1.2.3.4"), (4, 0x01020304))
        self.assertEqual(parse_address("::ffff:1.2.3.4"), (4, 0x01020304))
        self.assertEqual(parse_address("::1"), (6, 1))
        self.assertEqual(parse_network("1.2.3.0/24"), (4, 24, 0x01020300))
        self.assertEqual(parse_network("::ffff:1.2.3.0/120"), (4, 24, 0x01020300))
        self.assertEqual(parse_network("::/0"), (6, 0, 0))
        self.assertEqual(format_network(*parse_network("2001:0db8::/32")), "2001:db8::/32")
        m = PrefixMap.from_items([("1.2.3.0/24", "v")])
        self.assertEqual(m.lookup_address(parse_address("1.2.3.9")), "v")
        self.assertEqual(m.matches_address(parse_address("1.2.3.9")), [(24, "v")])


# -- the property: PrefixMap agrees with a brute-force ipaddress reference -------

_BASES = {
    4: [0x0A010203, 0xC0000201, 0xFFFFFFFF, 0],
    6: [0x20010DB8 << 96 | 1, 0xFE80 << 112, (1 << 128) - 1, 0],
}
_BITS = {4: 32, 6: 128}


@st.composite
def network_entries(draw: st.DrawFn) -> tuple[str, Network]:
    """A network to add (as text, maybe IPv4-mapped) and the network it means."""
    version = draw(st.sampled_from([4, 6]))
    bits = _BITS[version]
    base = draw(st.sampled_from(_BASES[version]) | st.integers(0, (1 << bits) - 1))
    prefixlen = draw(st.sampled_from([0, bits, bits, bits - 8]) | st.integers(0, bits))
    value = (base >> (bits - prefixlen)) << (bits - prefixlen) if prefixlen else 0
    network = ipaddress.ip_network((value, prefixlen))
    if version == 4 and draw(st.booleans()):
        text = f"::ffff:{network.network_address}/{prefixlen + 96}"
    else:
        text = str(network)
    return text, network


@st.composite
def addresses(draw: st.DrawFn, near: list[Network]) -> str:
    """An address: random, or near one of the networks (often inside it)."""
    version = draw(st.sampled_from([4, 6]))
    bits = _BITS[version]
    candidates = [n for n in near if n.version == version]
    if candidates and draw(st.booleans()):
        base = int(draw(st.sampled_from(candidates)).network_address)
    else:
        base = draw(st.sampled_from(_BASES[version]) | st.integers(0, (1 << bits) - 1))
    low = draw(st.integers(0, bits))
    address = base ^ draw(st.integers(0, (1 << low) - 1))
    return str(ipaddress.ip_address(address) if version == 6 else ipaddress.IPv4Address(address))


def reference(entries: dict[Network, int], ip: str) -> list[int]:
    """Every value whose network contains C{ip}, longest first, the slow way."""
    address = ipaddress.ip_address(ip)
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    found = [(net.prefixlen, value) for net, value in entries.items()
             if net.version == address.version and address in net]
    return [value for _len, value in sorted(found, key=lambda pair: pair[0], reverse=True)]


class PrefixMapPropertyTests(SynchronousTestCase):
    """PrefixMap agrees with a brute-force reference built on ipaddress."""

    @PROPERTY
    @given(st.data())
    def test_matches_reference(self, data: st.DataObject) -> None:
        """After random adds, replacements and removals, every lookup matches the reference."""
        added = data.draw(st.lists(network_entries(), max_size=40))
        m: PrefixMap[int] = PrefixMap()
        expected: dict[Network, int] = {}
        for value, (text, network) in enumerate(added):
            m.add(text, value)
            expected[network] = value
        networks = list(expected)
        if networks:
            for network in data.draw(st.lists(st.sampled_from(networks), unique=True,
                                              max_size=len(networks) // 2)):
                self.assertEqual(m.remove(str(network)), expected.pop(network))
        self.assertEqual(len(m), len(expected))
        for ip in data.draw(st.lists(addresses(networks), min_size=1, max_size=30)):
            want = reference(expected, ip)
            self.assertEqual(m.lookup_all(ip), want, ip)
            self.assertEqual(m.lookup(ip), want[0] if want else None, ip)
            if ipaddress.ip_address(ip).version == 4:
                self.assertEqual(m.lookup_all(f"::ffff:{ip}"), want, ip)

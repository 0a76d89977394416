"""
Longest-prefix match over IPv4 and IPv6 networks, for the per-request hot path.

A L{PrefixMap} maps networks (exact addresses are /32 or /128 networks) to
values and answers "which entry is the most specific network containing this
client address?".

How it works: for each address family, the map keeps one dictionary per
prefix length that is present, keyed by the network's address as an integer
(host bits zero).  A lookup turns the client address into an integer once,
then, for each present prefix length from the longest to the shortest, masks
the integer and probes that length's dictionary; the first hit is the answer.

Cost:
  - C{lookup}: one C{inet_pton} and one C{int.from_bytes}, then at most
    M{L} dictionary probes, where M{L} is the number of I{distinct} prefix
    lengths present in the address's family (at most 33 for IPv4, 129 for
    IPv6; a few in practice).  It does not depend on the number of entries,
    and it creates no L{ipaddress} objects.
  - C{lookup_all} / C{matches}: the same M{L} probes.
  - C{add} / C{remove}: one parse with L{ipaddress} and one dictionary
    update; when a prefix length appears or disappears, the per-family list
    of lengths (at most 129 items) is rebuilt.

Addresses are parsed strictly with C{inet_pton}: C{"1.2.3"}, C{"01.2.3.4"}
or C{"0x7f.1"} are not addresses, whatever C{inet_aton} would say.  A
lookup of anything that is not an address (garbage, C{None}, bytes) finds
nothing and never raises.

IPv4-mapped IPv6 addresses (C{::ffff:a.b.c.d}) are IPv4: C{::ffff:1.2.3.4}
is looked up as C{1.2.3.4}, and an IPv6 network inside C{::ffff:0:0/96}
(prefix length 96 or more) is stored as the IPv4 network it maps to
(C{::ffff:10.0.0.0/104} is C{10.0.0.0/8}).  A wider IPv6 network such as
C{::/0} is an IPv6 network only and does not match IPv4 clients.  An IPv6
zone (C{fe80::1%eth0}) is ignored.

The map is not thread-safe: use it from the reactor thread, or build a new
one elsewhere and swap it in whole.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from socket import AF_INET, AF_INET6, inet_pton
from typing import Generic, TypeVar

V = TypeVar("V")

#: A parsed address: (IP version, address as an integer).  IPv4-mapped IPv6
#: addresses are already version 4.
Address = tuple[int, int]

#: A parsed network: (IP version, prefix length, network as an integer), as
#: L{parse_network} returns it.
ParsedNetwork = tuple[int, int, int]

#: What L{PrefixMap.add} and friends accept as a network.
NetworkLike = (str | ipaddress.IPv4Network | ipaddress.IPv6Network
               | ipaddress.IPv4Address | ipaddress.IPv6Address)

_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_BITS = {4: 32, 6: 128}
_ALL = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
_from_bytes = int.from_bytes  # big-endian by default (Python 3.11+)


def _mask(version: int, prefixlen: int) -> int:
    bits = _BITS[version]
    return _ALL[version] ^ ((1 << (bits - prefixlen)) - 1)


def parse_address(ip: object) -> Address | None:
    """
    Parse a client address string into an L{Address}, or L{None} if it is
    not an IPv4 or IPv6 address.  Never raises.
    """
    try:
        if ":" in ip:  # type: ignore[operator]
            if "%" in ip:  # type: ignore[operator]
                ip, _, zone = ip.partition("%")  # type: ignore[attr-defined]
                if not zone:
                    return None
            packed = inet_pton(AF_INET6, ip)  # type: ignore[arg-type]
            if packed.startswith(_MAPPED_PREFIX):
                return (4, _from_bytes(packed[12:]))
            return (6, _from_bytes(packed))
        return (4, _from_bytes(inet_pton(AF_INET, ip)))  # type: ignore[arg-type]
    except (OSError, TypeError, ValueError):
        return None


def parse_network(network: NetworkLike) -> ParsedNetwork:
    """
    Parse a network into C{(version, prefix length, network as an integer)},
    IPv4-mapped IPv6 networks as IPv4.

    @raise ValueError: if C{network} is not a network, or has host bits set
        (C{10.1.2.3/8}).
    """
    if isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        parsed = network
    else:
        try:
            parsed = ipaddress.ip_network(network if isinstance(network, str) else str(network),
                                          strict=True)
        except TypeError as e:
            raise ValueError(f"not a network: {network!r}") from e
    version, prefixlen, value = parsed.version, parsed.prefixlen, int(parsed.network_address)
    if version == 6 and prefixlen >= 96 and (value >> 32) == 0xFFFF:
        return (4, prefixlen - 96, value & 0xFFFFFFFF)
    return (version, prefixlen, value)


def format_network(version: int, prefixlen: int, value: int) -> str:
    """The canonical text of a parsed network, always with its prefix length."""
    if version == 4:
        return f"{ipaddress.IPv4Address(value)}/{prefixlen}"
    return f"{ipaddress.IPv6Address(value)}/{prefixlen}"


class PrefixMap(Generic[V]):
    """
    Networks (IPv4 and IPv6) mapped to values, with longest-prefix lookups.

    Values may not be L{None}, which is what a lookup that finds nothing
    returns.  Adding a network that is already present replaces its value.
    """

    __slots__ = ("_lengths", "_levels4", "_levels6", "_size", "_tables")

    def __init__(self) -> None:
        # version -> {prefix length -> {network int -> value}}
        self._tables: dict[int, dict[int, dict[int, V]]] = {4: {}, 6: {}}
        # ((mask, table), ...) per family, longest prefix first: the hot path
        self._levels4: tuple[tuple[int, dict[int, V]], ...] = ()
        self._levels6: tuple[tuple[int, dict[int, V]], ...] = ()
        # version -> (prefix length, ...) in the same order as the levels
        self._lengths: dict[int, tuple[int, ...]] = {4: (), 6: ()}
        self._size = 0

    @classmethod
    def from_items(cls, items: Iterable[tuple[NetworkLike, V]]) -> PrefixMap[V]:
        """A map of C{(network, value)} pairs; a later duplicate replaces an earlier one."""
        made: PrefixMap[V] = cls()
        for network, value in items:
            made.add(network, value)
        return made

    # -- changes ---------------------------------------------------------------

    def add(self, network: NetworkLike, value: V) -> None:
        """
        Map C{network} to C{value}, replacing any value it had.

        @raise ValueError: if C{network} is not a network with zero host
            bits, or C{value} is L{None}.
        """
        self.add_parsed(parse_network(network), value)

    def add_parsed(self, network: ParsedNetwork, value: V) -> None:
        """L{add} for a network already parsed by L{parse_network}."""
        if value is None:
            raise ValueError("a PrefixMap value may not be None")
        version, prefixlen, key = network
        tables = self._tables[version]
        table = tables.get(prefixlen)
        if table is None:
            table = tables[prefixlen] = {}
            self._relevel(version)
        if key not in table:
            self._size += 1
        table[key] = value

    def remove(self, network: NetworkLike) -> V:
        """
        Remove C{network} (exactly that network, not what it contains) and
        return its value.

        @raise KeyError: if it is not in the map.
        @raise ValueError: if C{network} is not a network with zero host bits.
        """
        try:
            return self.remove_parsed(parse_network(network))
        except KeyError:
            raise KeyError(network) from None

    def remove_parsed(self, network: ParsedNetwork) -> V:
        """L{remove} for a network already parsed by L{parse_network}."""
        version, prefixlen, key = network
        tables = self._tables[version]
        table = tables.get(prefixlen)
        if table is None or key not in table:
            raise KeyError(network)
        value = table.pop(key)
        self._size -= 1
        if not table:
            del tables[prefixlen]
            self._relevel(version)
        return value

    def _relevel(self, version: int) -> None:
        tables = self._tables[version]
        lengths = tuple(sorted(tables, reverse=True))
        levels = tuple((_mask(version, prefixlen), tables[prefixlen]) for prefixlen in lengths)
        self._lengths[version] = lengths
        if version == 4:
            self._levels4 = levels
        else:
            self._levels6 = levels

    # -- exact access ----------------------------------------------------------

    def get(self, network: NetworkLike, default: V | None = None) -> V | None:
        """The value of exactly C{network} (no prefix matching), or C{default}."""
        return self.get_parsed(parse_network(network), default)

    def get_parsed(self, network: ParsedNetwork, default: V | None = None) -> V | None:
        """L{get} for a network already parsed by L{parse_network}."""
        version, prefixlen, key = network
        table = self._tables[version].get(prefixlen)
        if table is None:
            return default
        return table.get(key, default)

    def __contains__(self, network: object) -> bool:
        try:
            version, prefixlen, key = parse_network(network)  # type: ignore[arg-type]
        except ValueError:
            return False
        table = self._tables[version].get(prefixlen)
        return table is not None and key in table

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def items(self) -> Iterator[tuple[str, V]]:
        """Every C{(network, value)}, networks in canonical text, longest prefixes first."""
        for version in (4, 6):
            tables = self._tables[version]
            for prefixlen in self._lengths[version]:
                for key, value in list(tables[prefixlen].items()):
                    yield format_network(version, prefixlen, key), value

    def prefix_lengths(self, version: int) -> tuple[int, ...]:
        """The distinct prefix lengths present for IP C{version}, longest first."""
        return self._lengths[version]

    # -- lookups (hot path) ----------------------------------------------------

    def lookup(self, ip: object, default: V | None = None) -> V | None:
        """
        The value of the longest network containing C{ip} (an address
        string), or C{default} if none does or C{ip} is not an address.
        """
        # parse_address, inlined: this runs for every request.
        try:
            if ":" in ip:  # type: ignore[operator]
                if "%" in ip:  # type: ignore[operator]
                    ip, _, zone = ip.partition("%")  # type: ignore[attr-defined]
                    if not zone:
                        return default
                packed = inet_pton(AF_INET6, ip)  # type: ignore[arg-type]
                if packed.startswith(_MAPPED_PREFIX):
                    levels = self._levels4
                    addr = _from_bytes(packed[12:])
                else:
                    levels = self._levels6
                    addr = _from_bytes(packed)
            else:
                levels = self._levels4
                if not levels:
                    return default
                addr = _from_bytes(inet_pton(AF_INET, ip))  # type: ignore[arg-type]
        except (OSError, TypeError, ValueError):
            return default
        for mask, table in levels:
            value = table.get(addr & mask)
            if value is not None:
                return value
        return default

    def lookup_address(self, address: Address, default: V | None = None) -> V | None:
        """L{lookup} for an address already parsed by L{parse_address}."""
        version, addr = address
        for mask, table in (self._levels4 if version == 4 else self._levels6):
            value = table.get(addr & mask)
            if value is not None:
                return value
        return default

    def matches_address(self, address: Address) -> list[tuple[int, V]]:
        """
        Every C{(prefix length, value)} whose network contains the parsed
        C{address}, longest prefix first.
        """
        version, addr = address
        found: list[tuple[int, V]] = []
        if version == 4:
            levels, lengths = self._levels4, self._lengths[4]
        else:
            levels, lengths = self._levels6, self._lengths[6]
        for index, (mask, table) in enumerate(levels):
            value = table.get(addr & mask)
            if value is not None:
                found.append((lengths[index], value))
        return found

    def matches(self, ip: object) -> list[tuple[int, V]]:
        """L{matches_address} for an address string; C{[]} if it is not one."""
        address = parse_address(ip)
        return [] if address is None else self.matches_address(address)

    def lookup_all(self, ip: object) -> list[V]:
        """The values of every network containing C{ip}, longest prefix first."""
        return [value for _prefixlen, value in self.matches(ip)]

    def __repr__(self) -> str:
        return f"<PrefixMap {self._size} networks>"

"""
Which addresses a site's origin may be.

Site owners will set origins themselves, so an origin must not turn Veil
into a way into places its users cannot reach: the cloud's metadata
service, the machine's own link-local services, Veil's own ports (a
request loop), or, unless the operator allows it, the private network
behind Veil.  One policy, L{OriginPolicy}, is applied twice:

  - when a site is saved (L{veil.store.admin.normalise_upstream}), to the
    origin as written: a refused address or a well-known name for one
    gives a clear error at once;
  - at every connection (the origin pool's guard, L{veil.tcp.TCPConnector}),
    to the address actually connected to after name resolution, so that a
    name that resolves elsewhere later (DNS rebinding) gets nowhere.

Always refused: link-local and cloud metadata addresses (C{169.254.0.0/16},
C{fe80::/10}, C{fd00:ec2::254}, and the few metadata addresses clouds put
elsewhere), unspecified, multicast and reserved addresses, and Veil's own
listening addresses.  Refused unless C{allow_private}: loopback and
private ranges (RFC 1918, shared address space, unique local IPv6, ...).
An IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4, Teredo) is
judged by the IPv4 address too; an address with a zone (C{%eth0}) is
refused (a zone names an interface of one machine, not an origin).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import attrs

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _nets(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


#: (networks, why): refused whatever the operator says.
_ALWAYS = (
    (_nets("169.254.0.0/16", "fe80::/10"),
     "a link-local address (where cloud metadata services live)"),
    (_nets("100.100.100.200/32", "168.63.129.16/32", "192.0.0.192/32", "fd00:ec2::254/128"),
     "a cloud metadata address"),
    (_nets("0.0.0.0/8", "::/128"), "an unspecified address (it reaches this machine)"),
    (_nets("224.0.0.0/4", "ff00::/8"), "a multicast address"),
    (_nets("240.0.0.0/4", "255.255.255.255/32"), "a reserved address"),
)

#: (networks, why): refused unless private origins are allowed.
_PRIVATE = (
    (_nets("127.0.0.0/8", "::1/128"), "a loopback address"),
    (_nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
           "192.0.0.0/24", "198.18.0.0/15", "fc00::/7", "fec0::/10"),
     "a private address"),
)

#: IPv6 prefixes whose addresses carry an IPv4 address in their last 32 bits.
_NAT64 = _nets("64:ff9b::/96", "64:ff9b:1::/48", "::/96")

#: Names that are refused as they are written (the resolver would say so too,
#: but saying it when the site is saved is clearer).
_METADATA_NAMES = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data",
    "instance-data.ec2.internal", "metadata.azure.internal",
})


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, if it stands for one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    for net in _NAT64:
        if ip in net and ip != ipaddress.IPv6Address("::") and ip != ipaddress.IPv6Address("::1"):
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(ip: Address, allow_private: bool) -> str | None:
    """Why C{ip} may not be an origin's address, or L{None}."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "an address with a zone (%...)"
        inner = _embedded_v4(ip)
        if inner is not None:
            reason = address_refusal(inner, allow_private)
            if reason is not None:
                return f"{reason}, inside an IPv6 address"
    for nets, why in _ALWAYS:
        if any(ip in net for net in nets):
            return why
    if not allow_private:
        for nets, why in _PRIVATE:
            if any(ip in net for net in nets):
                return why + " (private origins are not allowed: proxy.allow_private_origins)"
    return None


def _local(ip: Address) -> bool:
    """Whether C{ip} is one of this machine's addresses (it can be bound to)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((str(ip), 0))
    except OSError:
        return False
    return True


def _plain(ip: Address) -> Address:
    """An IPv4-mapped IPv6 address as the IPv4 address it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@attrs.define(eq=False)
class OriginPolicy:
    """
    @ivar allow_private: loopback and private addresses are allowed.
    @ivar listeners: this Veil's listening addresses and ports: an origin
        there would send every request back to Veil.
    """

    allow_private: bool = False
    listeners: set[tuple[Address, int]] = attrs.field(factory=set)

    @classmethod
    def from_config(cls, config: object) -> OriginPolicy:
        """The policy for a configuration: its C{proxy.allow_private_origins} and ports."""
        policy = cls(allow_private=config.proxy.allow_private_origins)  # type: ignore[attr-defined]
        for listen in (config.edge, config.http, config.dashboard):  # type: ignore[attr-defined]
            policy.add_listener(listen.address, listen.port)
        return policy

    def add_listener(self, address: str, port: int) -> None:
        """Veil listens on C{address} (C{0.0.0.0} or C{::}: every address) and C{port}."""
        if port:
            self.listeners.add((_plain(ipaddress.ip_address(address)), port))

    def add_listeners(self, hosts: Iterable[object]) -> None:
        """L{add_listener} for listening ports' C{getHost()} results."""
        for host in hosts:
            address, port = getattr(host, "host", None), getattr(host, "port", 0)
            if address:
                self.add_listener(address, port)

    def refusal(self, address: str, port: int) -> str | None:
        """
        Why Veil must not connect to C{address} (an IP address, as the pool
        connects to it after resolution) on C{port}, or L{None}.
        """
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return f"{address!r} is not an IP address"
        reason = address_refusal(ip, self.allow_private)
        if reason is None and self._own(_plain(ip), port):
            reason = "one of this Veil's own listening addresses (a request loop)"
        return reason

    def upstream_refusal(self, host: str, port: int) -> str | None:
        """
        Why a site's origin may not be C{host} (a name or an address, as
        written in the site) on C{port}, or L{None}.  A name is judged by
        what it plainly is; where it resolves to is judged at every
        connection (L{refusal}).
        """
        name = host.strip("[]").lower().rstrip(".")
        if name in _METADATA_NAMES:
            return "a cloud metadata service's name"
        if name == "localhost" or name.endswith(".localhost"):
            if not self.allow_private:
                return ("a loopback name (private origins are not allowed: "
                        "proxy.allow_private_origins)")
            return None
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return None
        return self.refusal(name, port)

    def _own(self, ip: Address, port: int) -> bool:
        for address, listening in self.listeners:
            if listening != port or address.version != ip.version and not address.is_unspecified:
                continue
            if address == ip:
                return True
            if address.is_unspecified and (ip.is_loopback or _local(ip)):
                return True
        return False

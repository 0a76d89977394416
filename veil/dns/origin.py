"""
The origin Veil proposes for a new site, from the domain's DNS as it is
before the owner points it at Veil.

What is proposed, and why:

- a CNAME to another host (C{shop.example.com → shops.host.example}):
  C{https://shops.host.example}.  The host behind the alias serves the
  site today; hosting platforms answer for the customer's name on their
  own host names and have certificates for them, so HTTPS with the
  certificate checked against that host name works and keeps the hop to
  the origin encrypted.  C{http://} with the same host is the alternative.
- addresses only (C{A 203.0.113.7}): C{http://203.0.113.7}, IPv4 before
  IPv6.  The server's certificate, if any, is for the domain, not for its
  address, so HTTPS to the address would fail verification; plain HTTP
  works at once.  The alternatives list the other addresses and the
  C{https://} form (to use with origin certificate verification off).
- nothing when DNS already points at Veil (the real server is no longer
  visible), when the name does not exist or has no addresses, when the
  lookups failed, or when the only addresses cannot be an origin (loopback,
  link-local, multicast, unspecified or reserved: Veil would be proxying to
  itself or to nothing).  The reason says which, and the user enters one.

The user confirms or edits the proposal; the API validates what is
submitted as for any origin (L{veil.store.admin.normalise_upstream}).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults

from veil.dns.check import DnsSettings, explain_failure
from veil.dns.resolver import ANSWER, NXDOMAIN, StubResolver


@attrs.frozen
class OriginProposal:
    """
    @ivar origin: the proposed C{scheme://host}, or L{None}.
    @ivar reason: why this origin (or why none), for the user.
    @ivar found: what DNS says today, e.g. C{("CNAME shops.host.example",)}.
    @ivar alternatives: other origins the user may prefer.
    @ivar apex: whether the domain is a zone apex (L{None}: not known), for
        L{veil.dns.check.dns_instructions}.
    """

    domain: str
    origin: str | None
    reason: str
    found: tuple[str, ...] = ()
    alternatives: tuple[str, ...] = ()
    apex: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "origin": self.origin, "reason": self.reason,
                "found": list(self.found), "alternatives": list(self.alternatives),
                "apex": self.apex}


def _unusable(address: str) -> str | None:
    """Why C{address} cannot be an origin, or L{None} when it can."""
    ip = ipaddress.ip_address(address)
    for test, what in ((ip.is_loopback, "a loopback address"),
                       (ip.is_link_local, "a link-local address"),
                       (ip.is_multicast, "a multicast address"),
                       (ip.is_unspecified, "the unspecified address"),
                       (ip.is_reserved, "a reserved address")):
        if test:
            return what
    return None


def _url(scheme: str, address: str) -> str:
    return f"{scheme}://[{address}]" if ":" in address else f"{scheme}://{address}"


async def _propose(resolver: StubResolver, settings: DnsSettings,
                   domain: str) -> OriginProposal:
    a, aaaa, soa = await gatherResults([
        resolver.lookup(domain, "A"), resolver.lookup(domain, "AAAA"),
        resolver.lookup(domain, "SOA")], consumeErrors=True)
    apex = (soa.outcome == ANSWER and not soa.chain) if not soa.failed else None
    for lookup in (a, aaaa):
        if lookup.failed:
            _, why = explain_failure(lookup, resolver.names)
            return OriginProposal(domain, None, f"{why} Enter the origin yourself.", (), (),
                                  apex)
    chain = a.chain or aaaa.chain
    v4 = [x for x in a.values] if a.outcome == ANSWER else []
    v6 = [x for x in aaaa.values] if aaaa.outcome == ANSWER else []
    addresses = v4 + v6
    found = tuple(f"CNAME {t}" for t in chain) + tuple(
        f"{'AAAA' if ':' in x else 'A'} {x}" for x in addresses)

    def none(reason: str) -> OriginProposal:
        return OriginProposal(domain, None, reason, found, (), apex)

    if (settings.proxy_cname is not None and settings.proxy_cname in chain) or \
            settings.is_ours(addresses):
        return none(f"{domain} already points at Veil, so DNS no longer shows the server that"
                    " serves the site. Enter its origin yourself.")
    if chain:
        host = chain[0]
        return OriginProposal(domain, f"https://{host}", (
            f"{domain} is an alias (CNAME) of {host}, the host that serves it today. Veil"
            f" will connect to https://{host} and check its certificate against {host};"
            f" choose http://{host} if that host does not serve HTTPS."),
            found, (f"http://{host}",), apex)
    if a.outcome == NXDOMAIN:
        return none(f"{domain} does not exist in DNS yet, so there is no current server to"
                    " propose. Enter the origin: the address or host name of the server"
                    " that will serve the site.")
    usable = [x for x in addresses if _unusable(x) is None]
    if not addresses:
        return none(f"{domain} has no address records today, so there is no current server"
                    " to propose. Enter the origin yourself.")
    if not usable:
        return none(f"{domain} points at {addresses[0]}, {_unusable(addresses[0])}, which"
                    " cannot be an origin. Enter the origin yourself.")
    chosen = usable[0]
    private = ("" if ipaddress.ip_address(chosen).is_global
               else f" {chosen} is a private address: Veil must be able to reach it.")
    return OriginProposal(domain, _url("http", chosen), (
        f"{domain} has the address {chosen} today. Veil proposes plain HTTP to it because a"
        f" server's certificate is issued for {domain}, not for its address, so HTTPS to the"
        f" address would fail certificate verification. If the server accepts HTTPS, choose"
        f" {_url('https', chosen)} with origin certificate verification turned off.{private}"),
        found, tuple(_url("http", x) for x in usable[1:]) + (_url("https", chosen),), apex)


def propose_origin(resolver: StubResolver, settings: DnsSettings,
                   domain: str) -> Deferred[OriginProposal]:
    """Propose an origin for C{domain} (already normalised) from its current DNS."""
    return Deferred.fromCoroutine(_propose(resolver, settings, domain))

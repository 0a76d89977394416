"""C{veil sites add|list|remove|verify}: the sites Veil serves."""

from __future__ import annotations

import argparse
from typing import IO

from veil.commands import waf
from veil.commands.base import Stores, group, listing, store_command, when
from veil.store import admin


def _check_sites_add(args: argparse.Namespace) -> None:
    args.domain = admin.normalise_domain(args.domain)
    args.origin = admin.normalise_upstream(args.origin)


async def sites_add(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    actor = await stores.operator.ensure()
    site = await stores.sites.add(args.domain, args.origin, actor, verified=args.verified,
                                  mode=args.mode, allow_plain_http=args.allow_plain_http)
    print(f"Added {site.domain}: site {site.id}, status {site.status},"
          f" origin {site.upstream}, mode {site.mode}.", file=out)
    if args.verified:
        print("DNS is marked verified: a certificate will be issued on the first HTTPS"
              f" request for {site.domain}.", file=out)
    else:
        _print_dns_instructions(args, site, out)
    return 0


def _print_dns_instructions(args: argparse.Namespace, site: admin.SiteRecord,
                            out: IO[str]) -> None:
    from veil.dns.check import DnsSettings, dns_instructions

    dns = dns_instructions(DnsSettings.from_config(args.loaded_config), site.domain,
                           site.dns_token)
    print("To point the site at Veil and prove ownership, create these DNS records:", file=out)
    for record in dns["records"]:
        print(f"  {record['name']} {record['type']} {record['value']}", file=out)
    if dns["apex_records"] and dns["proxy_cname"]:
        alternatives = ", ".join(f"{r['type']} {r['value']}" for r in dns["apex_records"])
        print(f"(for a zone apex, which cannot have a CNAME: {alternatives})", file=out)
    if dns["missing"]:
        print(f"This Veil has nothing for sites to point at yet: set {' and '.join(dns['missing'])}"
              " and restart Veil, or DNS verification cannot succeed.", file=out)
    print("The DNS worker checks pending sites by itself (after a minute, then less often,"
          f" for a week); `veil sites verify {site.domain}` checks at once.", file=out)


async def sites_verify(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    from veil.store.sites import VERIFIED_STATUSES
    from veil.workers.dns import DnsVerifier

    site = await stores.sites.get(args.domain)
    if site is None:
        raise admin.SiteNotFound(args.domain)
    actor = await stores.operator.ensure()
    verifier = DnsVerifier.from_config(args.loaded_config, stores.db, stores.db.reactor)
    result = await verifier.check_now(site.id, actor)
    print(result.text(), file=out)
    return 0 if result.report.ok and result.status in VERIFIED_STATUSES - {"error"} else 1


async def sites_list(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    sites = await stores.sites.all()
    listing(out, args.json, sites, lambda s: {
        "id": str(s.id), "domain": s.domain, "status": s.status, "upstream": s.upstream,
        "mode": s.mode, "maintenance": s.maintenance,
        "allow_plain_http": s.allow_plain_http, "created_at": s.created_at.isoformat(),
    }, "No sites.", ("DOMAIN", "STATUS", "UPSTREAM", "MODE", "MAINTENANCE", "CREATED"),
        lambda s: (s.domain, s.status, s.upstream, s.mode, "on" if s.maintenance else "off",
                   when(s.created_at)))
    return 0


def check_domain(args: argparse.Namespace) -> None:
    args.domain = admin.normalise_domain(args.domain)


async def sites_remove(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    actor = await stores.operator.ensure()
    site = await stores.sites.remove(args.domain, actor)
    print(f"Removed {site.domain} (site {site.id}) with its decisions, rules and members.",
          file=out)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    sites = group(commands, "sites", "add, list, remove and verify sites")
    add = sites.add_parser("add", help="add a site")
    add.add_argument("domain", metavar="DOMAIN")
    add.add_argument("--origin", required=True, metavar="URL",
                     help="the origin, scheme://host[:port] (http or https, no path)")
    add.add_argument("--verified", action="store_true",
                     help="mark its DNS verified: the site is active at once")
    add.add_argument("--mode", choices=admin.SITE_MODES, default="block",
                     help="block attacks, or only log them (default: block)")
    add.add_argument("--allow-plain-http", action="store_true",
                     help="serve plain HTTP instead of redirecting it to HTTPS")
    store_command(add, sites_add, _check_sites_add)
    listing = sites.add_parser("list", help="list every site")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    store_command(listing, sites_list)
    remove = sites.add_parser("remove", help="delete a site and what belongs to it")
    remove.add_argument("domain", metavar="DOMAIN")
    store_command(remove, sites_remove, check_domain)
    verify = sites.add_parser("verify", help="check the site's DNS now and show the report")
    verify.add_argument("domain", metavar="DOMAIN")
    store_command(verify, sites_verify, check_domain)
    waf.add_sites_set(sites)

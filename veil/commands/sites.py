"""C{veil sites add|list|remove}: the sites Veil serves."""

from __future__ import annotations

import argparse
import json
from typing import IO

from veil.commands import waf
from veil.commands.base import Stores, group, store_command, table, when
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
        print("To prove ownership, create this DNS record:", file=out)
        print(f"  _veil.{site.domain} TXT {site.dns_token}", file=out)
        print(f"and point {site.domain} at this Veil (CNAME, or A/AAAA for an apex); the"
              " proxy's CNAME is not configurable yet.", file=out)
        print("DNS verification arrives with the DNS worker: until then the site stays"
              " pending (add it with --verified once its DNS points at Veil).", file=out)
    return 0


async def sites_list(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    sites = await stores.sites.all()
    if args.json:
        json.dump([{
            "id": str(s.id), "domain": s.domain, "status": s.status, "upstream": s.upstream,
            "mode": s.mode, "maintenance": s.maintenance,
            "allow_plain_http": s.allow_plain_http, "created_at": s.created_at.isoformat(),
        } for s in sites], out, indent=2)
        print(file=out)
    elif not sites:
        print("No sites.", file=out)
    else:
        table(out, ("DOMAIN", "STATUS", "UPSTREAM", "MODE", "MAINTENANCE", "CREATED"), [
            (s.domain, s.status, s.upstream, s.mode, "on" if s.maintenance else "off",
             when(s.created_at)) for s in sites])
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
    sites = group(commands, "sites", "add, list and remove sites")
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
    waf.add_sites_set(sites)

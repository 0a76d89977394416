"""C{veil maintenance on|off|status}: the maintenance switch (503 pages)."""

from __future__ import annotations

import argparse
from typing import IO

from veil.commands.base import Stores, group, store_command
from veil.store import admin


def _check_maintenance(args: argparse.Namespace) -> None:
    if args.site is not None:
        args.site = admin.normalise_domain(args.site)


async def maintenance_switch(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    enabled = args.state == "on"
    actor = await stores.operator.ensure()
    if args.site is not None:
        site, changed = await stores.sites.set_maintenance(args.site, enabled, actor)
        scope = site.domain
    else:
        changed = await stores.settings.set_maintenance(enabled, actor)
        scope = "every site (cluster-wide)"
    state = "now" if changed else "already"
    print(f"Maintenance is {state} {args.state} for {scope}.", file=out)
    return 0


async def maintenance_status(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    status = await stores.settings.maintenance()
    cluster = "on" if status.enabled else "off"
    if args.site is not None:
        site = await stores.sites.get(args.site)
        if site is None:
            raise admin.SiteNotFound(args.site)
        own = "on" if site.maintenance else "off"
        print(f"{site.domain}: maintenance {own} (cluster-wide: {cluster})", file=out)
        return 0
    print(f"Cluster-wide maintenance: {cluster}", file=out)
    print(f"Sites in maintenance: {', '.join(status.sites) or 'none'}", file=out)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    maintenance = group(commands, "maintenance", "the maintenance switch (503 pages)",
                        dest="state", metavar="on|off|status")
    for state in ("on", "off"):
        switch = maintenance.add_parser(state, help=f"turn maintenance {state}")
        switch.add_argument("--site", metavar="DOMAIN",
                            help="only this site (default: every site)")
        store_command(switch, maintenance_switch, _check_maintenance)
    status = maintenance.add_parser("status", help="show the maintenance switches")
    status.add_argument("--site", metavar="DOMAIN", help="this site's switch")
    store_command(status, maintenance_status, _check_maintenance)

"""C{veil decisions add|list|remove}: IP decisions (stage 1 of the WAF)."""

from __future__ import annotations

import argparse
from typing import IO
from uuid import UUID

from veil.commands.base import Stores, group, iso, listing, site_id, store_command, when
from veil.store import admin


def _check_decisions_add(args: argparse.Namespace) -> None:
    args.target = admin.parse_network(args.target)
    args.duration = admin.parse_duration(args.duration)
    args.reason = admin.normalise_reason(args.reason)
    if args.site is not None:
        args.site = admin.normalise_domain(args.site)


async def decisions_add(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    site = await site_id(stores, args.site)
    actor = await stores.operator.ensure()
    decision = await stores.decisions.add(args.target, args.type, actor,
                                          duration=args.duration, site_id=site,
                                          reason=args.reason)
    scope = decision.site_domain or "every site"
    until = ("until removed" if decision.expires_at is None
             else f"until {when(decision.expires_at)}")
    print(f"Added {decision.type} for {admin.format_network(decision.target)} on {scope},"
          f" {until} (decision {decision.id}).", file=out)
    return 0


def _check_decisions_list(args: argparse.Namespace) -> None:
    if args.site is not None:
        args.site = admin.normalise_domain(args.site)


async def decisions_list(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    site = await site_id(stores, args.site)
    decisions = await stores.decisions.all(site, include_expired=args.all)
    listing(out, args.json, decisions, lambda d: {
        "id": str(d.id), "target": admin.format_network(d.target), "type": d.type,
        "source": d.source, "site": d.site_domain, "reason": d.reason,
        "created_at": d.created_at.isoformat(), "expires_at": iso(d.expires_at),
    }, "No decisions.", ("ID", "TARGET", "TYPE", "SITE", "SOURCE", "EXPIRES", "REASON"),
        lambda d: (str(d.id), admin.format_network(d.target), d.type, d.site_domain or "*",
                   d.source, when(d.expires_at), d.reason))
    return 0


def _check_decision_id(args: argparse.Namespace) -> None:
    try:
        args.id = UUID(args.id)
    except ValueError:
        raise admin.InvalidValue(
            f"{args.id!r} is not a decision id (see `veil decisions list`)") from None


async def decisions_remove(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    actor = await stores.operator.ensure()
    decision = await stores.decisions.remove(args.id, actor)
    print(f"Removed {decision.type} for {admin.format_network(decision.target)}"
          f" on {decision.site_domain or 'every site'} (decision {decision.id}).", file=out)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    decisions = group(commands, "decisions", "add, list and remove IP decisions")
    add = decisions.add_parser("add", help="add a decision for an address or network")
    add.add_argument("target", metavar="IP|CIDR")
    add.add_argument("--type", choices=admin.DECISION_TYPES, default="ban",
                     help="what to do with its requests (default: ban)")
    add.add_argument("--for", dest="duration", required=True, metavar="DURATION",
                     help="30s, 15m, 1h, 7d, 2w, 1h30m, or forever")
    add.add_argument("--site", metavar="DOMAIN", help="only for this site (default: every site)")
    add.add_argument("--reason", default="", metavar="TEXT",
                     help=f"why, for the dashboard (one line, at most {admin.MAX_REASON}"
                          " characters)")
    store_command(add, decisions_add, _check_decisions_add)
    listing = decisions.add_parser("list", help="list current decisions, newest first")
    listing.add_argument("--site", metavar="DOMAIN", help="only this site's decisions")
    listing.add_argument("--all", action="store_true", help="include expired decisions")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    store_command(listing, decisions_list, _check_decisions_list)
    remove = decisions.add_parser("remove", help="delete a decision")
    remove.add_argument("id", metavar="ID")
    store_command(remove, decisions_remove, _check_decision_id)

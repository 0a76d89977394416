"""
C{veil tokens create|list|revoke}: API tokens from the shell.

C{create} prints the new token, and only the token, on standard output (so
that C{TOKEN=$(veil tokens create --user ...)} works); it is not shown
again.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import IO
from uuid import UUID

from veil.auth.accounts import MAX_TOKEN_LIFETIME, issue_api_token
from veil.auth.store import AuthStore, UserNotFound
from veil.commands.base import Stores, group, iso, listing, site_id, store_command, when
from veil.commands.users import _email
from veil.store.admin import InvalidValue, normalise_domain, parse_duration


def _check_create(args: argparse.Namespace) -> None:
    args.email = args.user
    _email(args)
    if args.site is not None:
        args.site = normalise_domain(args.site)
    value = args.expires.strip().lower()
    if value in ("never", "forever"):
        args.lifetime = None
    else:
        args.lifetime = parse_duration(value)
        if args.lifetime is not None and args.lifetime > MAX_TOKEN_LIFETIME:
            raise InvalidValue(f"--expires {args.expires}: a token lives at most a year (366d),"
                               " or use never")
    if not 1 <= len(args.name) <= 100:
        raise InvalidValue("--name must have 1 to 100 characters")


async def tokens_create(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    actor = await stores.operator.ensure()
    auth = AuthStore(stores.db)
    found = await auth.user_by_email(args.email)
    if found is None:
        raise UserNotFound(f"no account has the address {args.email}")
    user = found[0]
    if user.disabled:
        raise InvalidValue(f"{user.email} is disabled")
    site = await site_id(stores, args.site)
    try:
        token, _ = await issue_api_token(auth, user.id, args.name, site, args.read_only,
                                         args.lifetime, actor, datetime.now(UTC))
    except UserNotFound:
        raise InvalidValue(f"{user.email} is not a member of {args.site}") from None
    print(token, file=out)
    return 0


async def tokens_list(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    auth = AuthStore(stores.db)
    user_id = None
    if args.user is not None:
        args.email = args.user
        _email(args)
        found = await auth.user_by_email(args.email)
        if found is None:
            raise UserNotFound(f"no account has the address {args.email}")
        user_id = found[0].id
    emails = {u.id: u.email for u in await auth.list_users()}
    tokens = await auth.api_tokens(user_id)
    now = datetime.now(UTC)

    def status(t) -> str:
        if t.revoked_at is not None:
            return "revoked"
        if t.expires_at is not None and t.expires_at <= now:
            return "expired"
        return "active"

    listing(out, args.json, tokens, lambda t: {
        "id": str(t.id), "user": emails.get(t.user_id), "name": t.name,
        "prefix": t.display_prefix, "site": t.site_domain, "read_only": t.read_only,
        "status": status(t), "created_at": t.created_at.isoformat(),
        "expires_at": iso(t.expires_at), "last_used_at": iso(t.last_used_at),
    }, "No API tokens.", ("ID", "USER", "NAME", "TOKEN", "SITES", "ACCESS", "STATUS", "EXPIRES",
                          "LAST USED"),
        lambda t: (str(t.id), emails.get(t.user_id, "?"), t.name, t.display_prefix + "…",
                   t.site_domain or "all", "read-only" if t.read_only else "read-write",
                   status(t), when(t.expires_at), when(t.last_used_at)))
    return 0


def _check_revoke(args: argparse.Namespace) -> None:
    try:
        args.token_id = UUID(args.id)
    except ValueError:
        raise InvalidValue(f"{args.id!r} is not a token id (see veil tokens list)") from None


async def tokens_revoke(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    actor = await stores.operator.ensure()
    revoked = await AuthStore(stores.db).revoke_api_token(args.token_id, None,
                                                          datetime.now(UTC), actor, None)
    if revoked is None:
        raise InvalidValue(f"no active token {args.token_id}")
    print(f"Revoked {revoked.name} ({revoked.display_prefix}…): it stops working at once.",
          file=out)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    tokens = group(commands, "tokens", "API tokens: create, list, revoke")
    create = tokens.add_parser("create", help="create an API token and print it")
    create.add_argument("--user", required=True, metavar="EMAIL", help="whom the token acts for")
    create.add_argument("--site", metavar="DOMAIN", help="limit the token to this site")
    create.add_argument("--read-only", action="store_true", help="GET requests only")
    create.add_argument("--expires", default="90d", metavar="DURATION",
                        help="30d, 12w, ... at most a year, or never (default 90d)")
    create.add_argument("--name", default="command line", help="what the token is for")
    store_command(create, tokens_create, _check_create)
    listing = tokens.add_parser("list", help="list API tokens")
    listing.add_argument("--user", metavar="EMAIL", help="only this user's")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    store_command(listing, tokens_list)
    revoke = tokens.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("id", metavar="ID", help="the token's id (veil tokens list)")
    store_command(revoke, tokens_revoke, _check_revoke)

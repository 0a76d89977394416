"""
C{veil users add|list|disable|enable}: dashboard accounts from the shell.

C{add --password-stdin} reads the password from the first line of
standard input (so it stays out of the process list and the shell's
history), checks it against the password rules and hashes it before
connecting.  An account added without a password signs in with an e-mail
link or GitHub, and may set a password on its account page.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import IO

from veil.auth.emails import normalise_email
from veil.auth.passwords import PasswordRules, WeakPassword, hash_now
from veil.auth.store import AuthStore
from veil.commands.base import Stores, group, iso, listing, store_command, when
from veil.store.admin import InvalidValue


def _email(args: argparse.Namespace) -> None:
    try:
        args.email = normalise_email(args.email)
    except ValueError as e:
        raise InvalidValue(str(e)) from None


def _check_add(args: argparse.Namespace) -> None:
    _email(args)
    args.password_hash = None
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line.removesuffix("\n")
        password = password.removesuffix("\r")
        try:
            PasswordRules().check(password, args.email)
        except WeakPassword as e:
            raise InvalidValue(f"the password is not accepted: {e}") from None
        args.password_hash = hash_now(password)


async def users_add(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    actor = await stores.operator.ensure()
    user = await AuthStore(stores.db).create_user(args.email, args.password_hash, args.admin,
                                                  actor)
    role = "administrator" if user.is_admin else "user"
    print(f"Added {user.email} ({role}), user {user.id}.", file=out)
    if args.password_hash is None:
        print("It has no password: it signs in with an e-mail link or GitHub, and can set a"
              " password on its account page.", file=out)
    return 0


async def users_list(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    users = await AuthStore(stores.db).list_users()
    listing(out, args.json, users, lambda u: {
        "id": str(u.id), "email": u.email, "admin": u.is_admin, "disabled": u.disabled,
        "password": u.has_password, "github_login": u.github_login,
        "created_at": u.created_at.isoformat(), "last_login_at": iso(u.last_login_at),
    }, "No users.", ("EMAIL", "ROLE", "STATUS", "PASSWORD", "GITHUB", "LAST SIGN-IN", "CREATED"),
        lambda u: (u.email, "admin" if u.is_admin else "user",
                   "disabled" if u.disabled else "enabled", "yes" if u.has_password else "no",
                   u.github_login or "-", when(u.last_login_at), when(u.created_at)))
    return 0


async def users_disable(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    actor = await stores.operator.ensure()
    user, changed = await AuthStore(stores.db).disable_user(args.email, actor,
                                                            datetime.now(UTC))
    if changed:
        print(f"Disabled {user.email}: its sessions ended and its API tokens are revoked.",
              file=out)
    else:
        print(f"{user.email} was already disabled.", file=out)
    return 0


async def users_enable(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    actor = await stores.operator.ensure()
    user, changed = await AuthStore(stores.db).enable_user(args.email, actor)
    print(f"Enabled {user.email}." if changed else f"{user.email} was not disabled.", file=out)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    users = group(commands, "users", "dashboard accounts: add, list, disable, enable")
    add = users.add_parser("add", help="add an account")
    add.add_argument("email", metavar="EMAIL")
    add.add_argument("--admin", action="store_true",
                     help="a global administrator (every site, every user)")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    store_command(add, users_add, _check_add)
    listing = users.add_parser("list", help="list the accounts")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    store_command(listing, users_list)
    disable = users.add_parser("disable", help="disable an account: its sessions end and its"
                                               " API tokens are revoked at once")
    disable.add_argument("email", metavar="EMAIL")
    store_command(disable, users_disable, _email)
    enable = users.add_parser("enable", help="allow a disabled account to sign in again")
    enable.add_argument("email", metavar="EMAIL")
    store_command(enable, users_enable, _email)

"""
What the C{veil} subcommands share: the stores they run with, how a handler
is declared, and the plain-text output helpers.

Text from the database is shown through L{printable}, as L{table} does for
every cell: rows written before their input was checked, or by other
writers, may hold control characters, and printed raw those would reach
the operator's terminal (escape sequences that move the cursor, rewrite
lines, set the window title, ...).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import IO, Any, TypeVar
from uuid import UUID

import attrs

from veil.config import Config
from veil.proxy.origins import OriginPolicy
from veil.store import admin
from veil.store.db import Database


@attrs.frozen
class Stores:
    """
    The store API on one L{Database}: the operator account and the admin
    stores every group uses; a group with stores of its own builds them on
    C{db}.  With the configuration, sites are saved under the operator's
    origin policy (C{proxy.allow_private_origins}, Veil's own ports: see
    L{OriginPolicy}), as the running proxy will apply it.
    """

    db: Database
    operator: admin.OperatorAccount
    sites: admin.SiteAdmin
    decisions: admin.DecisionAdmin
    settings: admin.SettingsAdmin
    config: Config | None = None

    @classmethod
    def on(cls, db: Database, config: Config | None = None) -> Stores:
        origins = None if config is None else OriginPolicy.from_config(config)
        return cls(db, admin.OperatorAccount(db), admin.SiteAdmin(db, origins),
                   admin.DecisionAdmin(db), admin.SettingsAdmin(db), config)


#: A store command: runs on the reactor, returns the exit status.
Handler = Callable[[Stores, argparse.Namespace, IO[str]], Awaitable[int]]
#: Checks and normalises the parsed arguments before anything connects;
#: raises L{veil.errors.VeilError} with the message for the operator.
Check = Callable[[argparse.Namespace], None]


def store_command(parser: argparse.ArgumentParser, handler: Handler,
                  check: Check | None = None) -> None:
    """Make C{parser}'s command run C{handler} against the database."""
    parser.set_defaults(handler=handler, check=check)


def group(commands: argparse._SubParsersAction, name: str, help: str,
          dest: str = "action", metavar: str = "ACTION") -> argparse._SubParsersAction:
    """
    The subcommands of the command group C{name}, added if it is not there
    yet: several modules may add subcommands to one group (C{veil waf}),
    and the first to register gives the group its help.
    """
    existing = commands.choices.get(name)
    if existing is not None:
        for action in existing._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action
        raise ValueError(f"command {name!r} exists and is not a group")
    return commands.add_parser(name, help=help).add_subparsers(
        dest=dest, required=True, metavar=metavar)


def when(moment: datetime | None, missing: str = "never") -> str:
    """A moment for a table or a message, in UTC."""
    if moment is None:
        return missing
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def printable(text: str) -> str:
    """
    C{text} with every character a terminal could act on, or that would
    not show (controls, DEL, C1 controls, format characters such as
    bidirectional overrides, line and paragraph separators), written as a
    Python-style escape (C{\\x1b}, C{\\u202e}).
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(character: str) -> str:
    code = ord(character)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def table(out: IO[str], headings: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell; every cell through L{printable}."""
    cells = [[printable(str(cell)) for cell in row] for row in (headings, *rows)]
    widths = [max(len(cell) for cell in column) for column in zip(*cells)]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)


T = TypeVar("T")


def iso(moment: datetime | None) -> str | None:
    """A time for JSON output: ISO 8601, or L{None}."""
    return None if moment is None else moment.isoformat()


def listing(out: IO[str], as_json: bool, items: Sequence[T], data: Callable[[T], Any],
            empty: str, headings: Sequence[str], row: Callable[[T], Sequence[str]]) -> None:
    """
    What a C{list} command prints: with C{--json}, C{data(item)} for each
    item as a JSON array; otherwise the C{empty} line, or a L{table}.
    """
    if as_json:
        json.dump([data(item) for item in items], out, indent=2)
        print(file=out)
    elif not items:
        print(empty, file=out)
    else:
        table(out, headings, [row(item) for item in items])


async def site_id(stores: Stores, domain: str | None) -> UUID | None:
    """The id of the site C{domain} (L{None} for none); unknown is an error."""
    if domain is None:
        return None
    site = await stores.sites.get(domain)
    if site is None:
        raise admin.SiteNotFound(domain)
    return site.id

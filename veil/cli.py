"""
The C{veil} command: operator tasks beside the running service.

    veil check-config                         validate the configuration and say what it means
    veil migrate                              apply pending schema migrations to database.url
    veil sites add DOMAIN --origin URL        add a site ([--verified] [--mode] [--allow-plain-http])
    veil sites list [--json]                  every site
    veil sites remove DOMAIN                  delete a site and everything that belongs to it
    veil decisions add IP|CIDR --for 1h       ban (or --type block|throttle|…) an address or network
    veil decisions list [--site D] [--all]    current decisions
    veil decisions remove ID                  delete a decision
    veil maintenance on|off [--site DOMAIN]   the maintenance switch, cluster-wide or per site
    veil maintenance status [--site DOMAIN]

Every command takes C{--config PATH} (or C{VEIL_CONFIG}) and the C{VEIL_*}
overrides.  The store commands connect to C{database.url}, or without one to
the embedded cluster of the running Veil (over its Unix socket), check that
the schema is migrated, and act as the built-in operator account.  Every
change is written to C{audit_log} in the same transaction.  Errors go to
standard error with exit status 1 (2 for a malformed command line).

L{main} is the console script: it checks the input and the database before
starting the reactor, then runs the command with L{react}.  L{run} is the
same command as a L{Deferred} on a running reactor.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from typing import IO, Any
from uuid import UUID

import attrs
import psycopg
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import react

from veil import config as veil_config
from veil.errors import StoreUnavailable, VeilError
from veil.store import admin
from veil.store.db import Database

NOT_RUNNING = "Veil's embedded PostgreSQL is not running (start Veil first)"


class CommandError(VeilError):
    """The command cannot go on; the message is for the operator."""


@attrs.frozen
class Env:
    """What a command runs with: its streams and environment."""

    environ: Mapping[str, str]
    out: IO[str]
    err: IO[str]


@attrs.frozen
class Target:
    """The database a store command talks to."""

    conninfo: str
    embedded: bool
    config: veil_config.Config


@attrs.frozen
class Stores:
    """The store API, on one L{Database}."""

    operator: admin.OperatorAccount
    sites: admin.SiteAdmin
    decisions: admin.DecisionAdmin
    settings: admin.SettingsAdmin

    @classmethod
    def on(cls, db: Database) -> Stores:
        return cls(admin.OperatorAccount(db), admin.SiteAdmin(db), admin.DecisionAdmin(db),
                   admin.SettingsAdmin(db))


Handler = Callable[[Stores, argparse.Namespace, IO[str]], Awaitable[int]]
Job = Callable[[Any], Awaitable[int]]


# -- configuration and connection ----------------------------------------------


def _load(args: argparse.Namespace, env: Env) -> veil_config.Config:
    return veil_config.load(args.config or env.environ.get("VEIL_CONFIG") or None, env.environ)


def _target(config: veil_config.Config) -> Target:
    if config.database.url is not None:
        return Target(config.database.url, False, config)
    from veil.store.embedded import PORT, conninfo_for, socket_dir_for

    if not (socket_dir_for(config.data_dir) / f".s.PGSQL.{PORT}").exists():
        raise CommandError(NOT_RUNNING)
    return Target(conninfo_for(config.data_dir), True, config)


def _one_line(error: BaseException) -> str:
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip())


def _unreachable(target: Target, error: BaseException) -> CommandError:
    text = _one_line(error)
    if target.embedded:
        if "No such file" in text or "Connection refused" in text:
            return CommandError(NOT_RUNNING)
        return CommandError(f"cannot connect to Veil's embedded PostgreSQL: {text}")
    return CommandError(f"cannot connect to the database (database.url): {text}")


def _preflight(target: Target) -> None:
    """
    Connect once and check the schema, before the reactor starts (blocking
    is fine here: nothing else runs yet).
    """
    timeout = max(2, math.ceil(target.config.database.connect_timeout))
    try:
        with psycopg.connect(target.conninfo, connect_timeout=timeout, autocommit=True,
                             application_name="veil-cli") as conn:
            migrated = conn.execute(
                "SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
            applied = ({v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
                       if migrated else set())
    except psycopg.OperationalError as e:
        raise _unreachable(target, e) from None
    except psycopg.Error as e:
        raise CommandError(f"cannot check the database schema: {_one_line(e)}") from None
    how = ("start Veil (it migrates at start-up)" if target.embedded
           else "start Veil, or run `veil migrate`")
    if not migrated:
        raise CommandError(f"the database is not migrated (no schema_migrations table): {how}")
    from veil.store.migrate import default_schema_dir, load_migrations

    try:
        pending = [m.filename for m in load_migrations(default_schema_dir())
                   if m.version not in applied]
    except VeilError:
        pending = []  # no schema files beside this install: trust what is recorded
    if pending:
        raise CommandError(f"the database is not migrated ({', '.join(pending)} pending): {how}")


def _job(target: Target, handler: Handler, args: argparse.Namespace, env: Env) -> Job:
    async def job(reactor: Any) -> int:
        database = target.config.database
        db = Database(target.conninfo, reactor, min_size=1, max_size=2,
                      connect_timeout=database.connect_timeout,
                      statement_timeout=database.statement_timeout,
                      application_name="veil-cli")
        db.start()
        try:
            return await handler(Stores.on(db), args, env.out)
        except StoreUnavailable as e:
            message = str(_unreachable(target, e)) if target.embedded else (
                f"cannot reach the database (database.url): {_one_line(e)}")
            print(f"veil: {message}", file=env.err)
        except VeilError as e:
            print(f"veil: {e}", file=env.err)
        except psycopg.Error as e:
            print(f"veil: the database refused it: {e.diag.message_primary or _one_line(e)}",
                  file=env.err)
        finally:
            await db.close()
        return 1

    return job


# -- output ----------------------------------------------------------------------------


def _when(moment: datetime | None, missing: str = "never") -> str:
    if moment is None:
        return missing
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(out: IO[str], headings: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headings, *rows)]
    for row in (headings, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)


# -- sites -------------------------------------------------------------------------------


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
        _table(out, ("DOMAIN", "STATUS", "UPSTREAM", "MODE", "MAINTENANCE", "CREATED"), [
            (s.domain, s.status, s.upstream, s.mode, "on" if s.maintenance else "off",
             _when(s.created_at)) for s in sites])
    return 0


def _check_domain(args: argparse.Namespace) -> None:
    args.domain = admin.normalise_domain(args.domain)


async def sites_remove(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    actor = await stores.operator.ensure()
    site = await stores.sites.remove(args.domain, actor)
    print(f"Removed {site.domain} (site {site.id}) with its decisions, rules and members.",
          file=out)
    return 0


# -- decisions ---------------------------------------------------------------------------


def _check_decisions_add(args: argparse.Namespace) -> None:
    args.target = admin.parse_network(args.target)
    args.duration = admin.parse_duration(args.duration)
    if args.site is not None:
        args.site = admin.normalise_domain(args.site)


async def _site_id(stores: Stores, domain: str | None) -> UUID | None:
    if domain is None:
        return None
    site = await stores.sites.get(domain)
    if site is None:
        raise admin.SiteNotFound(domain)
    return site.id


async def decisions_add(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    site_id = await _site_id(stores, args.site)
    actor = await stores.operator.ensure()
    decision = await stores.decisions.add(args.target, args.type, actor,
                                          duration=args.duration, site_id=site_id,
                                          reason=args.reason)
    scope = decision.site_domain or "every site"
    until = ("until removed" if decision.expires_at is None
             else f"until {_when(decision.expires_at)}")
    print(f"Added {decision.type} for {admin.format_network(decision.target)} on {scope},"
          f" {until} (decision {decision.id}).", file=out)
    return 0


def _check_decisions_list(args: argparse.Namespace) -> None:
    if args.site is not None:
        args.site = admin.normalise_domain(args.site)


async def decisions_list(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    site_id = await _site_id(stores, args.site)
    decisions = await stores.decisions.all(site_id, include_expired=args.all)
    if args.json:
        json.dump([{
            "id": str(d.id), "target": admin.format_network(d.target), "type": d.type,
            "source": d.source, "site": d.site_domain, "reason": d.reason,
            "created_at": d.created_at.isoformat(),
            "expires_at": None if d.expires_at is None else d.expires_at.isoformat(),
        } for d in decisions], out, indent=2)
        print(file=out)
    elif not decisions:
        print("No decisions.", file=out)
    else:
        _table(out, ("ID", "TARGET", "TYPE", "SITE", "SOURCE", "EXPIRES", "REASON"), [
            (str(d.id), admin.format_network(d.target), d.type, d.site_domain or "*",
             d.source, _when(d.expires_at), d.reason) for d in decisions])
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


# -- maintenance -------------------------------------------------------------------------


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


# -- the synchronous commands ------------------------------------------------------------


def check_config(args: argparse.Namespace, env: Env) -> int:
    config = _load(args, env)
    out = env.out
    print(f"configuration: {config.source or 'embedded defaults'}", file=out)
    print(f"data directory: {config.data_dir}", file=out)
    print(f"edge: {config.edge.address}:{config.edge.port}", file=out)
    print(f"plain HTTP: {config.http.address}:{config.http.port}", file=out)
    print(f"dashboard: http://{config.dashboard.address}:{config.dashboard.port}/", file=out)
    if config.uses_embedded_database:
        from veil.store.embedded import find_bindir

        print(f"database: embedded cluster, binaries in {find_bindir(config.embedded.bin_dir)}",
              file=out)
    else:
        print("database: external (database.url is set)", file=out)
    return 0


def migrate(args: argparse.Namespace, env: Env) -> int:
    config = _load(args, env)
    if config.database.url is None:
        print("veil migrate: database.url is not set; the embedded cluster is migrated"
              " by Veil itself when it starts", file=env.err)
        return 2
    from veil.store.migrate import migrate_sync

    applied = migrate_sync(config.database.url)
    print(f"applied: {', '.join(applied)}" if applied else "schema already up to date",
          file=env.out)
    return 0


# -- the command line --------------------------------------------------------------------


def _store_command(parser: argparse.ArgumentParser, handler: Handler,
                   check: Callable[[argparse.Namespace], None] | None = None) -> None:
    parser.set_defaults(handler=handler, check=check)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="veil", description="Veil operator commands")
    parser.add_argument("--config", "-c", help="TOML configuration file (also VEIL_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("check-config", help="validate the configuration").set_defaults(
        run=check_config)
    commands.add_parser("migrate", help="apply pending schema migrations").set_defaults(
        run=migrate)

    sites = commands.add_parser("sites", help="add, list and remove sites").add_subparsers(
        dest="action", required=True, metavar="ACTION")
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
    _store_command(add, sites_add, _check_sites_add)
    listing = sites.add_parser("list", help="list every site")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    _store_command(listing, sites_list)
    remove = sites.add_parser("remove", help="delete a site and what belongs to it")
    remove.add_argument("domain", metavar="DOMAIN")
    _store_command(remove, sites_remove, _check_domain)

    decisions = commands.add_parser(
        "decisions", help="add, list and remove IP decisions").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    add = decisions.add_parser("add", help="add a decision for an address or network")
    add.add_argument("target", metavar="IP|CIDR")
    add.add_argument("--type", choices=admin.DECISION_TYPES, default="ban",
                     help="what to do with its requests (default: ban)")
    add.add_argument("--for", dest="duration", required=True, metavar="DURATION",
                     help="30s, 15m, 1h, 7d, 2w, 1h30m, or forever")
    add.add_argument("--site", metavar="DOMAIN", help="only for this site (default: every site)")
    add.add_argument("--reason", default="", metavar="TEXT", help="why, for the dashboard")
    _store_command(add, decisions_add, _check_decisions_add)
    listing = decisions.add_parser("list", help="list current decisions, newest first")
    listing.add_argument("--site", metavar="DOMAIN", help="only this site's decisions")
    listing.add_argument("--all", action="store_true", help="include expired decisions")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    _store_command(listing, decisions_list, _check_decisions_list)
    remove = decisions.add_parser("remove", help="delete a decision")
    remove.add_argument("id", metavar="ID")
    _store_command(remove, decisions_remove, _check_decision_id)

    maintenance = commands.add_parser(
        "maintenance", help="the maintenance switch (503 pages)").add_subparsers(
        dest="state", required=True, metavar="on|off|status")
    for state in ("on", "off"):
        switch = maintenance.add_parser(state, help=f"turn maintenance {state}")
        switch.add_argument("--site", metavar="DOMAIN",
                            help="only this site (default: every site)")
        _store_command(switch, maintenance_switch, _check_maintenance)
    status = maintenance.add_parser("status", help="show the maintenance switches")
    status.add_argument("--site", metavar="DOMAIN", help="this site's switch")
    _store_command(status, maintenance_status, _check_maintenance)
    return parser


def _prepare(argv: Sequence[str] | None, env: Env, preflight: bool) -> int | Job:
    """
    Parse and check the command and, for a store command, find and (with
    C{preflight}) check the database: an exit status, or the job to run.
    """
    try:
        with redirect_stdout(env.out), redirect_stderr(env.err):
            args = _parser().parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        if getattr(args, "run", None) is not None:
            return args.run(args, env)
        if args.check is not None:
            args.check(args)
        target = _target(_load(args, env))
        if preflight:
            _preflight(target)
    except VeilError as e:
        print(f"veil: {e}", file=env.err)
        return 1
    return _job(target, args.handler, args, env)


def _env(environ: Mapping[str, str] | None, out: IO[str] | None, err: IO[str] | None) -> Env:
    return Env(os.environ if environ is None else environ, out or sys.stdout, err or sys.stderr)


def run(reactor: Any, argv: Sequence[str], environ: Mapping[str, str] | None = None,
        out: IO[str] | None = None, err: IO[str] | None = None) -> Deferred[int]:
    """
    Run a C{veil} command on a running C{reactor}; fires with its exit
    status.  Unlike L{main}, it does not connect once before the command
    runs, so a database that cannot be reached is noticed by the command's
    first query (after C{database.connect_timeout}).
    """
    job = _prepare(argv, _env(environ, out, err), preflight=False)
    if isinstance(job, int):
        return succeed(job)
    return Deferred.fromCoroutine(job(reactor))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
         out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """The C{veil} console script; returns the exit status."""
    env = _env(environ, out, err)
    job = _prepare(argv, env, preflight=True)
    if isinstance(job, int):
        return job

    async def exit_with_status(reactor: Any) -> None:
        try:
            status = await job(reactor)
        except BrokenPipeError:
            status = _reader_gone()
        except Exception:  # noqa: BLE001 - a bug: show it, nobody reads Twisted's log here
            traceback.print_exc(file=env.err)
            status = 1
        if status:
            raise SystemExit(status)

    try:
        react(exit_with_status)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    else:
        status = 0
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return _reader_gone()
    return status


def _reader_gone() -> int:
    """
    The reader of our output went away (C{veil sites list | head}): stop
    quietly, as Unix tools do, with the status of a death by SIGPIPE.
    """
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + 13


if __name__ == "__main__":
    sys.exit(main())

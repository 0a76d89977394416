"""
The C{veil} command: operator tasks beside the running service.

    veil check-config                         validate the configuration and say what it means
    veil migrate                              apply pending schema migrations to database.url
    veil sites add DOMAIN --origin URL        add a site ([--verified] [--mode] [--allow-plain-http])
    veil sites list [--json]                  every site
    veil sites remove DOMAIN                  delete a site and everything that belongs to it
    veil sites verify DOMAIN                  check the site's DNS now ("Check now")
    veil decisions add IP|CIDR --for 1h       ban (or --type block|throttle|…) an address or network
    veil decisions list [--site D] [--all]    current decisions
    veil decisions remove ID                  delete a decision
    veil maintenance on|off [--site DOMAIN]   the maintenance switch, cluster-wide or per site
    veil maintenance status [--site DOMAIN]
    veil waf check [--site DOMAIN] FILE|-     explain the WAF's verdict on a raw HTTP request
    veil waf rules [--class C] [--json]       the signature rules

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
import math
import os
import shlex
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import redirect_stderr, redirect_stdout
from typing import IO, Any

import attrs
import psycopg
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import react

from veil import config as veil_config
from veil.commands import decisions, maintenance, sites, tokens, users, waf, wafcheck
from veil.commands.base import Handler, Stores
from veil.errors import StoreUnavailable, VeilError
from veil.store.db import Database

NOT_RUNNING = "Veil's embedded PostgreSQL is not running (start Veil first)"
#: Veil runs (it supervises the cluster) but its cluster does not answer.
EMBEDDED_DOWN = ("Veil is running (pid {pid}) but its embedded PostgreSQL does not answer"
                 " ({error}); Veil restarts it by itself: try again shortly, and see"
                 " /health (embedded-postgres) and Veil's log if it lasts")


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


Job = Callable[[Any], Awaitable[int]]


# -- configuration and connection ----------------------------------------------


def _load(args: argparse.Namespace, env: Env) -> veil_config.Config:
    return veil_config.load(args.config or env.environ.get("VEIL_CONFIG") or None, env.environ)


def _target(config: veil_config.Config) -> Target:
    if config.database.url is not None:
        return Target(config.database.url, False, config)
    from veil.store.embedded import PORT, conninfo_for, socket_dir_for

    if not (socket_dir_for(config.data_dir) / f".s.PGSQL.{PORT}").exists():
        raise _embedded_down(config, "its socket is gone")
    return Target(conninfo_for(config.data_dir), True, config)


def _embedded_down(config: veil_config.Config, error: str) -> CommandError:
    """
    The embedded cluster cannot be reached: say whether Veil is not running
    on this data directory, or runs with its cluster down (an outage).
    """
    from veil.store.embedded import supervisor_pid

    pid = supervisor_pid(config.data_dir)
    if pid is None:
        return CommandError(NOT_RUNNING)
    return CommandError(EMBEDDED_DOWN.format(pid=pid, error=error))


def _one_line(error: BaseException) -> str:
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip())


def _unreachable(target: Target, error: BaseException) -> CommandError:
    text = _one_line(error)
    if target.embedded:
        if "Permission denied" in text:
            return CommandError(
                "cannot use the socket of Veil's embedded PostgreSQL (permission denied):"
                " run veil as the user Veil runs as, or as root")
        if "No such file" in text or "Connection refused" in text:
            return _embedded_down(target.config, "its socket refuses connections")
        if isinstance(error, StoreUnavailable):
            return _embedded_down(target.config, text)
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
        args.loaded_config = target.config
        try:
            return await handler(Stores.on(db, target.config), args, env.out)
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
        from veil.store.embedded import conninfo_for, find_bindir

        bindir = find_bindir(config.embedded.bin_dir)
        print(f"database: embedded cluster, binaries in {bindir}", file=out)
        psql = bindir / "psql"
        command = shlex.quote(str(psql)) if psql.exists() else "psql"
        print(f"psql (while Veil runs, as its user): {command}"
              f" {shlex.quote(conninfo_for(config.data_dir))}", file=out)
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


#: The groups of store commands, each a module with C{register(commands)}.
GROUPS = (sites, decisions, maintenance, waf, wafcheck, users, tokens)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="veil", description="Veil operator commands")
    parser.add_argument("--config", "-c", help="TOML configuration file (also VEIL_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("check-config", help="validate the configuration").set_defaults(
        run=check_config)
    commands.add_parser("migrate", help="apply pending schema migrations").set_defaults(
        run=migrate)
    for module in GROUPS:
        module.register(commands)
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

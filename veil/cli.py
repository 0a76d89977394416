"""
The C{veil} command: operator tasks beside the running service.

    veil check-config [--config PATH]   validate the configuration and say what it means
    veil migrate [--config PATH]        apply pending schema migrations to database.url
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from veil import config as veil_config
from veil.errors import ConfigError, EmbeddedPostgresError, MigrationError


def _load(args: argparse.Namespace) -> veil_config.Config:
    return veil_config.load(args.config or os.environ.get("VEIL_CONFIG") or None)


def check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"configuration: {config.source or 'embedded defaults'}")
    print(f"data directory: {config.data_dir}")
    print(f"edge: {config.edge.address}:{config.edge.port}")
    print(f"plain HTTP: {config.http.address}:{config.http.port}")
    print(f"dashboard: http://{config.dashboard.address}:{config.dashboard.port}/")
    if config.uses_embedded_database:
        from veil.store.embedded import find_bindir

        print(f"database: embedded cluster, binaries in {find_bindir(config.embedded.bin_dir)}")
    else:
        print("database: external (database.url is set)")
    return 0


def migrate(args: argparse.Namespace) -> int:
    config = _load(args)
    if config.database.url is None:
        print("veil migrate: database.url is not set; the embedded cluster is migrated"
              " by Veil itself when it starts", file=sys.stderr)
        return 2
    from veil.store.migrate import migrate_sync

    applied = migrate_sync(config.database.url)
    print(f"applied: {', '.join(applied)}" if applied else "schema already up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="veil", description="Veil operator commands")
    parser.add_argument("--config", "-c", help="TOML configuration file (also VEIL_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check-config", help="validate the configuration").set_defaults(
        run=check_config)
    commands.add_parser("migrate", help="apply pending schema migrations").set_defaults(
        run=migrate)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, EmbeddedPostgresError, MigrationError) as e:
        print(f"veil: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""
Putting accounts together for a running Veil: the dashboard's public URL,
the L{Accounts} with its hasher, mailer and GitHub client, and the two
background jobs (recording API tokens' last use, deleting what expired).
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

from veil.auth.accounts import Accounts
from veil.auth.github import GithubClient
from veil.auth.passwords import PasswordHasher, PasswordRules
from veil.auth.store import AuthStore
from veil.config import Config, cpu_count
from veil.mail import mailer_for
from veil.store.db import Database
from veil.store.locks import LockSession
from veil.workers.base import PeriodicWorker

_log = Logger()


def public_url(config: Config, bound_port: int | None = None) -> str:
    """
    The dashboard's URL as users reach it: C{auth.public_url}; else
    C{https://dashboard.host} (with the edge's port unless 443); else the
    dashboard port's own address (loopback when it listens everywhere;
    C{bound_port} when the configured port is 0).
    """
    if config.auth.public_url:
        return config.auth.public_url
    if config.dashboard_host:
        port = "" if config.edge.port == 443 else f":{config.edge.port}"
        return f"https://{config.dashboard_host}{port}"
    address = ipaddress.ip_address(config.dashboard.address)
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    host = f"[{address}]" if address.version == 6 else str(address)
    port = bound_port if config.dashboard.port == 0 and bound_port else config.dashboard.port
    return f"http://{host}:{port}"


def make_accounts(config: Config, reactor: Any, db: Database, clock: Any = None,
                  bound_port: int | None = None) -> Accounts:
    """Everything sign-in needs, not started yet (see L{Accounts.start})."""
    url = public_url(config, bound_port)
    github = None
    if config.github.enabled:
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        github = GithubClient(config.github, http, f"{url}/auth/github/callback")
    sender = config.smtp.sender or f"veil@{config.dashboard_host or 'localhost'}"
    return Accounts(
        store=AuthStore(db),
        hasher=PasswordHasher(reactor, threads=max(1, min(4, cpu_count()))),
        rules=PasswordRules(),
        mailer=mailer_for(reactor, config.smtp, config.data_dir),
        clock=clock if clock is not None else reactor,
        config=config.auth,
        public_url=url,
        sender=sender,
        github=github,
    )


def auth_workers(accounts: Accounts, locks: LockSession, reactor: Any,
                 cleanup_every: float = 3600.0) -> list[PeriodicWorker]:
    """
    C{api-token-uses}: write the API tokens' last uses, in one statement a
    minute (this process's own, so no lock).  C{auth-cleanup}: once per
    cluster, delete idle sessions, spent links and flows, and empty
    rate-limit buckets.
    """
    async def clean() -> None:
        now = datetime.fromtimestamp(accounts.clock.seconds(), UTC)
        removed = await accounts.store.clean_up(now, accounts.idle)
        if any(removed.values()):
            _log.info("Auth clean-up removed {sessions} sessions, {links} links, {flows} flows"
                      " and {rate_limits} rate-limit buckets", **removed)

    return [
        PeriodicWorker("api-token-uses",
                       lambda: Deferred.fromCoroutine(accounts.flush_token_uses()), reactor, 60.0),
        PeriodicWorker("auth-cleanup", lambda: Deferred.fromCoroutine(clean()), reactor,
                       cleanup_every, lock=lambda: locks.try_lock("worker:auth-cleanup")),
    ]

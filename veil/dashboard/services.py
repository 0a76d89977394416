"""
What the dashboard's handlers work with.

The dashboard's port is bound before the database is reachable, so the
L{Dashboard} and its handler groups are built with a L{Services} whose
store-backed parts are filled in once start-up has reached them
(L{veil.service.VeilService}); until then the routes that need them answer
503 (L{Services.need}).  Engineers adding routes add what their handlers
need here.
"""

from __future__ import annotations

from typing import Any

import attrs

from veil.config import Config
from veil.dashboard.web import HttpError


@attrs.define(eq=False)
class Services:
    """
    @ivar config: the whole configuration.
    @ivar clock: where time comes from (C{seconds()}); tests advance it.
    @ivar reactor: for threads, timers and connections.
    @ivar accounts: sign-in, sessions and tokens (L{veil.auth.accounts.Accounts}).
    @ivar db: the L{veil.store.db.Database}.
    @ivar origins: the origin policy site owners' origins must satisfy
        (L{veil.proxy.origins.OriginPolicy}: the edge's, which knows Veil's
        own listening ports).
    @ivar sites: L{veil.store.admin.SiteAdmin}; C{decisions}:
        L{veil.store.admin.DecisionAdmin}; C{waf}: L{veil.store.waf.WafAdmin};
        C{logs}: L{veil.store.logquery.RequestLogQueries}; C{audit_log}:
        L{veil.store.admin.AuditLog} (all set by L{use_database}).
    @ivar dns: onboarding by DNS (L{veil.workers.dns.DnsVerifier}).
    @ivar live: the live stream's mount (L{veil.dashboard.live.LiveMount}).
    @ivar explainer: "why was this blocked" (L{veil.dashboard.explain.Explainer}).
    """

    config: Config
    clock: Any
    reactor: Any
    accounts: Any = None
    db: Any = None
    origins: Any = None
    sites: Any = None
    decisions: Any = None
    waf: Any = None
    logs: Any = None
    audit_log: Any = None
    dns: Any = None
    live: Any = None
    explainer: Any = None

    @property
    def store(self) -> Any:
        """The auth store (users, sessions, tokens, sites and roles, audit)."""
        return None if self.accounts is None else self.accounts.store

    def use_database(self, db: Any, origins: Any = None) -> None:
        """Build the store-backed services on C{db}."""
        from veil.proxy.origins import OriginPolicy
        from veil.store.admin import AuditLog, DecisionAdmin, SiteAdmin
        from veil.store.logquery import RequestLogQueries
        from veil.store.waf import WafAdmin

        self.db = db
        self.origins = origins if origins is not None else OriginPolicy.from_config(self.config)
        self.sites = SiteAdmin(db, self.origins)
        self.decisions = DecisionAdmin(db)
        self.waf = WafAdmin(db)
        self.logs = RequestLogQueries(db)
        self.audit_log = AuditLog(db)

    def need(self, name: str) -> Any:
        """
        The service C{name}, or a 503 (C{Retry-After}) while start-up has
        not reached it yet.
        """
        value = getattr(self, name)
        if value is None:
            raise HttpError("starting", "Veil is starting; try again in a moment.", status=503,
                            headers={"Retry-After": "5"})
        return value

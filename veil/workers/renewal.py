"""
Certificate renewal: once per cluster, renew what has reached its renewal time.

A certificate is due at C{renew_fraction} of its lifetime (two thirds by
default) or when the CA's renewal information says so.  A failed renewal
backs off per name (shared through the store) and the current certificate
keeps being served until it expires; every process swaps the new one in
when C{NOTIFY veil_certificates} arrives.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from veil.edge.certs import CertificateResolver
from veil.errors import IssuanceFailed, IssuanceRefused
from veil.store.certs import CertificateStore
from veil.store.locks import LockSession
from veil.store.sites import SiteTable
from veil.workers.base import PeriodicWorker

_log = Logger()


async def renew_due(store: CertificateStore, resolver: CertificateResolver,
                    sites: SiteTable, dashboard_host: str | None, fraction: float) -> int:
    """
    Renew every due certificate whose name is still served; return how many
    were renewed.  One name's failure does not stop the others.

    @raise IssuanceFailed: after the pass, if any renewal failed, so that
        the worker's status shows it.
    """
    renewed, failed = 0, []
    for due in await store.due_for_renewal(fraction):
        site = sites.get(due.name)
        if site is None and due.name != dashboard_host:
            _log.info("Not renewing {name}: no longer served", name=due.name)
            continue
        try:
            await resolver.renew(due, site)
        except IssuanceRefused as e:
            _log.info("Renewal of {name} deferred: {reason}", name=due.name, reason=str(e))
        except IssuanceFailed as e:
            failed.append(due.name)
            _log.error("Renewal of {name} failed; the current certificate (valid until"
                       " {not_after}) is still served: {error}", name=due.name,
                       not_after=due.not_after.isoformat(), error=str(e))
        else:
            renewed += 1
    if failed:
        raise IssuanceFailed(f"renewal failed for {', '.join(failed[:10])}")
    return renewed


def renewal_worker(store: CertificateStore, resolver: CertificateResolver, sites: SiteTable,
                   locks: LockSession, clock: IReactorTime, dashboard_host: str | None,
                   fraction: float, every: float) -> PeriodicWorker:
    """The supervised, cluster-wide renewal worker."""
    return PeriodicWorker(
        "certificate-renewal",
        lambda: Deferred.fromCoroutine(renew_due(store, resolver, sites, dashboard_host,
                                                 fraction)),
        clock, every, lock=lambda: locks.try_lock("worker:certificate-renewal"),
    )

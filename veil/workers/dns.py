"""
DNS verification: the worker that re-checks pending sites, and the entry
points the dashboard's API and the C{veil} command call.

L{DnsVerifier} holds what a check needs (the resolver, what sites must
point at, the store, the clock).  The API uses it directly:

    verifier.propose_origin(domain)        POST /api/v1/sites without an origin
    verifier.instructions(domain, token)   the DNS records in that answer
    verifier.state(site_id)                GET /api/v1/sites/{id}: status, next check, report
    verifier.check_now(site_id, actor)     POST /api/v1/sites/{id}/verify

L{dns_worker} runs L{DnsVerifier.run_due} every C{dns.check_interval}
seconds, once per cluster (advisory lock C{worker:dns-verification}): it
checks the pending sites that are due (L{veil.store.dns.Schedule}), at most
L{DnsVerifier.concurrency} at a time, and records each result.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import attrs
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from veil.dns.check import DnsSettings, Report, check_domain, dns_instructions
from veil.dns.origin import OriginProposal, propose_origin
from veil.dns.resolver import StubResolver
from veil.store.admin import SiteNotFound, normalise_domain
from veil.store.db import Database
from veil.store.dns import DnsCheckStore, DnsState, DueSite, Recorded, Schedule
from veil.store.locks import LockSession
from veil.workers.base import PeriodicWorker

_log = Logger()

LOCK_NAME = "worker:dns-verification"


@attrs.frozen
class CheckResult:
    """A check and what recording it did, for "Check now"."""

    report: Report
    recorded: Recorded

    @property
    def status(self) -> str:
        return self.recorded.status

    def to_json(self) -> dict[str, Any]:
        """
        C{{"status", "changed", "attempts", "next_check_at", "report"}}:
        the site's status after the check, whether the check changed it,
        the checks so far in this round, the worker's next check (or
        L{None}) and the report (L{Report.to_json}).
        """
        r = self.recorded
        return {"status": r.status, "changed": r.changed, "attempts": r.attempts,
                "next_check_at": None if r.next_check_at is None else r.next_check_at.isoformat(),
                "report": self.report.to_json()}

    def text(self) -> str:
        """The report and what it means for the site, for a terminal."""
        report, r = self.report, self.recorded
        domain = report.domain
        lines = [f"DNS check of {domain} (resolvers {report.resolvers}):", report.text()]
        if r.changed and r.status == "active":
            lines.append(f"{domain} is verified and now active: its certificate is issued on"
                         " the first HTTPS request for it.")
        elif r.status == "pending":
            later = ("" if r.next_check_at is None else " by itself at "
                     + r.next_check_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))
            lines.append(f"{domain} stays pending: fix what is listed above; Veil checks"
                         f" again{later}, or run this command again.")
        elif r.changed and r.status == "error":
            lines.append(f"{domain}: DNS verification has stopped (status error). Fix the"
                         " records, then run this command again.")
        else:
            verdict = ("its DNS is as Veil expects" if report.ok
                       else "its DNS no longer points at Veil as shown above")
            lines.append(f"{domain} is {r.status} ({verdict}); this check changed nothing.")
        return "\n".join(lines)


@attrs.define(eq=False)
class DnsVerifier:
    """Onboarding by DNS, for the worker, the API and the command line."""

    resolver: StubResolver
    settings: DnsSettings
    store: DnsCheckStore
    clock: IReactorTime
    concurrency: int = 10
    batch: int = 100

    @classmethod
    def from_config(cls, config: Any, db: Database, reactor: Any,
                    schedule: Schedule | None = None) -> DnsVerifier:
        """The verifier for a L{veil.config.Config}, on C{reactor}'s network and clock."""
        return cls(StubResolver.from_config(config.dns, reactor),
                   DnsSettings.from_config(config), DnsCheckStore(db, schedule), reactor)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    # -- for the API and the command line -----------------------------------

    def propose_origin(self, domain: str) -> Deferred[OriginProposal]:
        """
        The origin to propose for C{domain} from its DNS today.

        @raise veil.store.admin.InvalidValue: (at once) for a domain that is
            not a valid site domain, with the reason for the user.
        """
        return propose_origin(self.resolver, self.settings, normalise_domain(domain))

    def instructions(self, domain: str, token: str,
                     apex: bool | None = None) -> dict[str, Any]:
        """The DNS records to create (L{veil.dns.check.dns_instructions})."""
        return dns_instructions(self.settings, domain, token, apex)

    def state(self, site_id: UUID) -> Deferred[DnsState | None]:
        """The site's verification state and last report (L{None}: no such site)."""
        return self.store.state(site_id)

    def check_now(self, site_id: UUID, actor: UUID | None = None) -> Deferred[CheckResult]:
        """
        Check the site at once, record the result (a passing pending site
        becomes active) and fire with it.

        @raise veil.store.admin.SiteNotFound: (in the Deferred) for an unknown site.
        @raise veil.store.dns.CheckTooSoon: (in the Deferred) when the site
            was checked now less than C{Schedule.check_now_every} seconds ago.
        """
        return Deferred.fromCoroutine(self._check_now(site_id, actor))

    async def _check_now(self, site_id: UUID, actor: UUID | None) -> CheckResult:
        site = await self.store.claim_check_now(site_id, self.now())
        return await self._check(site, manual=True, actor=actor)

    # -- the worker -------------------------------------------------------------

    def run_due(self) -> Deferred[int]:
        """Check every pending site that is due; fire with how many were checked."""
        return Deferred.fromCoroutine(self._run_due())

    async def _run_due(self) -> int:
        due = await self.store.due(self.now(), self.batch)
        if not due:
            return 0
        limit = DeferredSemaphore(self.concurrency)
        results = await DeferredList(
            [limit.run(lambda s=site: Deferred.fromCoroutine(self._check_due(s)))
             for site in due], consumeErrors=True)
        failures = [result for ok, result in results if not ok]
        if failures:
            # Every site was tried; the first failure makes the worker back off.
            failures[0].raiseException()
        return len(due)

    async def _check_due(self, site: DueSite) -> None:
        try:
            await self._check(site)
        except SiteNotFound:
            pass  # removed since it was found due

    async def _check(self, site: DueSite, manual: bool = False,
                     actor: UUID | None = None) -> CheckResult:
        report = await check_domain(self.resolver, self.settings, site.domain,
                                    site.dns_token, self.now())
        recorded = await self.store.record(site.id, report.to_json(), report.ok,
                                           report.summary, self.now(), manual, actor)
        if recorded.changed and recorded.status == "active":
            _log.info("Site {domain} verified by DNS: it is active", domain=site.domain,
                      site_id=str(site.id), checks=recorded.attempts)
        elif recorded.changed and recorded.status == "error":
            _log.info("Gave up DNS verification of {domain}: {detail}", domain=site.domain,
                      site_id=str(site.id), detail=report.summary)
        else:
            _log.debug("DNS check of {domain}: {summary}", domain=site.domain,
                       summary=report.summary)
        return CheckResult(report, recorded)


def dns_worker(verifier: DnsVerifier, locks: LockSession, clock: IReactorTime,
               every: float) -> PeriodicWorker:
    """The supervised, cluster-wide DNS verification worker."""
    return PeriodicWorker("dns-verification", verifier.run_due, clock, every,
                          lock=lambda: locks.try_lock(LOCK_NAME))

"""
DNS verification in the store: which pending sites are due for a check,
the per-site rate limit of "Check now", and recording each check together
with the status change it causes.

A site's checks run in rounds (C{site_dns_checks}, schema 006).  A round
starts when the site is created: its first check is due L{Schedule.first}
seconds later; after the n-th failed check the next is due
C{min(first * 2 ** n, longest)} seconds later (2, 4, 8, ... minutes, then
hourly); a failed check a week (L{Schedule.give_up}) after the round
started moves the site to C{error} and ends the round.  A passing check
moves a C{pending} site to C{active} and sets C{dns_verified_at}.  "Check
now" runs the same check and leaves the schedule as it is, except that
on a site the worker gave up on it starts a new round (C{error} back to
C{pending}, or C{active} if it passes).  Sites in other statuses are
checked and reported, never changed.

Every status change goes into C{audit_log} in the same transaction, and
the C{sites} trigger announces it on C{veil_sites}, so every process's
site table follows.  Times come from the caller (the worker's clock).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
import psycopg
from psycopg.types.json import Jsonb
from twisted.internet.defer import Deferred

from veil.errors import VeilError
from veil.store.admin import SiteNotFound, _audit
from veil.store.db import Database

#: Statuses whose DNS a check can change: waiting for verification.
PENDING = "pending"


class CheckTooSoon(VeilError):
    """
    "Check now" ran for this site too recently.

    @ivar retry_after: seconds until it may run again.
    """

    def __init__(self, domain: str, retry_after: float) -> None:
        self.domain = domain
        self.retry_after = retry_after
        super().__init__(f"{domain} was checked moments ago; check again in"
                         f" {max(1, round(retry_after))} s")


@attrs.frozen
class Schedule:
    """
    When the worker checks a pending site.

    @ivar first: seconds from the site's creation to its first check.
    @ivar longest: the longest wait between two checks.
    @ivar give_up: seconds after a round started when a failed check ends it.
    @ivar check_now_every: "Check now" runs at most this often per site.
    """

    first: float = 60.0
    longest: float = 3600.0
    give_up: float = 7 * 86400.0
    check_now_every: float = 10.0

    def delay(self, checks: int) -> float:
        """Seconds from the C{checks}-th failed check to the next one."""
        return min(self.longest, self.first * 2.0 ** min(checks, 40))


@attrs.frozen
class DueSite:
    """A site to check."""

    id: UUID
    domain: str
    dns_token: str


@attrs.frozen
class Recorded:
    """
    What recording a check did.

    @ivar status: the site's status afterwards.
    @ivar changed: whether this check changed it.
    @ivar attempts: checks in the current round, this one included.
    @ivar next_check_at: the worker's next check (L{None}: none planned).
    @ivar started_at: when the round began.
    """

    status: str
    changed: bool
    attempts: int
    next_check_at: datetime | None
    started_at: datetime
    status_detail: str | None


@attrs.frozen
class DnsState:
    """A site's verification state, for the dashboard's site page."""

    site_id: UUID
    domain: str
    status: str
    status_detail: str | None
    dns_verified_at: datetime | None
    started_at: datetime | None
    attempts: int
    last_checked_at: datetime | None
    next_check_at: datetime | None
    gave_up_at: datetime | None
    last_report: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        def iso(moment: datetime | None) -> str | None:
            return None if moment is None else moment.isoformat()

        return {
            "site_id": str(self.site_id), "domain": self.domain, "status": self.status,
            "status_detail": self.status_detail, "dns_verified_at": iso(self.dns_verified_at),
            "started_at": iso(self.started_at), "attempts": self.attempts,
            "last_checked_at": iso(self.last_checked_at),
            "next_check_at": iso(self.next_check_at), "gave_up_at": iso(self.gave_up_at),
            "last_report": self.last_report,
        }


# -- transactions (on a database thread) ----------------------------------------


def _due(cur: psycopg.Cursor, now: datetime, first: float, limit: int) -> list[DueSite]:
    cur.execute(
        "SELECT s.id, s.domain, s.dns_token FROM sites s"
        " LEFT JOIN site_dns_checks c ON c.site_id = s.id"
        " WHERE s.status = 'pending' AND coalesce(c.next_check_at,"
        "   s.created_at + make_interval(secs => %s)) <= %s"
        " ORDER BY coalesce(c.next_check_at, s.created_at + make_interval(secs => %s)), s.id"
        " LIMIT %s",
        (first, now, first, limit))
    return [DueSite(*row) for row in cur.fetchall()]


def _claim_check_now(cur: psycopg.Cursor, site_id: UUID, now: datetime,
                     every: float) -> DueSite:
    cur.execute("SELECT domain, dns_token, created_at FROM sites WHERE id = %s FOR UPDATE",
                (site_id,))
    row = cur.fetchone()
    if row is None:
        raise SiteNotFound(str(site_id))
    domain, token, created = row
    cur.execute("SELECT last_manual_at FROM site_dns_checks WHERE site_id = %s FOR UPDATE",
                (site_id,))
    state = cur.fetchone()
    if state is not None and state[0] is not None:
        wait = every - (now - state[0]).total_seconds()
        if wait > 0:
            raise CheckTooSoon(domain, wait)
    cur.execute(
        "INSERT INTO site_dns_checks (site_id, started_at, last_manual_at) VALUES (%s, %s, %s)"
        " ON CONFLICT (site_id) DO UPDATE SET last_manual_at = EXCLUDED.last_manual_at",
        (site_id, created, now))
    return DueSite(site_id, domain, token)


def _record(cur: psycopg.Cursor, site_id: UUID, report: dict[str, Any], ok: bool,
            summary: str, now: datetime, manual: bool, actor: UUID | None,
            schedule: Schedule) -> Recorded:
    cur.execute("SELECT domain, status, status_detail, created_at FROM sites"
                " WHERE id = %s FOR UPDATE", (site_id,))
    row = cur.fetchone()
    if row is None:
        raise SiteNotFound(str(site_id))
    domain, status, detail, created = row
    cur.execute("SELECT started_at, attempts, next_check_at, gave_up_at FROM site_dns_checks"
                " WHERE site_id = %s FOR UPDATE", (site_id,))
    state = cur.fetchone()
    started, attempts, next_at, gave_up = state if state is not None else (created, 0, None,
                                                                           None)
    given_up = status == "error" and gave_up is not None
    if (given_up and manual) or (status == PENDING and gave_up is not None):
        started, attempts, gave_up = now, 0, None   # a new round
    attempts += 1
    new_status, new_detail, audit = status, detail, None
    if status != PENDING and not (given_up and manual):
        next_at = None                              # checked and reported only
    elif ok:
        new_status, new_detail, next_at = "active", summary, None
        audit = "site.dns_verified"
    elif status == PENDING and (now - started).total_seconds() >= schedule.give_up:
        days = schedule.give_up / 86400
        new_status, next_at, gave_up = "error", None, now
        new_detail = (f"DNS verification stopped after {days:g} days without success:"
                      f" {summary} Fix the records and use Check now to try again.")
        audit = "site.dns_gave_up"
    else:
        new_status, new_detail = PENDING, summary
        if given_up:
            audit = "site.dns_restarted"
        if next_at is None or not manual:
            next_at = now + timedelta(seconds=schedule.delay(attempts))
    if (new_status, new_detail) != (status, detail):
        cur.execute(
            "UPDATE sites SET status = %s, status_detail = %s, dns_checked_at = %s,"
            " dns_verified_at = CASE WHEN %s THEN %s ELSE dns_verified_at END WHERE id = %s",
            (new_status, new_detail, now, new_status == "active", now, site_id))
    else:
        cur.execute("UPDATE sites SET dns_checked_at = %s WHERE id = %s", (now, site_id))
    cur.execute(
        "INSERT INTO site_dns_checks (site_id, started_at, attempts, last_checked_at,"
        " next_check_at, last_ok, last_report, gave_up_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (site_id) DO UPDATE SET started_at = EXCLUDED.started_at,"
        " attempts = EXCLUDED.attempts, last_checked_at = EXCLUDED.last_checked_at,"
        " next_check_at = EXCLUDED.next_check_at, last_ok = EXCLUDED.last_ok,"
        " last_report = EXCLUDED.last_report, gave_up_at = EXCLUDED.gave_up_at",
        (site_id, started, attempts, now, next_at, ok, Jsonb(report), gave_up))
    if audit is not None:
        _audit(cur, actor, audit, "site", str(site_id),
               {"domain": domain, "from": status, "to": new_status, "checks": attempts,
                "manual": manual})
    return Recorded(new_status, new_status != status, attempts, next_at, started, new_detail)


def _state(cur: psycopg.Cursor, site_id: UUID, first: float) -> DnsState | None:
    cur.execute(
        "SELECT s.id, s.domain, s.status, s.status_detail, s.dns_verified_at,"
        " coalesce(c.started_at, s.created_at), coalesce(c.attempts, 0), c.last_checked_at,"
        " CASE WHEN c.site_id IS NULL AND s.status = 'pending'"
        "   THEN s.created_at + make_interval(secs => %s) ELSE c.next_check_at END,"
        " c.gave_up_at, c.last_report"
        " FROM sites s LEFT JOIN site_dns_checks c ON c.site_id = s.id WHERE s.id = %s",
        (first, site_id))
    row = cur.fetchone()
    return None if row is None else DnsState(*row)


# -- the store API --------------------------------------------------------------


class DnsCheckStore:
    """The DNS worker's and "Check now"'s queries, as Deferreds."""

    def __init__(self, db: Database, schedule: Schedule | None = None) -> None:
        self._db = db
        self.schedule = schedule or Schedule()

    def due(self, now: datetime, limit: int = 200) -> Deferred[list[DueSite]]:
        """Pending sites whose next check is due at C{now}, longest waiting first."""
        return self._db.transact("dns.due", _due, now, self.schedule.first, limit)

    def claim_check_now(self, site_id: UUID, now: datetime) -> Deferred[DueSite]:
        """
        Take the site's "Check now" turn.

        @raise SiteNotFound: (in the Deferred) for an unknown site.
        @raise CheckTooSoon: (in the Deferred) within C{check_now_every}
            seconds of the last one.
        """
        return self._db.transact("dns.claim_check_now", _claim_check_now, site_id, now,
                                 self.schedule.check_now_every)

    def record(self, site_id: UUID, report: dict[str, Any], ok: bool, summary: str,
               now: datetime, manual: bool = False,
               actor: UUID | None = None) -> Deferred[Recorded]:
        """Store a check's report and make the status change it calls for."""
        return self._db.transact("dns.record", _record, site_id, report, ok, summary, now,
                                 manual, actor, self.schedule)

    def state(self, site_id: UUID) -> Deferred[DnsState | None]:
        """The site's verification state (L{None} for an unknown site)."""
        return self._db.transact("dns.state", _state, site_id, self.schedule.first)

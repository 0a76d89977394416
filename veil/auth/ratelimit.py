"""
Rate limits shared by every process and node: GCRA in PostgreSQL.

The generic cell rate algorithm keeps one timestamp per bucket, its
theoretical arrival time (TAT).  With emission interval C{T} and burst
C{b}, a hit at C{now} is allowed when C{max(TAT, now) + T - now <= b * T};
the TAT then moves on by C{T}.  One upsert per tier does the check and the
update atomically, so concurrent hits from any number of processes are
counted exactly (RFC-free, but see auth.md section 6.8 for the SQL's
origin and its test on PostgreSQL 15).

A L{Limit} has one or more tiers, checked together: all are charged or
none.  Tiers give growing delays without a lock-out: failed sign-ins for
an account get 5 at once and then one a minute (tier 1), and past 20 in a
row only one an hour (tier 2); waiting always opens the door again, and
magic links and GitHub stay open while passwords wait.

Bucket keys are C{limit:tier:HMAC(server key, value)}: no address or
account name is stored.  IPv6 addresses are limited per /64.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime, timedelta

import attrs
import psycopg
from twisted.internet.defer import Deferred

from veil.auth.credentials import b64url, keyed
from veil.store.db import Database


@attrs.frozen
class Tier:
    """C{burst} hits at once, then one per C{every} seconds."""

    burst: int
    every: float


@attrs.frozen
class Limit:
    name: str
    tiers: tuple[Tier, ...]


#: The limits of the dashboard's sign-in paths (docs/dashboard.md lists them).
LOGIN_FAILURES_ACCOUNT = Limit("login-fail-account", (Tier(5, 60.0), Tier(20, 3600.0)))
LOGIN_FAILURES_IP = Limit("login-fail-ip", (Tier(10, 30.0), Tier(100, 600.0)))
MAGIC_LINK_ADDRESS = Limit("magic-address", (Tier(3, 300.0),))
MAGIC_LINK_IP = Limit("magic-ip", (Tier(10, 60.0),))
LINK_USE_IP = Limit("link-use-ip", (Tier(20, 15.0),))
GITHUB_IP = Limit("github-ip", (Tier(20, 10.0),))
BEARER_FAILURES_IP = Limit("bearer-fail-ip", (Tier(30, 2.0),))
ACCOUNT_CHANGES = Limit("account-changes", (Tier(10, 60.0),))


def ip_bucket(address: str) -> str:
    """The part of an address a limit applies to: all of IPv4, the /64 of IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class _Refused(Exception):
    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after


def _hit(cur: psycopg.Cursor, keys: Sequence[str], tiers: Sequence[Tier],
         now: datetime) -> float | None:
    """Charge every tier, or none: the seconds to wait, or L{None} when allowed."""
    waits = []
    for key, tier in zip(keys, tiers):
        interval = timedelta(seconds=tier.every)
        tolerance = interval * (tier.burst - 1)
        cur.execute(
            "INSERT INTO rate_limits AS r (key, tat) VALUES (%(key)s, %(now)s + %(t)s)"
            " ON CONFLICT (key) DO UPDATE SET tat = greatest(r.tat, %(now)s) + %(t)s"
            " WHERE greatest(r.tat, %(now)s) - %(now)s <= %(tau)s"
            " RETURNING tat",
            {"key": key, "now": now, "t": interval, "tau": tolerance})
        if cur.fetchone() is None:
            cur.execute("SELECT tat FROM rate_limits WHERE key = %s", (key,))
            tat = cur.fetchone()[0]
            waits.append(max(0.0, (tat - tolerance - now).total_seconds()))
    if waits:
        # Raising rolls the transaction back: the tiers that allowed the
        # hit are not charged either.
        raise _Refused(max(waits))
    return None


def _refund(cur: psycopg.Cursor, keys: Sequence[str], tiers: Sequence[Tier]) -> None:
    for key, tier in zip(keys, tiers):
        cur.execute("UPDATE rate_limits SET tat = tat - %s WHERE key = %s",
                    (timedelta(seconds=tier.every), key))


def _reset(cur: psycopg.Cursor, keys: Sequence[str]) -> None:
    cur.execute("DELETE FROM rate_limits WHERE key = ANY(%s)", (list(keys),))


class RateLimiter:
    """
    L{Limit}s over the C{rate_limits} table.

    @param key: the server's secret, which keys the bucket names.
    """

    def __init__(self, db: Database, key: bytes) -> None:
        self._db = db
        self._key = key

    def _keys(self, limit: Limit, value: str) -> list[str]:
        tag = b64url(keyed(self._key, "rate-limit", f"{limit.name}\x00{value}"))[:22]
        return [f"{limit.name}:{index}:{tag}" for index in range(len(limit.tiers))]

    def hit(self, limit: Limit, value: str, now: datetime) -> Deferred[float | None]:
        """
        Count one hit of C{value} (an address, an account) against C{limit};
        fires with L{None} when it is allowed, else with the seconds to wait
        (and nothing is charged).
        """
        keys = self._keys(limit, value)

        def run(cur: psycopg.Cursor) -> float | None:
            return _hit(cur, keys, limit.tiers, now)

        async def attempt() -> float | None:
            try:
                return await self._db.transact(f"ratelimit.{limit.name}", run)
            except _Refused as refused:
                return refused.retry_after

        return Deferred.fromCoroutine(attempt())

    def refund(self, limit: Limit, value: str) -> Deferred[None]:
        """Give back one hit (a sign-in that turned out not to fail)."""
        keys = self._keys(limit, value)
        return self._db.transact(f"ratelimit.{limit.name}.refund", _refund, keys, limit.tiers)

    def reset(self, limit: Limit, value: str) -> Deferred[None]:
        """Forget every hit of C{value} (an account that has just signed in)."""
        return self._db.transact(f"ratelimit.{limit.name}.reset", _reset,
                                 self._keys(limit, value))

    def __repr__(self) -> str:
        return "<RateLimiter>"


def retry_after_header(seconds: float) -> str:
    """A C{Retry-After} value: whole seconds, at least 1."""
    return str(max(1, int(seconds + 0.999)))


"""
Who may get a certificate on demand, and how fast.

Only host names of sites whose DNS is verified (status C{active},
C{ssl_provisioning} or C{live}) and the configured dashboard host qualify;
every other name is refused before any CA traffic.  A name whose issuance
failed backs off exponentially, and a global token bucket caps issuances
per minute, so a failing or hostile stream of names never becomes a storm
of CA orders.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.interfaces import IReactorTime

from veil.errors import IssuanceRefused
from veil.store.sites import Site


@attrs.define(eq=False)
class IssuancePolicy:
    """
    @ivar per_minute: issuances allowed per minute in this process (the
        bucket holds as many, and refills continuously).
    @ivar backoff_base: seconds to wait after a first failure; doubles with
        each further failure up to C{backoff_max}.
    """

    sites: Callable[[str], Site | None]
    dashboard_host: str | None
    clock: IReactorTime
    per_minute: float = 60.0
    backoff_base: float = 60.0
    backoff_max: float = 6 * 3600.0
    _tokens: float = attrs.field(init=False)
    _refilled: float = attrs.field(init=False)
    _failures: dict[str, tuple[int, float]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self._tokens = self.per_minute
        self._refilled = self.clock.seconds()

    def check_name(self, name: str) -> Site | None:
        """
        Refuse a name that may not have a certificate.

        @return: the site the name belongs to (L{None} for the dashboard).
        @raise IssuanceRefused: for unknown names and unverified sites.
        """
        if self.dashboard_host is not None and name == self.dashboard_host:
            return None
        site = self.sites(name)
        if site is None:
            raise IssuanceRefused(f"{name} is not a site served by Veil")
        if not site.dns_verified:
            raise IssuanceRefused(f"{name}: DNS not verified (site status {site.status})")
        return site

    def check_rate(self, name: str) -> None:
        """
        Refuse an issuance now if the name is backing off or the global
        rate is exhausted; otherwise take one token.

        @raise IssuanceRefused: saying when to try again.
        """
        now = self.clock.seconds()
        failed = self._failures.get(name)
        if failed is not None and now < failed[1]:
            raise IssuanceRefused(
                f"{name}: issuance failed {failed[0]} time(s); next attempt in"
                f" {failed[1] - now:.0f} s")
        self._tokens = min(self.per_minute,
                           self._tokens + (now - self._refilled) * self.per_minute / 60.0)
        self._refilled = now
        if self._tokens < 1.0:
            raise IssuanceRefused("issuance rate limit reached; try again shortly")
        self._tokens -= 1.0

    def retry_delay(self, failures: int) -> float:
        return min(self.backoff_max, self.backoff_base * 2 ** max(0, failures - 1))

    def failed(self, name: str, failures: int | None = None) -> float:
        """
        Record a failure (C{failures} as counted in the store when known);
        return the seconds until the next attempt.
        """
        count = failures if failures is not None else self._failures.get(name, (0, 0.0))[0] + 1
        delay = self.retry_delay(count)
        self._failures[name] = (count, self.clock.seconds() + delay)
        return delay

    def backing_off(self, name: str, failures: int, until: float) -> None:
        """Adopt a back-off another process or node recorded for C{name}."""
        self._failures[name] = (failures, until)

    def succeeded(self, name: str) -> None:
        self._failures.pop(name, None)

"""
The WAF pipeline: ordered, in-memory stages run for every request.

DESIGN §6 orders them: (1) IP decisions and threat-intel tiers, (2)
behaviour, (3) endpoint profile, (4) signature classifier, (5) the site's
mode.  Each stage is a plain function of the exchange returning a
L{Verdict} (answer now instead of proxying) or L{None} (go on); the
pipeline runs them in order and stops at the first verdict.  Only the
first stage exists so far; the others slot in without touching the proxy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from veil.proxy.server import Verdict
from veil.waf.decisions import DecisionTable

Stage = Callable[[Any], Verdict | None]

#: How long a throttled client is told to wait, in seconds.
THROTTLE_RETRY_AFTER = 60


def ip_decisions(table: DecisionTable) -> Stage:
    """
    Stage 1: the client address against the decisions in force (exact IPs
    and CIDRs, global or for the site).  C{ban} and C{block} answer 403,
    C{throttle} 429 with C{Retry-After}; C{log_only} and C{scrutinize} let
    the request through (the later stages and the request log use them).
    """
    def stage(exchange: Any) -> Verdict | None:
        site = exchange.site
        decision = table.match(exchange.client_ip, site.id if site is not None else None)
        if decision is None:
            return None
        if decision.type in ("ban", "block"):
            return Verdict(403, reason=f"ip decision {decision.type}")
        if decision.type == "throttle":
            return Verdict(429, retry_after=THROTTLE_RETRY_AFTER, reason="ip decision throttle")
        return None

    return stage


def pipeline(stages: Sequence[Stage]) -> Stage:
    """Run C{stages} in order; the first verdict wins."""
    ordered = tuple(stages)

    def run(exchange: Any) -> Verdict | None:
        for stage in ordered:
            verdict = stage(exchange)
            if verdict is not None:
                return verdict
        return None

    return run

"""
L{veil.waf.pipeline.Firewall} in a real proxy on loopback, without the rest
of Veil: what it inspects of a held body, and what happens when the engine
itself fails.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import TestCase

from tests.integration.test_proxy import Response, site
from tests.support.origin import client_threads
from tests.support.wafsite import exchange, listen_recording_origin, post
from veil.metrics import Registry
from veil.proxy.server import ProxyFactory
from veil.proxy.upstream import OriginPool
from veil.waf.decisions import DecisionStore, DecisionTable
from veil.waf.engine import Engine
from veil.waf.pipeline import Firewall
from veil.waf.policy import SitePolicy
from veil.waf.request import Request
from veil.waf.verdict import Verdict

_engine: list[Engine] = []


def engine() -> Engine:
    """The package's rules, compiled once for this module's tests."""
    if not _engine:
        _engine.append(Engine())
    return _engine[0]


class BrokenEngine(Engine):
    """An engine with a bug: inspecting raises (there is no other way to make one fail)."""

    def __init__(self) -> None:
        super().__init__(rules=[])

    def inspect(self, request: Request, policy: SitePolicy, boost: int = 0,
                explain: bool = False) -> Verdict:
        raise ZeroDivisionError("a bug")


class Policies(dict):
    """Sites' policies by site id (what L{veil.store.policies.PolicyTable} holds)."""

    def get(self, site_id: uuid.UUID) -> SitePolicy:  # type: ignore[override]
        return self[site_id]


class FirewallCase(TestCase):
    timeout = 60

    def start(self, inspector: Engine, **policy: Any) -> None:
        self.origin, upstream = listen_recording_origin(self)
        self.sites = {name: site(name, upstream) for name in ("block.test", "watch.test")}
        self.policies = Policies({
            self.sites["block.test"].id: SitePolicy(self.sites["block.test"].id, **policy),
            self.sites["watch.test"].id: SitePolicy(self.sites["watch.test"].id, mode="monitor",
                                                    **policy)})
        firewall = Firewall(DecisionTable(DecisionStore(None), reactor), self.policies,
                            inspector, clock=reactor)
        pool = OriginPool(reactor, connect_timeout=2.0, response_timeout=10.0)
        self.addCleanup(pool.close)
        self.rows: list = []
        factory = ProxyFactory(reactor, self.sites.get, pool, self.rows.append, Registry(),
                               scheme="http", inspect=firewall.head, inspect_body=firewall.body,
                               inspect_body_limit=firewall.body_limit)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.threads = client_threads(self, "test-waf-firewall")

    def send(self, data: bytes) -> Deferred[Response]:
        return deferToThreadPool(reactor, self.threads, exchange, self.port, data, None)


class HeldPrefixTests(FirewallCase):
    """What the body hook inspects is the site's limit, whatever one read brought."""

    async def test_prefix_cut_at_the_limit(self) -> None:
        """
        With a 64-byte limit, a body that arrives in one read is inspected on
        its first 64 bytes only (an attack after them is forwarded, one in
        them refused), as it would be had it trickled in.
        """
        self.start(engine(), inspect_body_limit=64)
        padding = b"note=" + b"a" * 70
        late = padding + b"&q=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
        early = b"q=%3Cscript%3Ealert(1)%3C%2Fscript%3E&" + padding
        statuses = []
        for body in (late, early):
            response = await self.send(post("/form", "block.test",
                                            "application/x-www-form-urlencoded", body))
            statuses.append(response.status)
        self.assertEqual(statuses, [200, 403])
        self.assertEqual([r.body for r in self.origin.received], [late])


class EngineFailureTests(FirewallCase):
    """A bug in the engine is logged, and the request treated as not cleared."""

    async def test_fails_closed_in_block_mode(self) -> None:
        """
        When inspecting raises, a site in block mode refuses the request
        (403), a site in monitor mode forwards it; both rows say suspicious
        by the signature stage; the failure is logged.
        """
        self.start(BrokenEngine())
        blocked = await self.send(b"GET /?a=1 HTTP/1.1\r\nHost: block.test\r\n\r\n")
        watched = await self.send(b"GET /?a=1 HTTP/1.1\r\nHost: watch.test\r\n\r\n")
        self.assertEqual((blocked.status, watched.status), (403, 200))
        self.assertEqual([(r.classification, r.classifier, r.blocked) for r in self.rows],
                         [("suspicious", "signature", True), ("suspicious", "signature", False)])
        self.assertEqual(len(self.origin.received), 1)
        # One logged failure: the second within the minute is held back.
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

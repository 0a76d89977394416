"""
The proxy as the configuration says: its origin pool (with the origin
policy as the pool's guard) and its factory, from the C{proxy.*} keys and
C{waf.inspect_body_limit}.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet._sslverify import IOpenSSLTrustRoot

from veil.config import Config
from veil.metrics import Registry
from veil.proxy.origins import OriginPolicy
from veil.proxy.server import Exchange, ProxyFactory, Verdict
from veil.proxy.upstream import OriginPool
from veil.store.requestlog import LogRow
from veil.store.sites import Site


def via_name(config: Config) -> str:
    """
    This Veil's pseudonym in C{Via}: C{proxy.via_name}, or one made from the
    host name and the data directory, so that every process of one Veil
    shares it (a request that comes back to any of them is a loop at once)
    and two Veils on one machine do not.  The host name itself is not told.
    """
    if config.proxy.via_name:
        return config.proxy.via_name
    seed = f"{socket.gethostname()}\0{config.data_dir}".encode()
    return "veil-" + hashlib.sha256(seed).hexdigest()[:10]


def make_proxy(config: Config, reactor: Any, sites: Callable[[str], Site | None],
               log: Callable[[LogRow], None], metrics: Registry, *, policy: OriginPolicy,
               scheme: str = "https", trust_root: IOpenSSLTrustRoot | None = None,
               inspect: Callable[[Exchange], Verdict | None] | None = None,
               inspect_body: Callable[[Exchange], Verdict | None] | None = None,
               inspect_body_limit: Callable[[Site], int] | None = None,
               ) -> tuple[OriginPool, ProxyFactory]:
    """
    The origin pool and the proxy factory for C{config}.

    @param policy: the origin policy (L{OriginPolicy.from_config}, plus the
        addresses Veil is bound to), checked at every origin connection.
    @param inspect_body_limit: the body bytes held for a site's request;
        default: C{waf.inspect_body_limit} for every site.
    """
    proxy = config.proxy
    origins = OriginPool(reactor, max_per_origin=proxy.origin_pool_size, trust_root=trust_root,
                         guard=policy.refusal)
    if inspect_body_limit is None:
        limit = proxy.inspect_body_limit

        def inspect_body_limit(site: Site) -> int:
            return limit
    factory = ProxyFactory(
        reactor, sites, origins, log, metrics, scheme=scheme, inspect=inspect,
        inspect_body=inspect_body, inspect_body_limit=inspect_body_limit,
        body_budget=proxy.body_budget, body_timeout=proxy.body_timeout,
        body_min_rate=float(proxy.body_min_rate), body_grace=proxy.body_grace,
        send_timeout=proxy.send_timeout, client_requests=proxy.max_client_requests,
        via=via_name(config))
    return origins, factory

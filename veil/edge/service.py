"""
The edge as a whole: its two ports and what stands behind them.

L{Edge.bind} opens the TLS port and the plain-HTTP port early (so that a
port in use stops Veil at once); until L{Edge.start} has run, handshakes
are refused and plain requests find no site.  L{Edge.start} runs once the
database is ready: it loads the site table, sets up the certificate
authority (the internal CA, or an ACME account), the resolver and the
renewal worker, and subscribes the caches to their NOTIFY channels.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.resource import IResource

from veil.acme.internal_ca import InternalCA
from veil.acme.issue import AcmeIssuer, InternalIssuer, Issuer, StoreResponder
from veil.config import Config
from veil.edge.apps import AppRouter
from veil.edge.certs import CertificateResolver
from veil.edge.hello import ClientHello
from veil.edge.keys import split_chain
from veil.edge.plain import PlainHTTP, PlainPort
from veil.edge.policy import IssuancePolicy
from veil.edge.protocol import EdgeFactory
from veil.errors import IssuanceFailed, StoreUnavailable
from veil.metrics import Registry
from veil.proxy.origins import OriginPolicy
from veil.proxy.server import DRAIN_TIMEOUT
from veil.proxy.setup import make_proxy
from veil.proxy.upstream import OriginPool, SystemAndExtraRoots
from veil.secretbox import SecretBox
from veil.store.certs import CertificateStore
from veil.store.db import Database
from veil.store.listener import ListenerService
from veil.store.locks import LockSession
from veil.store.requestlog import LogRow
from veil.store.settings import SettingsStore, SettingsTable
from veil.store.sites import Site, SiteStore, SiteTable
from veil.tcp import listen_tcp
from veil.waf.decisions import DecisionStore, DecisionTable
from veil.waf.engine import Engine
from veil.waf.pipeline import Firewall, Policies
from veil.workers.base import PeriodicWorker
from veil.workers.renewal import renewal_worker

_log = Logger()


class Edge:
    """
    @ivar ca: the internal CA, in C{tls.mode = "internal"}.
    @ivar resolver: the certificate resolver, once started.
    """

    def __init__(self, config: Config, reactor: Any, metrics: Registry,
                 dashboard: IResource) -> None:
        self.config = config
        self.reactor = reactor
        self.metrics = metrics
        self.dashboard = dashboard
        self.sites: SiteTable | None = None
        self.resolver: CertificateResolver | None = None
        self.responder: StoreResponder | None = None
        self.ca: InternalCA | None = None
        self.ports: dict[str, Any] = {}
        self.decisions: DecisionTable | None = None
        #: The WAF's stages, once started.
        self.firewall: Firewall | None = None
        self.origins: OriginPool | None = None
        self._http_pool: HTTPConnectionPool | None = None
        self._router = AppRouter(self._site, dashboard, config.dashboard_host, clock=reactor)
        #: Which origins the proxy may connect to; it learns the ports Veil is bound to.
        self.origin_policy = OriginPolicy.from_config(config)

    # -- lookups that work before start() -------------------------------------

    def _site(self, host: str) -> Site | None:
        return None if self.sites is None else self.sites.get(host)

    def _resolve(self, hello: ClientHello) -> Any:
        if self.resolver is None:
            raise IssuanceFailed("Veil is still starting")
        return self.resolver.resolve(hello)

    def _http01(self, token: str) -> Deferred[str | None]:
        if self.responder is not None:
            return self.responder.http01(token)
        if self.resolver is not None:
            # Started without an ACME account (tls.mode = "internal"): no
            # CA ever asks, so there is no such challenge (a 404).
            return succeed(None)
        return fail(StoreUnavailable("Veil is still starting"))

    # -- life cycle ----------------------------------------------------------

    def bind(self, listen: Callable[[str, Any], Any] | None = None) -> None:
        """
        Listen on the TLS and plain-HTTP ports: with C{listen(name, factory)}
        (see L{veil.sockets.Listeners}), or else on the configured addresses.
        """
        if listen is None:
            listen = self._listen_tcp
        self.ports["edge"] = listen("edge", self.edge_factory())
        self.ports["http"] = listen("http", self.plain_factory())
        self.origin_policy.add_listeners(port.getHost() for port in self.ports.values())
        for name, port in self.ports.items():
            host = port.getHost()
            _log.info("Edge {kind} port on {address}:{port}", kind=name, address=host.host,
                      port=host.port)

    def _listen_tcp(self, name: str, factory: Any) -> Any:
        address = getattr(self.config, name)
        return listen_tcp(self.reactor, address.port, factory, interface=address.address,
                          backlog=1024)

    def edge_factory(self) -> Any:
        """The factory behind the TLS port."""
        return EdgeFactory(self._resolve, self._router.factory_for, self.reactor, self.metrics)

    def plain_factory(self) -> Any:
        """The factory behind the plain-HTTP port."""
        plain = PlainHTTP(self._site, self._http01, self.config.edge.port,
                          self.config.dashboard_host, clock=self.reactor)
        return PlainPort(plain, lambda: self._router.proxy)

    async def start(self, db: Database, locks: LockSession, listener: ListenerService,
                    request_log: Callable[[LogRow], None], *, policies: Policies,
                    engine: Engine | None) -> list[PeriodicWorker]:
        """
        Set up the caches, the CA, the resolver and the proxy; return the
        workers to run.

        @param policies: every site's WAF policy (kept current by the caller).
        @param engine: the compiled signature engine, or L{None} for the IP
            stage alone (C{waf.enabled = false}).
        """
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        box = (SecretBox.from_key(config.tls.secrets_key) if config.tls.secrets_key
               else SecretBox.load_or_create(config.data_dir / "secrets.key"))
        store = CertificateStore(db, box)
        site_store = SiteStore(db)
        sites = SiteTable(site_store, self.reactor)
        sites.subscribe(listener)
        await sites.reload()
        self.sites = sites

        issuer = self._issuer(store)
        policy = IssuancePolicy(sites.get, config.dashboard_host, self.reactor,
                                per_minute=config.tls.issuance_per_minute,
                                backoff_base=config.tls.failure_backoff)
        resolver = CertificateResolver(
            store=store, issuer=issuer, policy=policy, locks=locks, sites=site_store,
            clock=self.reactor, metrics=self.metrics, responder=self.responder,
            key_type=config.tls.key_type, cache_size=config.tls.cache_size)
        resolver.follow(listener)
        self.resolver = resolver

        decisions = DecisionTable(DecisionStore(db), self.reactor)
        decisions.subscribe(listener)
        await decisions.reload()
        self.decisions = decisions
        settings = self.settings = SettingsTable(SettingsStore(db), self.reactor)
        settings.subscribe(listener)
        await settings.reload()
        roots = None
        if config.origin_ca_bundle is not None:
            roots = SystemAndExtraRoots(split_chain(config.origin_ca_bundle.read_bytes()))
        firewall = self.firewall = Firewall(decisions, policies, engine, clock=self.reactor,
                                            metrics=self.metrics)
        self.origins, proxy = make_proxy(
            config, self.reactor, sites.get, request_log, self.metrics,
            policy=self.origin_policy, trust_root=roots, inspect=firewall.head,
            inspect_body=firewall.body if engine is not None else None,
            inspect_body_limit=firewall.body_limit)
        proxy.maintenance = settings.maintenance
        settings.on_change(lambda table: setattr(proxy, "maintenance", table.maintenance))
        self._router.proxy = proxy
        return [
            settings.refresher(every=60.0),
            decisions.refresher(every=60.0),
            PeriodicWorker("decision-expiry", decisions.prune, self.reactor, every=5.0),
            renewal_worker(store, resolver, sites, locks, self.reactor, config.dashboard_host,
                           config.tls.renew_fraction, config.tls.renewal_interval),
            sites.refresher(every=60.0),
            resolver.refresher(every=3600.0),
        ]

    def _issuer(self, store: CertificateStore) -> Issuer:
        config = self.config
        if config.tls.mode == "internal":
            self.ca = InternalCA.load_or_create(config.data_dir / "ca", self.reactor)
            _log.info(
                "Internal CA: certificates are signed by the root in {path}; clients trust it"
                " with e.g. curl --cacert {path}\n{pem}",
                path=str(self.ca.root_path), pem=self.ca.root_pem.decode("ascii"))
            return InternalIssuer(self.ca, lifetime=timedelta(days=config.tls.internal_lifetime_days))
        acme = config.acme
        assert acme.directory_url is not None
        self.responder = StoreResponder(store, supported_types=acme.challenges)
        eab = None
        if acme.eab_kid and acme.eab_hmac_key:
            eab = (acme.eab_kid, base64.urlsafe_b64decode(acme.eab_hmac_key + "=="))
        return AcmeIssuer(
            http=self._acme_http(acme.ca_bundle), directory_url=acme.directory_url,
            email=acme.email, agree_tos=acme.agree_tos, store=store,
            responder=self.responder, clock=self.reactor, eab=eab, preferred=acme.challenges)

    def _acme_http(self, ca_bundle: Path | None) -> HTTPClient:
        policy = BrowserLikePolicyForHTTPS()
        if ca_bundle is not None:
            roots = [Certificate.loadPEM(pem) for pem in split_chain(ca_bundle.read_bytes())]
            policy = BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(roots))
        pool = self._http_pool = HTTPConnectionPool(self.reactor, persistent=True)
        pool.maxPersistentPerHost = 4
        return HTTPClient(Agent(self.reactor, contextFactory=policy, pool=pool,
                                connectTimeout=10))

    async def stop(self) -> None:
        for port in self.ports.values():
            await port.stopListening()
        self.ports.clear()
        if self._router.proxy is not None:
            await self._router.proxy.drain(DRAIN_TIMEOUT)
        if self.origins is not None:
            await self.origins.close()
        if self.resolver is not None:
            self.resolver.close()
        if self._http_pool is not None:
            await self._http_pool.closeCachedConnections()

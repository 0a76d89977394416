"""
L{VeilService}: the whole process, started and stopped in order.

Start-up: the dashboard port is bound first (in C{privilegedStartService},
so a port in use stops C{twistd} at once), then the embedded PostgreSQL
cluster is started if no database URL is configured, the database is
waited for (retrying, while C{/ready} says why it is not ready), the
migrations are applied, and the listener and workers start.  A failed
migration is fatal: Veil stops with a non-zero exit status.

Shut-down (SIGTERM/SIGINT) runs the same steps backwards and completes only
when every part has really stopped, the PostgreSQL cluster included.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from veil import __version__
from veil.auth.runtime import auth_workers, make_accounts
from veil.config import Config
from veil.dashboard.app import DashboardApp, Readiness
from veil.dashboard.dashboard import Dashboard
from veil.dashboard.explain import Explainer
from veil.dashboard.handlers import NAV, groups
from veil.dashboard.live import LiveMount
from veil.dashboard.services import Services
from veil.dashboard.web import Mounted
from veil.errors import StoreUnavailable, VeilError
from veil.live.hub import Hub
from veil.live.peers import PeerFeed
from veil.metrics import Registry
from veil.processes import ProcessGroup, adopt_orphan_spools, child_argv, spool_dir
from veil.sdnotify import notify
from veil.sockets import Listeners, ListenFailed, adopt
from veil.store.db import Database
from veil.store.listener import ListenerService
from veil.store.locks import LockSession
from veil.store.logquery import RequestLogQueries
from veil.store.migrate import migrate
from veil.store.policies import PolicyStore, PolicyTable
from veil.store.requestlog import RequestLog
from veil.waf.engine import Engine
from veil.waf.pipeline import compile_engine
from veil.workers.base import PeriodicWorker
from veil.workers.dns import DnsVerifier, dns_worker
from veil.workers.maintenance import partition_worker, session_cleanup_worker

_log = Logger()


def connections_needed(config: Config) -> int:
    """
    PostgreSQL connections all of this machine's processes may open: each
    has its pool, the listener, the lock session and the request-log writer.
    """
    return max(100, config.processes.workers * (config.database.pool_max + 4) + 20)


@attrs.frozen
class ProcessRole:
    """
    Which of this machine's Veil processes this one is.

    @ivar index: 0 for the main process (the one C{twistd} runs), else the
        number of a process the main one started (L{veil.child}).
    @ivar sockets: the listening sockets this process is given, by port
        name: from systemd (L{veil.sockets.systemd_sockets}) for the main
        process, from the main process for a child.
    @ivar control_fd: a child's pipe to the main process.
    @ivar config_path: the configuration file, for the children.
    @ivar logger: C{twistd --logger}, for the children.
    """

    index: int = 0
    sockets: dict[str, int] = attrs.field(factory=dict)
    control_fd: int | None = None
    config_path: str | None = None
    logger: str | None = None

    @property
    def is_main(self) -> bool:
        return self.index == 0


class VeilService(Service):
    """
    One Veil process.

    @ivar dashboard_port: the listening port of the dashboard, once bound.
    @ivar db: the L{Database}, once start-up has reached it.
    @ivar dns: onboarding by DNS (L{DnsVerifier}: "Check now", origin
        proposals, DNS instructions), once start-up has reached the database.
    @ivar live: the dashboard's live stream (L{LiveMount}), likewise.
    """

    name = "veil"

    def __init__(self, config: Config, reactor: Any,
                 request_exit: Callable[[int], None], role: ProcessRole | None = None) -> None:
        self.config = config
        self.role = role if role is not None else ProcessRole()
        self.listeners: Listeners | None = None
        self.group: ProcessGroup | None = None
        self._bound = False
        self.reactor = reactor
        self._request_exit = request_exit
        self.metrics = Registry()
        self.readiness = Readiness()
        self.db: Database | None = None
        self.embedded: Any = None
        self.listener: ListenerService | None = None
        self.locks: LockSession | None = None
        self.request_log: RequestLog | None = None
        self.hub = Hub(reactor, metrics=self.metrics)
        self.peers: PeerFeed | None = None
        #: Every site's WAF policy (L{veil.store.policies.PolicyTable}): the
        #: proxy calls C{policies.get(site_id)} per request.
        self.policies: PolicyTable | None = None
        #: The WAF's compiled signature engine (one per process), once
        #: start-up has built it; L{None} with C{waf.enabled = false}.
        self.engine: Engine | None = None
        self.workers: list[PeriodicWorker] = []
        self.dns: DnsVerifier | None = None
        self.live: LiveMount | None = None
        self.dashboard_port: Any = None
        self.dashboard: Dashboard | None = None
        self.accounts: Any = None
        self.edge: Any = None
        self._starting: Deferred[None] | None = None

    # -- status ----------------------------------------------------------------

    def worker_status(self) -> dict[str, Any]:
        """Every supervised part's status, for C{/health}."""
        status: dict[str, Any] = {w.name: w.status() for w in self.workers}
        if self.listener is not None:
            status["listener"] = {
                "connected": self.listener.backend_pid is not None,
                "connections": self.listener.connections,
                "last_error": self.listener.last_error,
            }
        if self.embedded is not None:
            status["embedded-postgres"] = self.embedded.status()
        if self.db is not None:
            status["database"] = {"healthy": self.db.healthy, "last_error": self.db.last_error}
        if self.group is not None:
            status["processes"] = self.group.status()
        return status

    # -- start -----------------------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self._bound:
            return
        self._bound = True
        from veil.edge.service import Edge

        operational = DashboardApp(self.readiness, self.worker_status, self.metrics).resource()
        services = Services(self.config, clock=self.reactor, reactor=self.reactor)
        self.dashboard = Dashboard(services, groups(services), nav=NAV, mounted=[
            (Mounted("/health", "Liveness, version and every worker's status"), operational),
            (Mounted("/ready", "200 once Veil serves and its database answers"), operational),
            (Mounted("/metrics", "Prometheus metrics"), operational),
        ])
        dashboard = self.dashboard.resource()
        self.edge = Edge(self.config, self.reactor, self.metrics, dashboard)
        if not self.role.is_main:
            # A child listens once it can serve (in _start): until then new
            # connections wait in the queue the main process keeps open.
            return
        self.listeners = Listeners(self.reactor, self.config, self.config.processes.workers,
                                   self.role.sockets)
        try:
            self.dashboard_port = self.listeners.listen(
                "dashboard", self.dashboard.site(clock=self.reactor))
            host = self.dashboard_port.getHost()
            _log.info("Dashboard on http://{address}:{port}/", address=host.host, port=host.port)
            self.edge.origin_policy.add_listeners([host])  # never an origin
            self.edge.bind(self.listeners.listen)
        except ListenFailed as e:
            # One line, not twistd's traceback: the ports bound so far are
            # closed by the stop this asks for.
            self._fatal(str(e))

    def startService(self) -> None:
        super().startService()
        self.privilegedStartService()
        if self.readiness.phase == "failed":
            return
        _log.info("Veil {version} starting", version=__version__)
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._start_failed)

    async def _start(self) -> None:
        config = self.config
        role = self.role
        # The signature engine compiles (seconds of CPU) on a thread of its
        # own while the database comes up; the proxy exists only once it is
        # ready (below), and so does readiness.
        engine: Deferred[Engine] | None = None
        if config.proxy.waf_enabled:
            engine = compile_engine(self.reactor)
        if config.uses_embedded_database:
            from veil.store.embedded import EmbeddedPostgres

            self.readiness.detail = "starting the embedded PostgreSQL cluster"
            self.embedded = EmbeddedPostgres(
                data_dir=config.data_dir,
                bindir=config.embedded.bin_dir,
                reactor=self.reactor,
                run_as=config.embedded.run_as,
                max_connections=connections_needed(config),
            )
            self.embedded.startService()
            conninfo = await self.embedded.when_ready()
        else:
            assert config.database.url is not None
            conninfo = config.database.url

        db = self.db = Database(
            conninfo,
            self.reactor,
            min_size=config.database.pool_min,
            max_size=config.database.pool_max,
            connect_timeout=config.database.connect_timeout,
            statement_timeout=config.database.statement_timeout,
            metrics=self.metrics,
        )
        db.start()
        self.readiness.ping = lambda: db.ping(timeout=min(2.0, config.database.connect_timeout))
        self.readiness.unreachable = db.unreachable
        await self._wait_for_database(db)

        if role.is_main:
            self.readiness.detail = "applying schema migrations"
            applied = await migrate(db)
            _log.info("Schema up to date ({count} migrations applied now)", count=len(applied))
            adopt_orphan_spools(config.data_dir / "spool", config.processes.workers)

        locks = self.locks = LockSession(conninfo, self.reactor,
                                         connect_timeout=config.database.connect_timeout)
        locks.start()
        self.dns = DnsVerifier.from_config(config, db, self.reactor)
        await self._start_accounts(db)
        self.listener = ListenerService(conninfo, self.reactor,
                                        connect_timeout=config.database.connect_timeout)
        self._start_live(db)
        self.request_log = RequestLog(
            conninfo, self.reactor, spool_dir(config.data_dir / "spool", role.index),
            publish=self.hub.publish, origin=self.hub.origin,
            metrics=self.metrics, connect_timeout=config.database.connect_timeout)
        self.request_log.startService()
        self.peers = PeerFeed(self.hub, db, self.listener, self.reactor, metrics=self.metrics)
        self.peers.startService()
        self.readiness.detail = "loading sites, certificates and decisions"
        policies = self.policies = PolicyTable(
            PolicyStore(db, inspect_body_limit=config.proxy.inspect_body_limit), self.reactor)
        policies.subscribe(self.listener)
        await policies.reload()
        if engine is not None:
            self.readiness.detail = "compiling the WAF rules"
            self.engine = await engine
        edge_workers = await self.edge.start(db, locks, self.listener, self.request_log.append,
                                             policies=policies, engine=self.engine)
        if not role.is_main:
            sockets = role.sockets
            self.edge.bind(lambda name, factory: adopt(self.reactor, sockets[name], factory))
        self.listener.startService()
        workers = config.workers
        self.workers = edge_workers + [
            dns_worker(self.dns, locks, self.reactor, every=config.dns.check_interval),
            policies.refresher(every=60.0),
            partition_worker(db, locks, self.reactor, workers.partition_retention_months,
                             every=workers.partition_interval),
            session_cleanup_worker(db, locks, self.reactor,
                                   every=workers.session_cleanup_interval),
            *auth_workers(self.accounts, locks, self.reactor,
                          cleanup_every=workers.session_cleanup_interval),
        ]
        for worker in self.workers:
            worker.startService()
        if role.is_main and config.processes.workers > 1:
            self.readiness.detail = "starting the other Veil processes"
            await self._start_group(conninfo)
        self.readiness.set_phase("running")
        # Everything made so far (modules, caches, certificates) lives as
        # long as the process: keep it out of the cyclic collector's full
        # passes, which would otherwise walk all of it again every few
        # seconds under load (measured under the shared benchmark's S1 load:
        # a full pass stopped the reactor for 134 ms without this, 13 ms with).
        gc.collect()
        gc.freeze()
        if role.control_fd is not None:
            os.write(role.control_fd, b"READY\n")
        notify("READY=1")
        _log.info("Veil {version} ready", version=__version__)

    async def _start_accounts(self, db: Database) -> None:
        """Accounts for the dashboard; on first run, the setup link in the log."""
        bound = None if self.dashboard_port is None else self.dashboard_port.getHost().port
        accounts = self.accounts = make_accounts(self.config, self.reactor, db, bound_port=bound)
        await accounts.start()
        assert self.dashboard is not None
        services = self.dashboard.services
        services.use_database(db, self.edge.origin_policy)
        services.dns = self.dns
        services.explainer = Explainer(self.reactor)
        services.accounts = accounts
        if self.role.is_main:
            link = await accounts.create_setup_link()
            if link is not None:
                _log.warn(
                    "No account exists yet. Create the first administrator within one hour"
                    " at {setup_link} (or run: veil users add EMAIL --admin --password-stdin)",
                    setup_link=link)

    def _start_live(self, db: Database) -> None:
        """The live stream: fed by the hub, its revocations by the listener."""
        assert self.dashboard is not None and self.listener is not None
        live = self.live = LiveMount(self.hub, RequestLogQueries(db).latest,
                                     self.accounts.store, self.reactor, metrics=self.metrics)
        live.follow(self.listener)
        self.dashboard.services.live = live

    async def _start_group(self, conninfo: str) -> None:
        config, role = self.config, self.role
        env = dict(os.environ)
        env["VEIL_DATABASE_URL"] = conninfo
        env["VEIL_DATA_DIR"] = str(config.data_dir)
        listeners = self.listeners
        assert listeners is not None
        self.group = ProcessGroup(
            self.reactor, config.processes.workers,
            lambda index: child_argv(index, role.config_path, role.logger),
            listeners.for_process, env, stop_timeout=config.processes.stop_timeout)
        await self.group.start()
        _log.info("All {count} Veil processes are ready", count=config.processes.workers)

    async def _wait_for_database(self, db: Database) -> None:
        failures = 0
        while True:
            try:
                await db.ping()
                return
            except StoreUnavailable as e:
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                self.readiness.detail = f"the database does not answer: {e}"
                _log.warn("Waiting for the database ({error}); next try in {delay:.1f} s",
                          error=e, delay=delay)
                await deferLater(self.reactor, delay, lambda: None)

    def _start_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        if failure.check(VeilError):
            self._fatal(str(failure.value))
        else:
            _log.failure("Veil cannot start", failure)
            self._fatal(str(failure.value), logged=True)

    def _fatal(self, reason: str, logged: bool = False) -> None:
        """
        Start-up cannot go on: say why (once, in one line), mark the process
        failed and stop it with exit status 1, whether or not the reactor
        runs yet; stopping closes every port bound so far.
        """
        if not logged:
            _log.critical("Veil cannot start: {error}", error=reason)
        self._request_exit(1)
        self.readiness.set_phase("failed", reason)

    # -- stop ------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.readiness.set_phase("stopping")
        notify("STOPPING=1")
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        # The other processes drain while this one does; the store, and the
        # embedded cluster they use, stop only once they have all gone.
        if self.listeners is not None:
            self.listeners.close()
        others = self.group.stop() if self.group is not None else None
        if self.dashboard_port is not None:
            await self.dashboard_port.stopListening()
            self.dashboard_port = None
        if self.live is not None:
            self.live.unfollow()
            self.live.stream.close_all()
        if self.dashboard is not None and self.dashboard.services.explainer is not None:
            self.dashboard.services.explainer.stop()
        if self.edge is not None:
            await self.edge.stop()
        if others is not None:
            await others
        for worker in reversed(self.workers):
            await worker.stopService()
        if self.peers is not None:
            await self.peers.stopService()
        if self.listener is not None:
            await self.listener.stopService()
        if self.request_log is not None:
            await self.request_log.stopService()
        if self.accounts is not None:
            await self.accounts.stop()
        if self.locks is not None:
            await self.locks.close()
        if self.db is not None:
            await self.db.close()
        if self.embedded is not None and self.embedded.running:
            await self.embedded.stopService()
        _log.info("Veil stopped")

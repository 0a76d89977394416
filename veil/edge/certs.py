"""
Certificate resolution for the edge: memory, then the store, then the CA.

Every handshake asks L{CertificateResolver.resolve}.  A name served before
is answered from memory at once (one OpenSSL context per certificate, in a
bounded LRU).  Otherwise the newest valid certificate is read from the
store; failing that, one is issued while the handshake waits.  Concurrent
handshakes for one name share one issuance (each gets its own Deferred);
across processes and nodes, one issuance per name runs under a PostgreSQL
advisory lock, and the others re-read the store until it appears.

A renewed certificate reaches every process through C{NOTIFY
veil_certificates}, and the cached names are re-read after every listener
reconnection and periodically (L{veil.store.tables.Keeper}); an expired
certificate is never served while a valid one exists.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from veil.acme.challenges import tls_alpn01_certificate
from veil.acme.issue import Issuer, StoreResponder
from veil.edge.contexts import (
    ACME_TLS_1,
    ServerTLS,
    build_challenge_tls,
    build_server_tls,
)
from veil.edge.hello import ClientHello
from veil.edge.keys import generate_key
from veil.edge.policy import IssuancePolicy
from veil.errors import IssuanceFailed, IssuanceRefused
from veil.metrics import Registry
from veil.store.certs import CertificateStore, RenewalDue, StoredCertificate
from veil.store.listener import ListenerService, Subscription
from veil.store.locks import LockSession
from veil.store.sites import Site, SiteStore
from veil.store.tables import Keeper
from veil.workers.base import PeriodicWorker

_log = Logger()

#: The channel the C{certificates} trigger notifies, with the certificate's name.
CHANNEL = "veil_certificates"


@attrs.frozen
class _Entry:
    tls: ServerTLS
    cert_id: UUID
    not_after: float


@attrs.define(eq=False)
class CertificateResolver:
    """
    @ivar wait_for_other: how long to wait for another process or node that
        holds a name's issuance lock before giving up on this handshake.
    """

    store: CertificateStore
    issuer: Issuer
    policy: IssuancePolicy
    locks: LockSession
    sites: SiteStore
    clock: Any  # IReactorTime (and IReactorThreads for RSA key generation)
    metrics: Registry
    responder: StoreResponder | None = None
    key_type: str = "ecdsa-p256"
    cache_size: int = 10000
    wait_for_other: float = 90.0
    _memory: OrderedDict[str, _Entry] = attrs.field(factory=OrderedDict, init=False)
    _inflight: dict[str, list[Deferred[ServerTLS]]] = attrs.field(factory=dict, init=False)
    _challenges: dict[tuple[str, str], ServerTLS] = attrs.field(factory=dict, init=False)
    _keygen: ThreadPool | None = attrs.field(default=None, init=False)
    _issued: Any = attrs.field(default=None, init=False)
    _failed: Any = attrs.field(default=None, init=False)
    _lookups: Any = attrs.field(default=None, init=False)
    _keeper: Keeper[str, StoredCertificate | None] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._keeper = Keeper("certificate-cache", self, self._load_cached, self.clock,
                              load_one=self.store.latest,
                              wants=lambda name: name in self._memory)
        self._issued = self.metrics.counter(
            "veil_certificates_issued_total", "Certificates obtained, by kind (new, renewal)")
        self._failed = self.metrics.counter(
            "veil_certificate_failures_total", "Issuances that failed, by kind")
        self._lookups = self.metrics.counter(
            "veil_certificate_lookups_total", "Certificate lookups, by where they were answered")

    # -- the handshake path --------------------------------------------------

    def resolve(self, hello: ClientHello) -> ServerTLS | Deferred[ServerTLS]:
        """
        The TLS context for C{hello}: at once when in memory, else a new
        L{Deferred} (cancelling it abandons only this caller's wait).

        @raise IssuanceRefused: for a name that may not have a certificate.
        """
        name = hello.server_name
        assert name is not None
        if hello.alpn_protocols == (ACME_TLS_1,):
            return self._challenge(name)
        entry = self._memory.get(name)
        if entry is not None and entry.not_after > self.clock.seconds():
            self._memory.move_to_end(name)
            self._lookups.inc(source="memory")
            return entry.tls
        site = self.policy.check_name(name)
        return self._wait(name, site)

    def cached_names(self) -> list[str]:
        return list(self._memory)

    def _wait(self, name: str, site: Site | None) -> Deferred[ServerTLS]:
        waiters = self._inflight.get(name)
        d: Deferred[ServerTLS] = Deferred(lambda d: self._abandon(name, d))
        if waiters is not None:
            waiters.append(d)
            return d
        self._inflight[name] = [d]
        Deferred.fromCoroutine(self._obtain(name, site)).addBoth(self._settle, name)
        return d

    def _abandon(self, name: str, d: Deferred[ServerTLS]) -> None:
        waiters = self._inflight.get(name)
        if waiters is not None and d in waiters:
            waiters.remove(d)

    def _settle(self, result: ServerTLS | Failure, name: str) -> None:
        for d in self._inflight.pop(name, []):
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    async def _obtain(self, name: str, site: Site | None) -> ServerTLS:
        stored = await self.store.latest(name)
        if stored is not None:
            self._lookups.inc(source="store")
            return self._remember(stored)
        self._lookups.inc(source="issued")
        await self._respect_backoff(name)
        self.policy.check_rate(name)
        return await self._issue_locked(name, site, replacing=None, kind="new")

    async def _respect_backoff(self, name: str) -> None:
        state = await self.store.issuance_state(name)
        if state is None or state.next_attempt_at is None:
            return
        until = state.next_attempt_at.timestamp()
        if until > self.clock.seconds():
            self.policy.backing_off(name, state.failures, until)
            raise IssuanceRefused(
                f"{name}: issuance failed {state.failures} time(s) ({state.last_error});"
                f" next attempt in {until - self.clock.seconds():.0f} s")

    async def _issue_locked(self, name: str, site: Site | None, replacing: UUID | None,
                            kind: str) -> ServerTLS:
        deadline = self.clock.seconds() + self.wait_for_other
        while True:
            lock = await self.locks.try_lock("certificate:" + name)
            if lock is not None:
                break
            # Another process or node is issuing this name: wait for its result.
            await deferLater(self.clock, 0.25, lambda: None)
            stored = await self.store.latest(name)
            if stored is not None and stored.id != replacing:
                return self._remember(stored)
            if self.clock.seconds() > deadline:
                raise IssuanceFailed(f"{name}: another Veil process is still issuing it")
        try:
            stored = await self.store.latest(name)
            if stored is not None and stored.id != replacing:
                return self._remember(stored)
            return await self._issue(name, site, kind)
        finally:
            await lock.release()

    async def _issue(self, name: str, site: Site | None, kind: str) -> ServerTLS:
        started = self.clock.seconds()
        if site is not None and kind == "new":
            await self.sites.set_status(site.id, "ssl_provisioning", None,
                                        only_from=("active", "error"))
        key_pem = await self._new_key()
        try:
            new = await self.issuer.issue(name, site.id if site else None, self.key_type,
                                          key_pem)
        except IssuanceFailed as e:
            self._failed.inc(kind=kind)
            state = await self.store.issuance_state(name)
            failures = (state.failures if state else 0) + 1
            delay = self.policy.retry_delay(failures)
            await self.store.record_failure(name, str(e), delay)
            self.policy.failed(name, failures)
            _log.error("Certificate for {name} not issued ({kind}): {error};"
                       " next attempt in {delay:.0f} s", name=name, kind=kind, error=str(e),
                       delay=delay)
            if site is not None and kind == "new":
                await self.sites.set_status(site.id, "error", str(e),
                                            only_from=("active", "ssl_provisioning"))
            raise
        stored = await self.store.save(new)
        if site is not None:
            await self.sites.set_status(site.id, "live", None,
                                        only_from=("active", "ssl_provisioning", "error"))
        self.policy.succeeded(name)
        self._issued.inc(kind=kind)
        _log.info("Issued certificate for {name} ({kind}) in {seconds:.2f} s, valid until"
                  " {not_after}", name=name, kind=kind, seconds=self.clock.seconds() - started,
                  not_after=stored.not_after.isoformat(), issuer=stored.issuer)
        return self._remember(stored)

    def _new_key(self) -> Deferred[bytes]:
        if self.key_type == "ecdsa-p256":
            return succeed(generate_key(self.key_type))  # about 0.1 ms
        # RSA key generation takes tens of milliseconds: not on the reactor.
        if self._keygen is None:
            self._keygen = ThreadPool(minthreads=0, maxthreads=1, name="veil-keygen")
            self._keygen.start()
        return deferToThreadPool(self.clock, self._keygen, generate_key, self.key_type)

    def close(self) -> None:
        if self._keygen is not None:
            self._keygen.stop()
            self._keygen = None

    def _remember(self, stored: StoredCertificate) -> ServerTLS:
        tls = build_server_tls(stored.chain_pem, stored.key_pem)
        self._memory[stored.name] = _Entry(tls, stored.id, stored.not_after.timestamp())
        self._memory.move_to_end(stored.name)
        while len(self._memory) > self.cache_size:
            self._memory.popitem(last=False)
        return tls

    # -- tls-alpn-01 ---------------------------------------------------------

    def _challenge(self, name: str) -> Deferred[ServerTLS]:
        if self.responder is None:
            raise IssuanceRefused(f"{name}: no ACME validation expected (internal CA)")

        def build(key_authorization: str | None) -> ServerTLS:
            if key_authorization is None:
                raise IssuanceRefused(f"{name}: no tls-alpn-01 challenge pending")
            key = (name, key_authorization)
            tls = self._challenges.get(key)
            if tls is None:
                cert_pem, key_pem = tls_alpn01_certificate(name, key_authorization, self.clock)
                tls = self._challenges[key] = build_challenge_tls(cert_pem, key_pem)
                while len(self._challenges) > 100:
                    self._challenges.pop(next(iter(self._challenges)))
            return tls

        return self.responder.tls_alpn01(name).addCallback(build)

    # -- renewal and changes from elsewhere ------------------------------------

    def renew(self, due: RenewalDue, site: Site | None) -> Deferred[ServerTLS]:
        """
        Issue a successor for C{due} (unless another process already did),
        respecting the name's failure back-off.
        """
        async def renew() -> ServerTLS:
            await self._respect_backoff(due.name)
            return await self._issue_locked(due.name, site, replacing=due.id, kind="renewal")

        return Deferred.fromCoroutine(renew())

    def follow(self, listener: ListenerService) -> list[Subscription]:
        """
        Swap in the certificates stored elsewhere (C{NOTIFY veil_certificates},
        payload: the name) for the names in memory, and re-read every name
        in memory after each (re)connection of C{listener}.
        """
        return self._keeper.follow(listener, CHANNEL)

    def certificate_changed(self, name: str) -> Deferred[None] | None:
        """A certificate for C{name} was stored somewhere: swap it in if cached."""
        return self._keeper.notified(name)

    def reload(self) -> Deferred[None]:
        """Re-read every cached name (after a listener reconnection, and periodically)."""
        return self._keeper.reload()

    def refresher(self, every: float) -> PeriodicWorker:
        """The supervised periodic re-read of the cached names."""
        return self._keeper.refresher(every)

    def _load_cached(self) -> Deferred[dict[str, StoredCertificate | None]]:
        return self.store.latest_many(list(self._memory))

    # The cache's side of the keeper (L{veil.store.tables.Rows}): a reload
    # covers the names cached when it started; names cached since stay.

    def replace(self, rows: Mapping[str, StoredCertificate | None]) -> None:
        for name, stored in rows.items():
            self.put(name, stored)

    def put(self, name: str, stored: StoredCertificate | None) -> None:
        if name in self._memory:  # not evicted while it was read
            self._swap(name, stored)

    def _swap(self, name: str, stored: StoredCertificate | None) -> None:
        current = self._memory.get(name)
        if stored is None:
            if current is not None and current.not_after <= self.clock.seconds():
                del self._memory[name]
            return
        if current is None or current.cert_id != stored.id:
            self._remember(stored)
            _log.info("Now serving certificate {serial} for {name}", serial=stored.serial,
                      name=name)

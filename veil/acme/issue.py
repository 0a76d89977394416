"""
Issuers: what turns a name and a private key into a stored-ready certificate.

L{InternalIssuer} signs at once with the internal CA (the embedded default,
like Caddy's C{tls internal}).  L{AcmeIssuer} orders from an ACME CA with
the account kept (encrypted) in the store and challenges answered through
the store, so that any node can answer the CA's validation.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Protocol
from uuid import UUID

import attrs
import josepy
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from veil.acme.client import AcmeClient, AcmeProblem
from veil.acme.interfaces import IChallengeResponder
from veil.acme.internal_ca import InternalCA
from veil.edge.keys import certificate_info, generate_key
from veil.errors import IssuanceFailed
from veil.store.certs import CertificateStore, NewCertificate

_log = Logger()


class Issuer(Protocol):
    """Anything that issues a certificate for one name."""

    def issue(self, name: str, site_id: UUID | None, key_type: str,
              key_pem: bytes) -> Deferred[NewCertificate]: ...


@attrs.define(eq=False)
class InternalIssuer:
    """Certificates signed on the spot by the internal CA."""

    ca: InternalCA
    lifetime: timedelta = timedelta(days=30)

    def issue(self, name: str, site_id: UUID | None, key_type: str,
              key_pem: bytes) -> Deferred[NewCertificate]:
        issued = self.ca.issue(name, key_pem, self.lifetime)
        info = certificate_info(issued.chain_pem)
        return succeed(NewCertificate(
            name=name, site_id=site_id, key_type=key_type, key_pem=key_pem,
            chain_pem=issued.chain_pem, not_before=issued.not_before,
            not_after=issued.not_after, issuer=info.issuer, serial=issued.serial))


@implementer(IChallengeResponder)
@attrs.define(eq=False)
class StoreResponder:
    """
    Publishes challenge answers in the store (for every node) and in this
    process's memory (so the local edge answers without a query).
    """

    store: CertificateStore
    supported_types: tuple[str, ...] = ("tls-alpn-01", "http-01")
    _tls_alpn: dict[str, str] = attrs.field(factory=dict, init=False)
    _http: dict[str, str] = attrs.field(factory=dict, init=False)

    def add(self, challenge_type: str, name: str, token: str,
            key_authorization: str) -> Deferred[None]:
        if challenge_type == "tls-alpn-01":
            self._tls_alpn[name] = key_authorization
        else:
            self._http[token] = key_authorization
        return self.store.add_challenge(challenge_type, name, token, key_authorization)

    def remove(self, challenge_type: str, name: str, token: str,
               key_authorization: str) -> Deferred[None]:
        if self._tls_alpn.get(name) == key_authorization:
            del self._tls_alpn[name]
        self._http.pop(token, None)
        return self.store.remove_challenge(token)

    def http01(self, token: str) -> Deferred[str | None]:
        """The answer for an http-01 token: from memory, else from the store."""
        local = self._http.get(token)
        return succeed(local) if local is not None else self.store.http01(token)

    def tls_alpn01(self, name: str) -> Deferred[str | None]:
        """The key authorization for a tls-alpn-01 hello: memory, else store."""
        local = self._tls_alpn.get(name)
        return succeed(local) if local is not None else self.store.tls_alpn01(name)


@attrs.define(eq=False)
class AcmeIssuer:
    """
    Certificates ordered from an ACME CA.

    The account key is created on first use and kept in the store (one per
    directory URL, shared by every node); the account is registered (or
    found again) once per process.
    """

    http: Any  # treq.client.HTTPClient
    directory_url: str
    email: str | None
    agree_tos: bool
    store: CertificateStore
    responder: StoreResponder
    clock: IReactorTime
    eab: tuple[str, bytes] | None = None
    preferred: tuple[str, ...] = ("tls-alpn-01", "http-01")
    timeout: float = 120.0
    _client: AcmeClient | None = attrs.field(default=None, init=False)
    _registering: list[Deferred[AcmeClient]] | None = attrs.field(default=None, init=False)

    def issue(self, name: str, site_id: UUID | None, key_type: str,
              key_pem: bytes) -> Deferred[NewCertificate]:
        return Deferred.fromCoroutine(self._issue(name, site_id, key_type, key_pem))

    async def _issue(self, name: str, site_id: UUID | None, key_type: str,
                     key_pem: bytes) -> NewCertificate:
        client = await self._account()
        issued = await client.issue([name], key_pem, self.responder, preferred=self.preferred,
                                    timeout=self.timeout)
        info = certificate_info(issued.chain_pem)
        return NewCertificate(
            name=name, site_id=site_id, key_type=key_type, key_pem=key_pem,
            chain_pem=issued.chain_pem, not_before=issued.not_before,
            not_after=issued.not_after, issuer=info.issuer, serial=info.serial,
            acme_directory_url=self.directory_url, acme_order_url=issued.order_url)

    def _account(self) -> Deferred[AcmeClient]:
        """The registered client; concurrent first callers share one registration."""
        if self._client is not None:
            return succeed(self._client)
        waiter: Deferred[AcmeClient] = Deferred()
        if self._registering is None:
            self._registering = [waiter]
            Deferred.fromCoroutine(self._register()).addBoth(self._registered)
        else:
            self._registering.append(waiter)
        return waiter

    def _registered(self, result: Any) -> None:
        waiting, self._registering = self._registering or [], None
        if isinstance(result, AcmeClient):
            self._client = result
        for d in waiting:
            d.callback(result) if isinstance(result, AcmeClient) else d.errback(result)

    async def _register(self) -> AcmeClient:
        found = await self.store.account(self.directory_url)
        if found is None:
            fresh = generate_key("ecdsa-p256")
            key_pem = await self.store.save_account(
                self.directory_url, fresh, "ecdsa-p256", self.email,
                self.eab[0] if self.eab else None)
            account_url = None
        else:
            key_pem, account_url = found
        key = serialization.load_pem_private_key(key_pem, password=None)
        client = AcmeClient(self.http, self.directory_url, josepy.JWKEC(key=key), self.clock,
                            account_url=account_url)
        if account_url is None:
            try:
                account_url = await client.register(self.email, self.agree_tos, self.eab)
            except AcmeProblem as e:
                raise IssuanceFailed(f"ACME account registration failed: {e}") from None
            await self.store.set_account_url(self.directory_url, account_url, self.agree_tos)
            _log.info("ACME account {account} at {directory}", account=account_url,
                      directory=self.directory_url)
        return client

"""
A small ACME v2 (RFC 8555) client on treq.

It speaks to the CA through an injected L{treq.client.HTTPClient}, builds and
parses messages with the C{acme} package's message types, signs with josepy,
and takes all its time from an injected L{IReactorTime}. Every request is
bounded by C{request_timeout}, and a whole issuance by the C{timeout} passed to
L{AcmeClient.issue}.

Outline of an issuance::

    newOrder → for each authorization: POST-as-GET, pick a challenge,
    responder.add, POST {} to the challenge → poll authorizations (first poll
    after 0.2 s, then backing off or as Retry-After says) → poll the order to
    "ready" → finalize with a CSR → poll to "valid" → download the PEM chain →
    responder.remove

Problem documents (C{application/problem+json}) become L{AcmeProblem}; a CA
that cannot be reached or does not answer in time becomes L{AcmeUnavailable};
both are L{IssuanceFailed}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, TypeVar

import attrs
import josepy
from acme import jws as acme_jws
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from veil.acme.challenges import key_authorization
from veil.acme.interfaces import IChallengeResponder
from veil.errors import IssuanceFailed

JOSE_CONTENT_TYPE = "application/jose+json"
JSON_CONTENT_TYPE = "application/json"
PROBLEM_CONTENT_TYPE = "application/problem+json"
PEM_CHAIN_CONTENT_TYPE = "application/pem-certificate-chain"
ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_DETAIL_LIMIT = 500
_NONCE_POOL = 8

T = TypeVar("T")


class AcmeProblem(IssuanceFailed):
    """
    The CA answered with a problem document (RFC 8555 §6.7, RFC 7807).

    @ivar type: the problem type URI, such as
        C{urn:ietf:params:acme:error:rejectedIdentifier}.
    @ivar detail: the CA's human-readable explanation (may be empty).
    @ivar status: the HTTP status of the reply, or L{None} for a problem
        embedded in an authorization, challenge or order.
    @ivar identifier: the identifier value the problem is about, if the CA said.
    @ivar subproblems: per-identifier problems, as L{AcmeProblem}s.
    @ivar context: what the client was doing, for the message.
    """

    def __init__(self, type: str, detail: str = "", status: int | None = None, *,
                 identifier: str | None = None,
                 subproblems: Sequence[AcmeProblem] = (),
                 context: str | None = None) -> None:
        self.type = type
        self.detail = detail
        self.status = status
        self.identifier = identifier
        self.subproblems = tuple(subproblems)
        self.context = context
        super().__init__(self._message())

    @property
    def code(self) -> str | None:
        """The short ACME error code (C{badNonce}), or L{None} for a non-ACME type."""
        if self.type.startswith(ACME_ERROR_PREFIX):
            return self.type[len(ACME_ERROR_PREFIX):]
        return None

    def _message(self) -> str:
        text = f"{self.context}: " if self.context else ""
        if self.identifier:
            text += f"{self.identifier}: "
        text += self.type
        if self.status is not None:
            text += f" (HTTP {self.status})"
        if self.detail:
            text += f": {self.detail}"
        for sub in self.subproblems:
            text += f"; {sub._message()}"
        return text

    @classmethod
    def from_error(cls, error: messages.Error, status: int | None = None,
                   context: str | None = None) -> AcmeProblem:
        """Build from the C{acme} package's parsed problem document."""
        subs = [cls.from_error(s) for s in (error.subproblems or ())]
        ident = error.identifier.value if error.identifier is not None else None
        detail = (error.detail or error.title or "").strip()[:_DETAIL_LIMIT]
        return cls(str(error.typ), detail, status, identifier=ident,
                   subproblems=subs, context=context)


class AcmeUnavailable(IssuanceFailed):
    """The CA could not be reached, or did not answer within the request timeout."""


@attrs.frozen
class IssuedCertificate:
    """
    A certificate the CA issued.

    @ivar names: the names it was ordered for, in order.
    @ivar chain_pem: the leaf followed by the intermediates, PEM, as the CA sent it.
    @ivar order_url: the order's URL (for support requests and renewal info).
    @ivar not_before: start of the leaf's validity (UTC).
    @ivar not_after: end of the leaf's validity (UTC).
    """

    names: tuple[str, ...]
    chain_pem: bytes
    order_url: str
    not_before: datetime
    not_after: datetime


@attrs.frozen
class _Reply:
    method: str
    url: str
    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[0].decode("latin-1") if values else None

    @property
    def content_type(self) -> str:
        value = self.header("Content-Type") or ""
        return value.split(";", 1)[0].strip().lower()

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise IssuanceFailed(
                f"{self.method} {self.url}: CA sent HTTP {self.status} with a body "
                f"that is not JSON ({self.content_type or 'no content type'})"
            ) from None

    def location(self) -> str:
        where = self.header("Location")
        if not where:
            raise IssuanceFailed(f"{self.method} {self.url}: CA sent no Location header")
        return where


@attrs.define
class _Progress:
    """What an issuance is waiting for, for the timeout message."""

    stage: str = "starting"


def _jws_algorithm(key: josepy.JWK) -> josepy.JWASignature:
    if isinstance(key, josepy.JWKEC):
        curve = key.key.curve.name
        algs = {"secp256r1": josepy.ES256, "secp384r1": josepy.ES384,
                "secp521r1": josepy.ES512}
        if curve in algs:
            return algs[curve]
        raise ValueError(f"unsupported account key curve {curve}")
    if isinstance(key, josepy.JWKRSA):
        return josepy.RS256
    raise ValueError(f"unsupported account key type {type(key).__name__}")


def _dumps(obj: josepy.JSONDeSerializable | dict[str, Any]) -> bytes:
    if isinstance(obj, dict):
        return json.dumps(obj).encode("utf-8")
    return obj.json_dumps().encode("utf-8")


def _describe(exc: BaseException) -> str:
    """A one-line human description of a connection-level failure."""
    reasons = getattr(exc, "reasons", None)  # ResponseNeverReceived, ResponseFailed
    if reasons:
        inner = "; ".join(_describe(r.value if isinstance(r, Failure) else r)
                          for r in reasons)
        return f"{type(exc).__name__} ({inner})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _normalise_names(names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        raise TypeError("names must be a list of host names, not a string")
    seen: dict[str, None] = {}
    for name in names:
        n = name.strip().rstrip(".").lower()
        try:
            n.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"host name must be ASCII (an A-label): {name!r}") from None
        if not n:
            raise ValueError(f"empty host name in {names!r}")
        seen.setdefault(n, None)
    if not seen:
        raise ValueError("at least one name is required")
    return tuple(seen)


def _load_key(key_pem: bytes) -> CertificateIssuerPrivateKeyTypes:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"the certificate key is not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ValueError(f"unsupported certificate key type {type(key).__name__}")
    return key


def _make_csr(key: CertificateIssuerPrivateKeyTypes,
              names: Sequence[str]) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().add_extension(
        x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    if len(names[0]) <= 64:
        builder = builder.subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
    else:
        builder = builder.subject_name(x509.Name([]))
    return builder.sign(key, hashes.SHA256())


@attrs.define(eq=False)
class AcmeClient:
    """
    An ACME v2 account at one CA.

    @ivar http: the HTTP client; its agent decides which CAs are trusted.
    @ivar directory_url: the CA's directory, such as
        C{https://acme-v02.api.letsencrypt.org/directory}.
    @ivar account_key: the account's private key (EC P-256/384/521 or RSA).
    @ivar clock: the source of time for polling and timeouts.
    @ivar account_url: the account's URL ("kid"), once known. L{register}
        sets it; L{issue} looks it up from the key if it is still unset.
    @ivar request_timeout: bound on one HTTP exchange, in seconds.
    @ivar bad_nonce_attempts: how many times one request is sent while the CA
        answers C{badNonce}.
    @ivar first_poll: the delay before the first poll of an authorization or
        order that is still being processed; later polls back off by doubling
        up to C{max_poll_interval}, unless the CA sends C{Retry-After}.
    """

    http: HTTPClient
    directory_url: str
    account_key: josepy.JWK
    clock: IReactorTime
    account_url: str | None = None
    request_timeout: float = 30.0
    bad_nonce_attempts: int = 10
    first_poll: float = 0.2
    max_poll_interval: float = 5.0
    _directory: messages.Directory | None = attrs.field(default=None, init=False)
    _nonces: list[bytes] = attrs.field(factory=list, init=False)
    _alg: josepy.JWASignature = attrs.field(init=False)

    _log: ClassVar[Logger] = Logger()

    @_alg.default
    def _alg_default(self) -> josepy.JWASignature:
        return _jws_algorithm(self.account_key)

    # -- public API, Deferreds at the boundary ------------------------------

    def directory(self) -> Deferred[messages.Directory]:
        """Fetch (once) and return the CA's directory."""
        return Deferred.fromCoroutine(self._get_directory())

    def register(self, email: str | None, agree_tos: bool,
                 eab: tuple[str, bytes] | None = None) -> Deferred[str]:
        """
        Create the account for C{account_key}, or find it if it exists.

        @param email: contact address (without C{mailto:}), or L{None}.
        @param agree_tos: whether the operator agreed to the CA's terms.
        @param eab: external account binding, C{(key id, raw HMAC key)}, for
            CAs that require one.
        @return: a Deferred firing with the account URL (also kept in
            L{account_url}), or failing with L{IssuanceFailed}.
        """
        return Deferred.fromCoroutine(
            self._register(email=email, agree_tos=agree_tos, eab=eab, only_existing=False))

    def find_account(self) -> Deferred[str]:
        """
        Look up the existing account for C{account_key} (C{onlyReturnExisting}).

        Fails with L{AcmeProblem} C{accountDoesNotExist} if there is none.
        """
        return Deferred.fromCoroutine(
            self._register(email=None, agree_tos=False, eab=None, only_existing=True))

    def issue(self, names: Sequence[str], key_pem: bytes,
              responder: IChallengeResponder,
              preferred: tuple[str, ...] = ("tls-alpn-01", "http-01"),
              timeout: float = 120.0) -> Deferred[IssuedCertificate]:
        """
        Order, validate, finalize and download a certificate for C{names}.

        @param names: ASCII host names; the first becomes the CSR's common name.
        @param key_pem: the certificate's private key, PEM (the CSR is signed
            with it, and the issued leaf must carry its public key).
        @param responder: makes challenge answers reachable by the CA.
        @param preferred: challenge types in order of preference; the first
            that the CA offers and the responder supports is answered.
        @param timeout: bound on the whole issuance, in seconds.
        @return: a Deferred firing with an L{IssuedCertificate}, or failing
            with L{IssuanceFailed} (L{AcmeProblem} when the CA said why).
        """
        try:
            wanted = _normalise_names(names)
            key = _load_key(key_pem)
        except (TypeError, ValueError) as e:
            return fail(IssuanceFailed(str(e)))
        progress = _Progress()
        d = Deferred.fromCoroutine(
            self._issue(wanted, key, responder, preferred, progress))
        return _within(d, timeout, self.clock, lambda: IssuanceFailed(
            f"issuance for {', '.join(wanted)} did not finish within {timeout:g} s "
            f"(was {progress.stage})"))

    # -- transport ------------------------------------------------------------

    async def _exchange(self, method: str, url: str, data: bytes | None,
                        headers: dict[bytes, list[bytes]]) -> _Reply:
        response = await self.http.request(
            method, url, data=data, headers=headers, allow_redirects=False)
        body = await response.content()
        reply = _Reply(method, url, response.code, response.headers, body)
        nonce = reply.header("Replay-Nonce")
        if nonce:
            try:
                self._nonces.append(josepy.decode_b64jose(nonce))
                del self._nonces[:-_NONCE_POOL]  # keep the freshest few
            except josepy.DeserializationError:
                self._log.warn("CA sent a malformed Replay-Nonce from {url}", url=url)
        self._log.debug("ACME {method} {url} -> {status}", method=method, url=url,
                        status=reply.status)
        return reply

    async def _request(self, method: str, url: str, data: bytes | None = None,
                       content_type: str | None = None,
                       accept: str = JSON_CONTENT_TYPE) -> _Reply:
        headers = {b"Accept": [accept.encode("ascii")],
                   b"User-Agent": [b"veil-acme/1"]}
        if content_type is not None:
            headers[b"Content-Type"] = [content_type.encode("ascii")]
        d = Deferred.fromCoroutine(self._exchange(method, url, data, headers))
        try:
            return await _within(d, self.request_timeout, self.clock, lambda: AcmeUnavailable(
                f"{method} {url}: no answer from the CA within {self.request_timeout:g} s"))
        except (CancelledError, IssuanceFailed):
            raise
        except Exception as e:
            raise AcmeUnavailable(f"{method} {url}: CA unreachable: {_describe(e)}") from e

    def _problem(self, reply: _Reply) -> AcmeProblem | None:
        if reply.content_type != PROBLEM_CONTENT_TYPE and reply.status < 400:
            return None
        context = f"{reply.method} {reply.url}"
        try:
            error = messages.Error.from_json(json.loads(reply.body))
        except (ValueError, josepy.DeserializationError):
            snippet = reply.body[:200].decode("utf-8", "replace")
            return AcmeProblem("about:blank", f"unexpected reply: {snippet!r}",
                               reply.status, context=context)
        return AcmeProblem.from_error(error, reply.status, context=context)

    async def _nonce(self) -> bytes:
        if not self._nonces:
            directory = await self._get_directory()
            reply = await self._request("HEAD", directory["newNonce"])
            if reply.status >= 400 or not self._nonces:
                raise IssuanceFailed(
                    f"HEAD {directory['newNonce']}: CA sent no Replay-Nonce "
                    f"(HTTP {reply.status})")
        return self._nonces.pop()

    async def _post(self, url: str, payload: bytes, *, use_kid: bool = True,
                    accept: str = JSON_CONTENT_TYPE) -> _Reply:
        """POST a JWS-signed C{payload}; C{b""} makes it a POST-as-GET."""
        kid = None
        if use_kid:
            if self.account_url is None:
                raise IssuanceFailed("no ACME account: call register() first")
            kid = self.account_url
        attempt = 0
        while True:
            attempt += 1
            nonce = await self._nonce()
            jws = acme_jws.JWS.sign(payload, key=self.account_key, alg=self._alg,
                                    nonce=nonce, url=url, kid=kid)
            reply = await self._request("POST", url, jws.json_dumps().encode("utf-8"),
                                        content_type=JOSE_CONTENT_TYPE, accept=accept)
            problem = self._problem(reply)
            if problem is None:
                return reply
            if problem.code == "badNonce" and attempt < self.bad_nonce_attempts:
                self._log.info("CA rejected the nonce for {url}, retrying (attempt {attempt})",
                               url=url, attempt=attempt, bad_nonce=True)
                continue
            raise problem

    async def _post_as_get(self, url: str, accept: str = JSON_CONTENT_TYPE) -> _Reply:
        return await self._post(url, b"", accept=accept)

    # -- directory and account ------------------------------------------------

    async def _get_directory(self) -> messages.Directory:
        if self._directory is None:
            reply = await self._request("GET", self.directory_url)
            if reply.status != 200:
                problem = self._problem(reply)
                raise problem or IssuanceFailed(
                    f"GET {self.directory_url}: HTTP {reply.status}, expected 200")
            try:
                directory = messages.Directory.from_json(reply.json())
                for key in ("newNonce", "newAccount", "newOrder"):
                    directory[key]
            except (KeyError, josepy.DeserializationError, AttributeError, TypeError) as e:
                raise IssuanceFailed(
                    f"GET {self.directory_url}: not an ACME v2 directory ({e})") from None
            self._directory = directory
        return self._directory

    def _external_account_binding(self, eab: tuple[str, bytes], url: str) -> dict[str, Any]:
        kid, hmac_key = eab
        public = json.dumps(self.account_key.public_key().to_partial_json()).encode("utf-8")
        binding = acme_jws.JWS.sign(public, key=josepy.JWKOct(key=hmac_key),
                                    alg=josepy.HS256, nonce=None, url=url, kid=kid)
        return binding.to_partial_json()

    async def _register(self, *, email: str | None, agree_tos: bool,
                        eab: tuple[str, bytes] | None, only_existing: bool) -> str:
        directory = await self._get_directory()
        url = directory["newAccount"]
        if only_existing:
            body = messages.NewRegistration(only_return_existing=True)
        else:
            if eab is None and directory.meta.external_account_required:
                raise IssuanceFailed(
                    f"{self.directory_url}: the CA requires external account binding "
                    "(an EAB key id and HMAC key from the CA)")
            body = messages.NewRegistration.from_data(
                email=email,
                terms_of_service_agreed=True if agree_tos else None,
                external_account_binding=(
                    self._external_account_binding(eab, url) if eab else None),
            )
        reply = await self._post(url, _dumps(body), use_kid=False)
        if reply.status not in (200, 201):
            raise IssuanceFailed(f"POST {url}: HTTP {reply.status}, expected 200 or 201")
        account_url = reply.location()
        account = messages.Registration.from_json(reply.json())
        status = getattr(account.status, "name", account.status)  # a plain str here
        if status is not None and status != "valid":
            raise IssuanceFailed(f"ACME account {account_url} is {status}")
        self.account_url = account_url
        self._log.info("Using ACME account {account_url} ({how})", account_url=account_url,
                       how="created" if reply.status == 201 else "existing")
        return account_url

    # -- issuance -------------------------------------------------------------

    async def _issue(self, names: tuple[str, ...], key: CertificateIssuerPrivateKeyTypes,
                     responder: IChallengeResponder, preferred: tuple[str, ...],
                     progress: _Progress) -> IssuedCertificate:
        if self.account_url is None:
            progress.stage = "looking up the ACME account"
            await self._register(email=None, agree_tos=False, eab=None, only_existing=True)
        directory = await self._get_directory()

        progress.stage = "creating the order"
        new_order = messages.NewOrder(identifiers=[
            messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in names])
        reply = await self._post(directory["newOrder"], _dumps(new_order))
        if reply.status != 201:
            raise IssuanceFailed(f"POST {reply.url}: HTTP {reply.status}, expected 201")
        order_url = reply.location()
        order = self._parse(messages.Order, reply)
        self._log.debug("Created ACME order {order_url} for {names}", order_url=order_url,
                        names=list(names))

        answered: list[tuple[str, str, str, str]] = []
        try:
            pending: list[tuple[str, str]] = []
            for authz_url in order.authorizations:
                progress.stage = f"fetching authorization {authz_url}"
                authz = self._parse(messages.Authorization,
                                    await self._post_as_get(authz_url))
                name = authz.identifier.value
                if authz.status == messages.STATUS_VALID:
                    continue
                if authz.status != messages.STATUS_PENDING:
                    raise self._authz_failure(authz, name)
                challenge_type, challenge_url, token = self._choose(
                    authz, name, responder, preferred)
                key_authz = key_authorization(token, self.account_key)
                progress.stage = f"publishing the {challenge_type} answer for {name}"
                await self._bounded(responder.add(challenge_type, name, token, key_authz),
                                    f"responder.add({challenge_type}, {name})")
                answered.append((challenge_type, name, token, key_authz))
                progress.stage = f"answering the {challenge_type} challenge for {name}"
                await self._post(challenge_url, b"{}")
                pending.append((authz_url, name))

            for authz_url, name in pending:
                progress.stage = f"waiting for validation of {name}"
                authz = await self._poll(authz_url, messages.Authorization, self.first_poll)
                if authz.status != messages.STATUS_VALID:
                    raise self._authz_failure(authz, name)
        finally:
            for challenge_type, name, token, key_authz in answered:
                await self._withdraw(responder, challenge_type, name, token, key_authz)

        progress.stage = "waiting for the order to become ready"
        if order.status in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
            order = await self._poll(order_url, messages.Order, 0.0)
        if order.status == messages.STATUS_READY:
            progress.stage = "finalizing the order"
            csr = _make_csr(key, names)
            reply = await self._post(order.finalize,
                                     _dumps(messages.CertificateRequest(csr=csr)))
            order = self._parse(messages.Order, reply)
            if order.status in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                progress.stage = "waiting for the certificate"
                asked = self._retry_after(reply)
                order = await self._poll(order_url, messages.Order,
                                         self.first_poll if asked is None else asked)
        if order.status != messages.STATUS_VALID or not order.certificate:
            raise self._order_failure(order, order_url)

        progress.stage = "downloading the certificate"
        reply = await self._post_as_get(order.certificate, accept=PEM_CHAIN_CONTENT_TYPE)
        issued = self._certificate(reply, names, key, order_url)
        self._log.info("Issued certificate for {names} valid until {not_after}",
                       names=list(names), not_after=issued.not_after.isoformat(),
                       order_url=order_url)
        return issued

    async def _bounded(self, d: Deferred[T], what: str) -> T:
        return await _within(d, self.request_timeout, self.clock, lambda: IssuanceFailed(
            f"{what} did not finish within {self.request_timeout:g} s"))

    async def _withdraw(self, responder: IChallengeResponder, challenge_type: str,
                        name: str, token: str, key_authz: str) -> None:
        try:
            await self._bounded(responder.remove(challenge_type, name, token, key_authz),
                                f"responder.remove({challenge_type}, {name})")
        except Exception as e:
            self._log.error("Could not withdraw the {challenge_type} answer for {name}: "
                            "{error}", challenge_type=challenge_type, name=name,
                            error=_describe(e))

    def _parse(self, cls: type[T], reply: _Reply) -> T:
        try:
            return cls.from_json(reply.json())  # type: ignore[attr-defined]
        except josepy.DeserializationError as e:
            raise IssuanceFailed(
                f"{reply.method} {reply.url}: malformed {cls.__name__} from the CA ({e})"
            ) from None

    def _choose(self, authz: messages.Authorization, name: str,
                responder: IChallengeResponder,
                preferred: tuple[str, ...]) -> tuple[str, str, str]:
        offered: dict[str, tuple[str, str]] = {}
        for challb in authz.challenges:
            raw = challb.to_partial_json()
            typ, url, token = raw.get("type"), raw.get("url"), raw.get("token")
            if isinstance(typ, str) and isinstance(url, str) and isinstance(token, str):
                offered.setdefault(typ, (url, token))
        supported = set(responder.supported_types)
        for typ in preferred:
            if typ in supported and typ in offered:
                url, token = offered[typ]
                if not _TOKEN.match(token):
                    raise IssuanceFailed(f"{name}: CA sent a malformed {typ} token")
                return typ, url, token
        raise IssuanceFailed(
            f"{name}: no usable challenge; the CA offers {sorted(offered)}, "
            f"we answer {[t for t in preferred if t in supported]}")

    def _authz_failure(self, authz: messages.Authorization, name: str) -> IssuanceFailed:
        for challb in authz.challenges:
            if challb.error is not None:
                typ = challb.to_partial_json().get("type", "challenge")
                return AcmeProblem.from_error(
                    challb.error, context=f"{typ} validation of {name} failed")
        status = authz.status.name if authz.status is not None else "unknown"
        return IssuanceFailed(f"authorization for {name} is {status}")

    def _order_failure(self, order: messages.Order, order_url: str) -> IssuanceFailed:
        status = order.status.name if order.status is not None else "unknown"
        if order.error is not None:
            return AcmeProblem.from_error(order.error, context=f"order {order_url} is {status}")
        return IssuanceFailed(f"order {order_url} is {status}, expected valid")

    async def _poll(self, url: str, cls: type[T], first_delay: float) -> T:
        """
        POST-as-GET C{url} until its status is neither pending nor processing.

        The first poll is after C{first_delay}; later ones wait as C{Retry-After}
        says, or else twice as long as the last wait, up to C{max_poll_interval}.
        The caller's overall timeout bounds the loop.
        """
        delay = first_delay
        while True:
            if delay > 0:
                await deferLater(self.clock, delay, lambda: None)
            reply = await self._post_as_get(url)
            body = self._parse(cls, reply)
            status = body.status  # type: ignore[attr-defined]
            if status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                return body
            backoff = (self.first_poll if delay <= 0
                       else min(delay * 2, self.max_poll_interval))
            asked = self._retry_after(reply)
            delay = asked if asked is not None else backoff

    def _retry_after(self, reply: _Reply) -> float | None:
        value = reply.header("Retry-After")
        if not value:
            return None
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, when.timestamp() - self.clock.seconds())

    def _certificate(self, reply: _Reply, names: tuple[str, ...],
                     key: CertificateIssuerPrivateKeyTypes,
                     order_url: str) -> IssuedCertificate:
        where = f"POST {reply.url}"
        if reply.content_type != PEM_CHAIN_CONTENT_TYPE:
            raise IssuanceFailed(
                f"{where}: expected {PEM_CHAIN_CONTENT_TYPE}, got "
                f"{reply.content_type or 'no content type'}")
        try:
            chain = x509.load_pem_x509_certificates(reply.body)
        except ValueError as e:
            raise IssuanceFailed(f"{where}: CA sent an unreadable chain ({e})") from None
        leaf = chain[0]
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise IssuanceFailed(f"{where}: the issued certificate is not for our key")
        return IssuedCertificate(
            names=names,
            chain_pem=reply.body,
            order_url=order_url,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
        )


def _within(d: Deferred[T], seconds: float, clock: IReactorTime,
            timeout_error: Callable[[], Exception]) -> Deferred[T]:
    """
    Cancel C{d} after C{seconds}; if it then fails (with L{CancelledError} or
    whatever the cancelled operation turned that into), fail with
    C{timeout_error()} instead.
    """
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        d.cancel()

    timer = clock.callLater(seconds, expire)

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if expired and isinstance(result, Failure):
            return Failure(timeout_error())
        return result

    return d.addBoth(done)


__all__ = ["AcmeClient", "AcmeProblem", "AcmeUnavailable", "IssuedCertificate"]

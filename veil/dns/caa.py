"""
CAA (RFC 8659): may Veil's certificate authority issue for a domain?

Which CA that is comes from the configuration (L{ca_policy}): with
C{tls.mode = "internal"} Veil's own CA signs and does not consult CAA, so
nothing is checked; with C{tls.mode = "acme"} the CA's issuer names are
C{dns.caa_identifiers}, or, when that is empty, the names the well-known
public ACME CAs publish for their directory URL (L{KNOWN_CAS}).  A CA Veil
does not know cannot be checked: the report then says so without failing.

L{check_caa} climbs the name tree from the domain towards the root to the
first name with CAA records (the "relevant RRset"); lookups follow CNAMEs,
as RFC 8659 §3 asks.  L{evaluate} applies the set: an
C{issue} property naming one of the CA's identifiers allows issuance,
unless its C{validationmethods} parameter (RFC 8657) leaves out every
challenge Veil uses; an unknown tag with the critical flag forbids it; a
set without C{issue} properties restricts nothing (Veil issues no wildcard
certificates, so C{issuewild} does not apply).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import gatherResults

from veil.dns.records import CaaRecord
from veil.dns.resolver import ANSWER, Lookup, StubResolver

#: The CAA issuer names of public ACME CAs, by their directory's host.
KNOWN_CAS: dict[str, tuple[str, str]] = {
    "acme-v02.api.letsencrypt.org": ("Let's Encrypt", "letsencrypt.org"),
    "acme-staging-v02.api.letsencrypt.org": ("Let's Encrypt (staging)", "letsencrypt.org"),
    "acme.zerossl.com": ("ZeroSSL", "sectigo.com"),
    "dv.acme-v02.api.pki.goog": ("Google Trust Services", "pki.goog"),
    "dv.acme-v02.test-api.pki.goog": ("Google Trust Services (staging)", "pki.goog"),
    "acme.ssl.com": ("SSL.com", "ssl.com"),
}

#: Property tags a CA understands (RFC 8659, RFC 8657, RFC 9495 and the
#: CA/Browser Forum's); an unknown one with the critical flag forbids issuance.
KNOWN_TAGS = frozenset({"issue", "issuewild", "iodef", "contactemail", "contactphone",
                        "issuemail", "issuevmc"})

# Verdicts.
NOT_APPLICABLE = "not_applicable"
NO_RECORDS = "no_records"
ALLOWED = "allowed"
FORBIDDEN = "forbidden"
UNKNOWN_CA = "unknown_ca"
FAILED = "failed"

# Why issuance is forbidden.
NOT_LISTED = "not_listed"
NOBODY = "nobody"
CRITICAL_TAG = "critical_tag"
METHODS = "validation_methods"

_ISSUER = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")


@attrs.frozen
class CaPolicy:
    """
    The certificate authority CAA is checked for.

    @ivar applies: whether the CA consults CAA at all (not Veil's internal CA).
    @ivar identifiers: the CA's issuer names; empty when Veil does not know them.
    @ivar methods: the ACME challenge types Veil validates with.
    @ivar name: the CA for people, e.g. C{"Let's Encrypt"}.
    """

    applies: bool
    identifiers: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    name: str = "the certificate authority"


def ca_policy(config: Any) -> CaPolicy:
    """The L{CaPolicy} for a L{veil.config.Config}."""
    configured = config.dns.caa_identifiers
    if config.tls.mode != "acme":
        if configured:
            return CaPolicy(True, configured, (), "the configured certificate authority")
        return CaPolicy(False, (), (), "Veil's internal certificate authority")
    host = (urlsplit(config.acme.directory_url or "").hostname or "").lower()
    known_name, known_id = KNOWN_CAS.get(host, (None, None))
    if configured:
        identifiers = configured
    elif known_id is not None:
        identifiers = (known_id,)
    else:
        identifiers = ()
    name = known_name or (f"the certificate authority at {host}" if host
                          else "the certificate authority")
    return CaPolicy(True, identifiers, tuple(config.acme.challenges), name)


def issuer_and_parameters(value: str) -> tuple[str | None, dict[str, str]]:
    """
    The issuer name and the parameters of an C{issue} value such as
    C{letsencrypt.org; validationmethods=http-01}: C{None} for no issuer
    (C{";"}) or one that is not a domain name, which authorizes nobody.
    """
    head, _, rest = value.partition(";")
    issuer = head.strip().lower().rstrip(".")
    parameters: dict[str, str] = {}
    for part in rest.split(";"):
        key, equals, val = part.partition("=")
        if equals:
            parameters[key.strip().lower()] = val.strip()
    if not issuer or not _ISSUER.fullmatch(issuer):
        return None, parameters
    return issuer, parameters


@attrs.frozen
class CaaVerdict:
    """
    What CAA says about Veil's CA for one domain.

    @ivar verdict: L{NOT_APPLICABLE}, L{NO_RECORDS}, L{ALLOWED}, L{FORBIDDEN},
        L{UNKNOWN_CA} or L{FAILED} (the lookup did not answer).
    @ivar at: the name holding the relevant records (or whose lookup failed).
    @ivar records: the relevant records.
    @ivar reason: for L{FORBIDDEN}: L{NOT_LISTED}, L{NOBODY}, L{CRITICAL_TAG}
        or L{METHODS}.
    @ivar lookup: the failed lookup, for L{FAILED}.
    """

    verdict: str
    at: str | None = None
    records: tuple[CaaRecord, ...] = ()
    reason: str | None = None
    lookup: Lookup | None = None

    @property
    def ok(self) -> bool:
        """Whether nothing here stops the CA from issuing."""
        return self.verdict not in (FORBIDDEN, FAILED)

    @property
    def issuers(self) -> tuple[str, ...]:
        """The issuer names the relevant records allow."""
        names = (issuer_and_parameters(r.value)[0] for r in self.records if r.tag == "issue")
        return tuple(dict.fromkeys(n for n in names if n))


def evaluate(records: tuple[CaaRecord, ...], policy: CaPolicy, at: str) -> CaaVerdict:
    """Apply the relevant CAA set C{records} (found at C{at}) to C{policy}."""
    if any(r.critical and r.tag not in KNOWN_TAGS for r in records):
        return CaaVerdict(FORBIDDEN, at, records, CRITICAL_TAG)
    issue = [r for r in records if r.tag == "issue"]
    if not issue:
        return CaaVerdict(ALLOWED, at, records)
    if not policy.identifiers:
        return CaaVerdict(UNKNOWN_CA, at, records)
    ours = set(policy.identifiers)
    methods_excluded = False
    for record in issue:
        issuer, parameters = issuer_and_parameters(record.value)
        if issuer is None or issuer not in ours:
            continue
        allowed_methods = parameters.get("validationmethods")
        if allowed_methods is not None and policy.methods:
            listed = {m.strip().lower() for m in allowed_methods.split(",")}
            if not listed & set(policy.methods):
                methods_excluded = True
                continue
        return CaaVerdict(ALLOWED, at, records)
    if methods_excluded:
        return CaaVerdict(FORBIDDEN, at, records, METHODS)
    if all(issuer_and_parameters(r.value)[0] is None for r in issue):
        return CaaVerdict(FORBIDDEN, at, records, NOBODY)
    return CaaVerdict(FORBIDDEN, at, records, NOT_LISTED)


async def check_caa(resolver: StubResolver, domain: str, policy: CaPolicy) -> CaaVerdict:
    """
    Find the relevant CAA set of C{domain}, the closest one towards the
    root, and evaluate it for C{policy}.  Every level is asked at once, so
    a check takes one lookup's time however deep the name.
    """
    if not policy.applies:
        return CaaVerdict(NOT_APPLICABLE)
    labels = domain.split(".")
    names = [".".join(labels[i:]) for i in range(len(labels))]
    lookups = await gatherResults([resolver.lookup(name, "CAA") for name in names],
                                  consumeErrors=True)
    for name, lookup in zip(names, lookups):
        if lookup.failed:
            return CaaVerdict(FAILED, name, lookup=lookup)
        if lookup.outcome == ANSWER and lookup.values:
            return evaluate(tuple(lookup.values), policy, name)
    return CaaVerdict(NO_RECORDS)

"""
The DNS verification check of a site, and its report in plain words.

A site passes when both hold:

- its domain points at Veil: a CNAME whose chain reaches C{dns.proxy_cname}
  or, for a name that cannot have a CNAME (a zone apex, which has an SOA
  record, or a name with MX records), A/AAAA records that are all among
  C{dns.proxy_addresses}.  Any name whose addresses are all Veil's passes
  too: DNS providers that "flatten" CNAMEs publish them as addresses;
- C{TXT _veil.<domain>} holds the site's C{dns_token} (among any other TXT
  records there; the strings of one record are read joined, as RFC 7208
  reads them, and each on its own).

and, when Veil's certificate authority consults CAA (L{veil.dns.caa}),
no CAA record forbids it to issue for the domain: otherwise the site would
become active only to fail at its first certificate.

L{check_domain} returns a L{Report}: one L{RecordCheck} per record (what was
expected, what it resolved to, whether it is right, and for each problem
an explanation a site owner understands), plus non-blocking notes.
L{Report.to_json} is the shape stored in C{site_dns_checks.last_report} and
returned by the API.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults

from veil.dns import caa
from veil.dns.records import printable
from veil.dns.resolver import (
    ANSWER,
    LOOP,
    NODATA,
    NXDOMAIN,
    SERVFAIL,
    TIMEOUT,
    Lookup,
    StubResolver,
)

# Problem codes.
PROXY_NOT_CONFIGURED = "proxy_not_configured"
DOMAIN_NXDOMAIN = "nxdomain"
CNAME_MISSING = "cname_missing"
CNAME_WRONG = "cname_wrong"
ADDRESS_MISSING = "address_missing"
ADDRESS_WRONG = "address_wrong"
TXT_MISSING = "txt_missing"
TXT_WRONG = "txt_wrong"
CAA_FORBIDS = "caa_forbids"
RESOLVER_TIMEOUT = "timeout"
RESOLVER_ERROR = "servfail"
CNAME_LOOP = "cname_loop"

#: Record kinds in a report.
POINTING_CNAME = "CNAME"
POINTING_ADDRESSES = "A/AAAA"


@attrs.frozen
class DnsSettings:
    """What a site's DNS must point at, and the CA CAA is checked for."""

    proxy_cname: str | None
    proxy_addresses: tuple[str, ...]
    ca: caa.CaPolicy

    @classmethod
    def from_config(cls, config: Any) -> DnsSettings:
        return cls(config.dns.proxy_cname, config.dns.proxy_addresses, caa.ca_policy(config))

    @property
    def configured(self) -> bool:
        """Whether there is anything for a site to point at."""
        return self.proxy_cname is not None or bool(self.proxy_addresses)

    def is_ours(self, addresses: Sequence[str]) -> bool:
        """Whether C{addresses} is non-empty and every one is Veil's."""
        return bool(addresses) and set(addresses) <= set(self.proxy_addresses)


@attrs.frozen
class RecordCheck:
    """
    One record of the check.

    @ivar name: the DNS name looked at.
    @ivar type: C{"CNAME"}, C{"A/AAAA"}, C{"TXT"} or C{"CAA"}.
    @ivar expected: what Veil wants there, in words.
    @ivar found: what the name resolved to, each value as text.
    @ivar outcome: the lookup's outcome (L{veil.dns.resolver}), or
        C{"not_checked"}.
    @ivar ok: whether this record is as it must be.
    @ivar problem: the problem's code when not C{ok}.
    @ivar explanation: the problem, or a remark, for the site owner.
    """

    name: str
    type: str
    expected: str
    found: tuple[str, ...]
    outcome: str
    ok: bool
    problem: str | None = None
    explanation: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "expected": self.expected,
                "found": list(self.found), "outcome": self.outcome, "ok": self.ok,
                "problem": self.problem, "explanation": self.explanation}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecordCheck:
        return cls(data["name"], data["type"], data["expected"], tuple(data["found"]),
                   data["outcome"], data["ok"], data.get("problem"), data.get("explanation"))


@attrs.frozen
class Report:
    """The whole check of one domain."""

    domain: str
    checked_at: datetime
    ok: bool
    apex: bool
    records: tuple[RecordCheck, ...]
    notes: tuple[str, ...] = ()
    resolvers: str = ""

    @property
    def problems(self) -> tuple[RecordCheck, ...]:
        return tuple(r for r in self.records if not r.ok)

    @property
    def summary(self) -> str:
        """One line for C{sites.status_detail}."""
        if self.ok:
            return "DNS points at Veil and the ownership token matches."
        problems = self.problems
        first = problems[0].explanation or problems[0].problem or "DNS is not ready"
        more = len(problems) - 1
        return first if not more else f"{first} (and {more} more problem{'s' * (more > 1)})"

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "checked_at": self.checked_at.isoformat(),
                "ok": self.ok, "apex": self.apex, "summary": self.summary,
                "records": [r.to_json() for r in self.records], "notes": list(self.notes),
                "resolvers": self.resolvers}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        return cls(data["domain"], datetime.fromisoformat(data["checked_at"]), data["ok"],
                   data["apex"], tuple(RecordCheck.from_json(r) for r in data["records"]),
                   tuple(data.get("notes", ())), data.get("resolvers", ""))

    def text(self) -> str:
        """The report for a terminal: a line per record, then each explanation."""
        lines = []
        for r in self.records:
            mark = "ok  " if r.ok else "FAIL"
            found = ", ".join(r.found) if r.found else f"({_NOTHING.get(r.outcome, r.outcome)})"
            lines.append(f"  {mark} {r.type:<6} {r.name}")
            lines.append(f"         expected: {r.expected}")
            lines.append(f"         found:    {found}")
        for r in self.records:
            if r.explanation:
                lines.append(("" if r.ok else "* ") + r.explanation)
        lines.extend(self.notes)
        return "\n".join(lines)


# -- explanations ---------------------------------------------------------------

#: What a record with no values found means, for the text report.
_NOTHING = {ANSWER: "no records", NODATA: "no records of this type",
            NXDOMAIN: "the name does not exist", SERVFAIL: "the lookup failed",
            TIMEOUT: "no answer in time", LOOP: "a broken CNAME chain",
            "not_checked": "not checked"}


def _kind(rtype: str) -> str:
    return {"A": "address (A)", "AAAA": "IPv6 address (AAAA)", "TXT": "TXT", "CAA": "CAA",
            "SOA": "SOA", "MX": "MX"}.get(rtype, rtype)


def explain_failure(lookup: Lookup, resolvers: str) -> tuple[str, str]:
    """The problem and explanation for a lookup that got no usable answer."""
    what = f"the {_kind(lookup.rtype)} records of {lookup.name}"
    if lookup.outcome == TIMEOUT:
        return RESOLVER_TIMEOUT, (
            f"The DNS resolvers ({resolvers}) did not answer in time when Veil looked up"
            f" {what}. This is usually temporary and Veil will check again; if it keeps"
            " happening, the domain's name servers may be unreachable.")
    if lookup.outcome == LOOP:
        return CNAME_LOOP, (
            f"The CNAME records starting at {lookup.name} are broken: {lookup.detail}."
            " Fix them so that the chain ends at a name with addresses.")
    return RESOLVER_ERROR, (
        f"Looking up {what} failed: {lookup.detail}. This usually means the domain's name"
        " servers are not answering correctly (for example a broken delegation or a DNSSEC"
        " error); check the name servers at your registrar.")


def _addresses_text(addresses: Sequence[str]) -> str:
    parts = [f"{'AAAA' if ':' in a else 'A'} {a}" for a in addresses]
    return ", ".join(parts)


def _sorted_addresses(values: Sequence[str]) -> list[str]:
    return sorted(dict.fromkeys(values), key=lambda a: (":" in a, ipaddress.ip_address(a)))


# -- the checks --------------------------------------------------------------------


def _pointing(settings: DnsSettings, domain: str, a: Lookup, aaaa: Lookup, soa: Lookup,
              mx: Lookup, resolvers: str) -> tuple[RecordCheck, bool]:
    """Whether C{domain} points at Veil; also whether it is an apex."""
    cname, ours = settings.proxy_cname, settings.proxy_addresses
    ours_text = _addresses_text(ours)
    chain = a.chain or aaaa.chain
    addresses = _sorted_addresses([*(a.values if a.outcome == ANSWER else ()),
                                   *(aaaa.values if aaaa.outcome == ANSWER else ())])
    apex = soa.outcome == ANSWER and not soa.chain
    has_mx = mx.outcome == ANSWER and not mx.chain
    # Without a proxy name, or for a name that cannot be an alias: Veil's addresses.
    by_address = (cname is None and bool(ours)) or (not chain and (apex or has_mx))
    rtype = POINTING_ADDRESSES if by_address else POINTING_CNAME
    expected = (ours_text or "Veil's addresses (not configured)") if by_address else (
        cname or "Veil's host name (not configured)")
    found = tuple(f"CNAME {t}" for t in chain) + tuple(
        f"{'AAAA' if ':' in x else 'A'} {x}" for x in addresses)

    def record(ok: bool, problem: str | None = None, why: str | None = None,
               outcome: str = ANSWER) -> tuple[RecordCheck, bool]:
        return RecordCheck(domain, rtype, expected, found, outcome, ok, problem, why), apex

    outcome = a.outcome if a.outcome == ANSWER or aaaa.outcome != ANSWER else aaaa.outcome
    if chain and cname is not None and cname in chain:
        return record(True, outcome=outcome)  # whatever the other lookups did
    for lookup in (a, aaaa) if chain else (a, aaaa, soa, mx):
        if lookup.failed:
            return record(False, *explain_failure(lookup, resolvers), outcome=lookup.outcome)
    if settings.is_ours(addresses):
        return record(True, outcome=outcome)
    if not settings.configured:
        return record(False, PROXY_NOT_CONFIGURED, (
            "This Veil has no host name or addresses for sites to point at yet: the operator"
            " has not set dns.proxy_cname (or dns.proxy_addresses), so DNS verification cannot"
            " succeed. Ask the operator of this Veil to configure it."), outcome)
    if chain:
        if cname is None:
            return record(False, ADDRESS_WRONG, (
                f"{domain} is a CNAME to {chain[0]}, which does not lead to Veil's addresses"
                f" ({ours_text}). Replace the CNAME with address records: {ours_text}."),
                outcome)
        leads = "" if len(chain) == 1 else f" (which leads on to {chain[-1]})"
        where = (", which does not exist" if a.outcome == NXDOMAIN
                 else f", at {', '.join(addresses)}" if addresses else "")
        return record(False, CNAME_WRONG, (
            f"{domain} points at {chain[0]}{leads}{where}, not at Veil. Change the CNAME"
            f" record of {domain} so that it points at {cname}."), outcome)
    if a.outcome == NXDOMAIN:
        want = (f"a CNAME record {domain} → {cname}" if not by_address
                else f"address records for {domain}: {ours_text}")
        return record(False, DOMAIN_NXDOMAIN, (
            f"{domain} does not exist in DNS (the resolvers answered NXDOMAIN). Check the"
            f" spelling, then create {want} at your DNS provider. A record that was just"
            " created can take a few minutes to be seen."), NXDOMAIN)
    if by_address:
        if not ours:
            why = "a zone apex (it has an SOA record)" if apex else "a name with MX records"
            return record(False, PROXY_NOT_CONFIGURED, (
                f"{domain} is {why}, so it cannot have a CNAME record and must point at"
                " Veil's IP addresses, but the operator of this Veil has not configured them"
                " (dns.proxy_addresses). Ask the operator to configure them, or onboard a"
                f" subdomain such as www.{domain} instead."), outcome)
        reason = (" A zone apex cannot have a CNAME record, so it points at Veil by address."
                  if apex else " A name with MX records cannot have a CNAME record, so it"
                  " points at Veil by address." if has_mx else "")
        if not addresses:
            return record(False, ADDRESS_MISSING, (
                f"{domain} has no A or AAAA records. Create these address records for"
                f" {domain}: {ours_text}.{reason}"), outcome)
        foreign = [x for x in addresses if x not in ours]
        ipv6 = (" Visitors using IPv6 would bypass Veil." if all(":" in x for x in foreign)
                and any(":" not in x for x in addresses) else "")
        return record(False, ADDRESS_WRONG, (
            f"{domain} has address records that are not Veil's: {_addresses_text(foreign)}."
            f"{ipv6} Replace all of its A and AAAA records with {ours_text}.{reason}"), outcome)
    assert cname is not None
    if addresses:
        return record(False, CNAME_MISSING, (
            f"{domain} has no CNAME record: it has address records"
            f" ({_addresses_text(addresses)}) that point elsewhere. Delete them and create a"
            f" CNAME record {domain} → {cname}."), outcome)
    return record(False, CNAME_MISSING, (
        f"{domain} exists but has no CNAME, A or AAAA record. Create a CNAME record"
        f" {domain} → {cname}."), outcome)


def _token_matches(values: Sequence[tuple[str, ...]], token: str) -> bool:
    for strings in values:
        for candidate in ("".join(strings), *strings):
            if candidate.strip().strip('"').strip() == token:
                return True
    return False


def _ownership(domain: str, token: str, txt: Lookup, resolvers: str) -> RecordCheck:
    name = f"_veil.{domain}"
    found = tuple(printable("".join(strings)) for strings in txt.values)
    if txt.failed:
        return RecordCheck(name, "TXT", token, found, txt.outcome, False,
                           *explain_failure(txt, resolvers))
    if txt.outcome == ANSWER and _token_matches(txt.values, token):
        return RecordCheck(name, "TXT", token, found, txt.outcome, True)
    if txt.outcome == ANSWER:
        shown = ", ".join(f'"{v}"' for v in found[:3])
        others = f" and {len(found) - 3} more" if len(found) > 3 else ""
        return RecordCheck(name, "TXT", token, found, txt.outcome, False, TXT_WRONG, (
            f"The TXT records at {name} hold {shown}{others}, but not this site's ownership"
            f" token. Add a TXT record at {name} whose value is exactly {token} (other TXT"
            " records there may stay)."))
    return RecordCheck(name, "TXT", token, found, txt.outcome, False, TXT_MISSING, (
        f"There is no TXT record at {name}. Create a TXT record with the name {name} (in many"
        f" DNS providers' forms, the name without your zone, such as _veil) and the value"
        f" {token}; it proves that you control {domain}."))


def _caa(domain: str, verdict: caa.CaaVerdict, policy: caa.CaPolicy,
         resolvers: str) -> tuple[RecordCheck, str | None]:
    at = verdict.at or domain
    ids = ", ".join(policy.identifiers)
    expected = (f"{policy.name} ({ids}) may issue" if ids
                else f"{policy.name} may issue")
    found = tuple(r.text() for r in verdict.records)
    if verdict.verdict == caa.NOT_APPLICABLE:
        return RecordCheck(at, "CAA", "not checked: " + policy.name + " does not use CAA",
                           (), "not_checked", True), None
    if verdict.verdict == caa.FAILED:
        assert verdict.lookup is not None
        problem, why = explain_failure(verdict.lookup, resolvers)
        why += (" Certificate authorities refuse to issue while this lookup fails.")
        return RecordCheck(at, "CAA", expected, found, verdict.lookup.outcome, False,
                           problem, why), None
    if verdict.verdict == caa.NO_RECORDS:
        return RecordCheck(domain, "CAA", expected, found, NODATA, True), None
    if verdict.verdict == caa.ALLOWED:
        return RecordCheck(at, "CAA", expected, found, ANSWER, True), None
    if verdict.verdict == caa.UNKNOWN_CA:
        allowed = ", ".join(verdict.issuers) or "nobody"
        return RecordCheck(at, "CAA", expected, found, ANSWER, True), (
            f"Note: CAA records at {at} allow only {allowed} to issue certificates for"
            f" {domain}. Veil does not know which CAA name its certificate authority uses, so"
            " it cannot tell whether certificates will be issued (the operator can set"
            " dns.caa_identifiers).")
    first = ids.split(", ")[0] if ids else ""
    add = f' Add the record {at} CAA 0 issue "{first}", or remove the CAA records.'
    if verdict.reason == caa.CRITICAL_TAG:
        tags = ", ".join(sorted({r.tag for r in verdict.records
                                 if r.critical and r.tag not in caa.KNOWN_TAGS}))
        why = (f"A CAA record at {at} carries the critical flag on a property certificate"
               f" authorities do not know ({tags}), which forbids every CA to issue"
               f" certificates for {domain}. Remove that record or clear its flag.")
    elif verdict.reason == caa.METHODS:
        methods = ", ".join(policy.methods)
        why = (f"The CAA records at {at} allow {first} only with validation methods Veil does"
               f" not use (Veil uses {methods}), so {policy.name} would refuse to issue a"
               f" certificate for {domain}. Add {methods.split(', ')[0]} to the record's"
               " validationmethods, or remove that parameter.")
    elif verdict.reason == caa.NOBODY:
        why = (f"The CAA records at {at} forbid every certificate authority to issue"
               f" certificates for {domain} ({'; '.join(found)}), so Veil could not get a"
               f" certificate.{add}")
    else:
        allowed = ", ".join(verdict.issuers)
        why = (f"The CAA records at {at} allow only {allowed} to issue certificates for"
               f" {domain}, so {policy.name} ({ids}) would refuse and Veil could not get a"
               f" certificate.{add}")
    return RecordCheck(at, "CAA", expected, found, ANSWER, False, CAA_FORBIDS, why), None


async def check_domain(resolver: StubResolver, settings: DnsSettings, domain: str,
                       token: str, now: datetime) -> Report:
    """Check C{domain}'s DNS for Veil with ownership token C{token}."""
    a, aaaa, soa, mx, txt, verdict = await gatherResults([
        resolver.lookup(domain, "A"), resolver.lookup(domain, "AAAA"),
        resolver.lookup(domain, "SOA"), resolver.lookup(domain, "MX"),
        resolver.lookup(f"_veil.{domain}", "TXT"),
        Deferred.fromCoroutine(caa.check_caa(resolver, domain, settings.ca)),
    ], consumeErrors=True)
    resolvers = resolver.names
    pointing, apex = _pointing(settings, domain, a, aaaa, soa, mx, resolvers)
    ownership = _ownership(domain, token, txt, resolvers)
    authority, note = _caa(domain, verdict, settings.ca, resolvers)
    records = (pointing, ownership, authority)
    return Report(domain, now, all(r.ok for r in records), apex, records,
                  (note,) if note else (), resolvers)


def check(resolver: StubResolver, settings: DnsSettings, domain: str, token: str,
          now: datetime) -> Deferred[Report]:
    """L{check_domain} as a L{Deferred}."""
    return Deferred.fromCoroutine(check_domain(resolver, settings, domain, token, now))


def dns_instructions(settings: DnsSettings, domain: str, token: str,
                     apex: bool | None = None) -> dict[str, Any]:
    """
    The records a site owner creates, for the API's answer to a new site.

    C{records} is what to create: the CNAME (or, for an C{apex}, the A/AAAA
    records) and the TXT token; C{apex_records} are the address records
    that replace the CNAME when the domain turns out to be an apex (or has
    MX records).  C{missing} names the operator's keys that are not set,
    without which the site cannot be verified.
    """
    addresses = [{"type": "AAAA" if ":" in x else "A", "name": domain, "value": x}
                 for x in settings.proxy_addresses]
    txt = {"type": "TXT", "name": f"_veil.{domain}", "value": token}
    if apex or settings.proxy_cname is None:
        pointing = addresses
    else:
        pointing = [{"type": "CNAME", "name": domain, "value": settings.proxy_cname}]
    missing = []
    if settings.proxy_cname is None and not settings.proxy_addresses:
        missing = ["dns.proxy_cname", "dns.proxy_addresses"]
    elif apex and not settings.proxy_addresses:
        missing = ["dns.proxy_addresses"]
    return {
        "records": pointing + [txt],
        "apex_records": addresses,
        "proxy_cname": settings.proxy_cname,
        "proxy_addresses": list(settings.proxy_addresses),
        "apex": apex,
        "missing": missing,
    }


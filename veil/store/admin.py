"""
Administrative changes to sites, IP decisions and cluster-wide settings.

The C{veil} command uses these now and the dashboard will use them later.
Every change runs in one transaction together with its C{audit_log} row,
and the tables' triggers announce it on the change channels
(C{veil_sites}, C{veil_decisions}, C{veil_settings}) when it commits.

The C{normalise_*} and C{parse_*} functions are pure: they check operator
input against the schema's rules before anything touches the database, and
raise L{InvalidValue} with a message for a human.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
import psycopg
from psycopg.types.json import Jsonb
from twisted.internet.defer import Deferred

from veil.errors import VeilError
from veil.proxy.origins import OriginPolicy
from veil.store.db import Database

#: The built-in account the C{veil} command acts as.  C{.invalid} is reserved
#: (RFC 2606), so the address can never reach anyone; the account has no
#: password and no GitHub identity, so nobody can sign in as it.
OPERATOR_EMAIL = "operator@veil.invalid"

DECISION_TYPES = ("ban", "block", "throttle", "log_only", "scrutinize")
SITE_MODES = ("block", "monitor")
MAINTENANCE_KEY = "maintenance"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class InvalidValue(VeilError):
    """Operator input that does not fit the schema's rules."""


class SiteExists(VeilError):
    """A site with this domain already exists."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        super().__init__(f"site {domain} already exists")


class SiteNotFound(VeilError):
    """No site has this domain (or id)."""

    def __init__(self, site: str) -> None:
        self.site = site
        super().__init__(f"no site {site}")


class DecisionNotFound(VeilError):
    """No decision has this id."""

    def __init__(self, decision_id: UUID) -> None:
        self.decision_id = decision_id
        super().__init__(f"no decision {decision_id}")


# -- input ---------------------------------------------------------------------

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?:{_LABEL}\.)+{_LABEL}")
_HOST = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_LABEL_CHARS = re.compile(r"[a-z0-9-]+")
_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
#: Each unit at most once, largest first: 1h30m, not 30m1h or 1h1h.
_DURATION = re.compile("".join(rf"(?:(?P<{unit}>\d{{1,9}}){unit})?" for unit in _UNITS))
_LONGEST = timedelta(days=3650)
MAX_DOMAIN = 253
MAX_LABEL = 63
#: The longest reason a decision may carry, in characters.
MAX_REASON = 500


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def shown(text: str, limit: int = 60) -> str:
    """
    Operator input quoted for a message: escaped as Python does (so no
    control character reaches a terminal) and cut after C{limit}
    characters.
    """
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


def normalise_domain(text: str) -> str:
    """
    The site domain for C{text}: lower case, IDN labels in their C{xn--}
    form, no trailing dot; must satisfy C{sites_domain_format}.  The error
    names the first rule broken, the length rules first.
    """
    domain = text.strip().lower().removesuffix(".")
    quoted = shown(text)
    if not domain:
        raise InvalidValue("a domain name is required")
    if len(domain) > 4 * MAX_DOMAIN:
        raise InvalidValue(f"{quoted} is not a valid domain name: {len(domain)} characters,"
                           f" more than {MAX_DOMAIN}")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidValue(
                f"{quoted} is not a valid domain name: an empty or too long label, or"
                " characters IDNA does not allow") from None
    if domain.startswith("*."):
        raise InvalidValue(f"{quoted}: wildcard domains are not supported")
    if _is_ip(domain) or re.fullmatch(r"[0-9.]+", domain):
        raise InvalidValue(f"{quoted} is an IP address; a site needs a domain name")
    why = _domain_problem(domain)
    if why is not None:
        raise InvalidValue(f"{quoted} is not a valid domain name: {why}")
    if "." not in domain:
        raise InvalidValue(f"{quoted} needs at least one dot, like shop.example.com")
    assert _DOMAIN.fullmatch(domain)
    return domain


def _domain_problem(domain: str) -> str | None:
    """The first rule of a DNS name that C{domain} breaks, for a human, or L{None}."""
    if len(domain) > MAX_DOMAIN:
        return f"{len(domain)} characters, more than {MAX_DOMAIN}"
    for label in domain.split("."):
        if not label:
            return "an empty label (two dots in a row, or a leading dot)"
        if len(label) > MAX_LABEL:
            return (f"a label has {len(label)} characters, more than {MAX_LABEL}"
                    f" ({label[:20]!r}…)")
        if not _LABEL_CHARS.fullmatch(label):
            return (f"the label {shown(label, 20)} holds characters other than letters,"
                    " digits and hyphens")
        if label.startswith("-") or label.endswith("-"):
            return f"the label {shown(label, 20)} starts or ends with a hyphen"
    return None


def normalise_reason(text: str) -> str:
    """
    The reason a decision is recorded with: at most L{MAX_REASON}
    characters, none that a terminal or a page would act on (control and
    format characters, line breaks).
    """
    reason = text.strip()
    if len(reason) > MAX_REASON:
        raise InvalidValue(
            f"the reason has {len(reason)} characters; at most {MAX_REASON} are kept")
    for character in reason:
        if not character.isprintable():
            raise InvalidValue(
                f"the reason holds U+{ord(character):04X}, a control or invisible character;"
                " use plain text on one line")
    return reason


def normalise_upstream(text: str, origins: OriginPolicy | None = None) -> str:
    """
    The origin for C{text} as C{scheme://host[:port]} (http or https, no
    path, IPv6 in brackets), lower case; must satisfy C{sites_upstream_format},
    and C{origins} (the operator's origin policy; without one, only what is
    refused whatever the operator says: link-local and metadata addresses,
    zones, ...).  Veil checks the address again at every connection.
    """
    upstream = _upstream(text)
    scheme, _, authority = upstream.partition("://")
    host, _, port = authority.rpartition(":") if not authority.endswith("]") else (
        authority, "", "")
    if not host or (port and not port.isdigit()):
        host, port = authority, ""
    policy = origins if origins is not None else OriginPolicy(allow_private=True)
    reason = policy.upstream_refusal(host, int(port) if port else
                                     (443 if scheme == "https" else 80))
    if reason is not None:
        raise InvalidValue(f"{text!r}: the origin may not be {reason}")
    return upstream


def _upstream(text: str) -> str:
    match = re.fullmatch(r"(?i)(https?)://(.*)", text.strip())
    if match is None:
        raise InvalidValue(f"{text!r}: the origin must start with http:// or https://")
    scheme, rest = match.group(1).lower(), match.group(2)
    rest = rest.removesuffix("/")
    if any(c in rest for c in "/?#"):
        raise InvalidValue(
            f"{text!r}: the origin is scheme://host[:port], without a path, query or fragment")
    if "@" in rest:
        raise InvalidValue(f"{text!r}: the origin must not contain a user name or password")
    if not rest or any(c.isspace() for c in rest):
        raise InvalidValue(f"{text!r}: the origin needs a host, like https://10.0.0.5:8443")
    if rest.startswith("["):
        bracketed = re.fullmatch(r"\[([^\]]+)\](?::(.*))?", rest)
        if bracketed is None:
            raise InvalidValue(f"{text!r}: an IPv6 origin looks like http://[2001:db8::1]:8080")
        try:
            host = f"[{ipaddress.IPv6Address(bracketed.group(1)).compressed}]"
        except ValueError:
            raise InvalidValue(f"{text!r}: {bracketed.group(1)!r} is not an IPv6 address") from None
        port = bracketed.group(2)
    else:
        if rest.count(":") > 1:
            raise InvalidValue(
                f"{text!r}: put an IPv6 address in brackets, like http://[2001:db8::1]:8080")
        host, colon, port_text = rest.partition(":")
        port = port_text if colon else None
        host = host.lower()
        if re.fullmatch(r"[0-9.]+", host) and not _is_ip(host):
            raise InvalidValue(f"{text!r}: {host!r} is not an IPv4 address")
        if len(host) > 253 or not _HOST.fullmatch(host):
            raise InvalidValue(f"{text!r}: {host!r} is not a valid host name")
    if port is None:
        return f"{scheme}://{host}"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidValue(f"{text!r}: the port must be a number from 1 to 65535")
    return f"{scheme}://{host}:{int(port)}"


def parse_network(text: str) -> Network:
    """
    The network for an address or CIDR: a bare address becomes a /32 or
    /128; a network must have its host bits zero (C{decisions_target_is_network}).
    """
    target = text.strip()
    if "%" in target:
        raise InvalidValue(f"{text!r}: addresses with a zone (%...) are not supported")
    try:
        if "/" not in target:
            return ipaddress.ip_network(ipaddress.ip_address(target))
        return ipaddress.ip_network(target, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(target, strict=False)
    except ValueError:
        raise InvalidValue(
            f"{text!r} is not an IP address or network, like 203.0.113.7 or 10.0.0.0/8"
        ) from None
    address = target.partition("/")[0]
    raise InvalidValue(
        f"{target} has host bits set: the network is {loose}, or use {address}"
        " for the single address"
    )


def format_network(network: Network) -> str:
    """An address alone for a single host, else C{address/length}."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return network.with_prefixlen


def parse_duration(text: str) -> timedelta | None:
    """
    A duration such as C{30s}, C{15m}, C{1h}, C{7d}, C{2w} or C{1h30m};
    C{forever} is L{None} (no expiry).  At most ten years.
    """
    value = text.strip().lower()
    if value == "forever":
        return None
    match = _DURATION.fullmatch(value)
    if not value or match is None:
        raise InvalidValue(
            f"{shown(text)} is not a duration: use a number and a unit (30s, 15m, 1h, 7d,"
            " 2w), or several units from the largest down, each once (1h30m, 1d12h), or"
            " 'forever'"
        )
    seconds = sum(int(n) * _UNITS[unit] for unit, n in match.groupdict().items() if n)
    if seconds <= 0:
        raise InvalidValue(f"{text!r}: a duration must be longer than zero")
    if seconds > _LONGEST.total_seconds():
        raise InvalidValue(f"{text!r} is longer than ten years; use 'forever' for no expiry")
    return timedelta(seconds=seconds)


# -- records ------------------------------------------------------------------


@attrs.frozen
class SiteRecord:
    """A site as the operator sees it."""

    id: UUID
    domain: str
    upstream: str
    status: str
    mode: str
    maintenance: bool
    allow_plain_http: bool
    dns_token: str
    dns_verified_at: datetime | None
    created_at: datetime


_SITE = ("id, domain, upstream, status, mode, maintenance, allow_plain_http, dns_token,"
         " dns_verified_at, created_at")


@attrs.frozen
class DecisionRecord:
    """An IP decision, with its site's domain (L{None}: every site)."""

    id: UUID
    target: Network
    type: str
    source: str
    reason: str
    site_id: UUID | None
    site_domain: str | None
    created_at: datetime
    expires_at: datetime | None


_DECISION = ("d.id, d.target, d.type, d.source, d.reason, d.site_id, s.domain,"
             " d.created_at, d.expires_at FROM decisions d LEFT JOIN sites s ON s.id = d.site_id")


def _decision(row: tuple) -> DecisionRecord:
    # psycopg loads inet as an address (/32, /128) or an interface.
    return DecisionRecord(row[0], ipaddress.ip_network(str(row[1])), *row[2:])


@attrs.frozen
class MaintenanceStatus:
    """The cluster-wide switch and the sites in maintenance on their own."""

    enabled: bool
    sites: tuple[str, ...]


@attrs.frozen
class CertificateSummary:
    """The newest certificate of a site's domain, as the site page shows it."""

    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    #: When Veil first got a certificate for the domain.
    first_issued_at: datetime


@attrs.frozen
class StatusChange:
    """A status the site entered (schema 008's C{site_status_changes})."""

    status: str
    detail: str | None
    at: datetime


@attrs.frozen
class SiteDetail:
    """Everything a site's owner may see and set about it."""

    id: UUID
    domain: str
    upstream: str
    status: str
    status_detail: str | None
    mode: str
    paranoia: int
    threshold: int
    inspect_body_limit: int | None
    body_overflow: str
    allow_plain_http: bool
    origin_tls_verify: bool
    maintenance: bool
    max_body_size: int
    allow_trace: bool
    dns_token: str
    owner_id: UUID
    created_at: datetime
    updated_at: datetime
    dns_verified_at: datetime | None
    certificate: CertificateSummary | None = None
    history: tuple[StatusChange, ...] = ()


_DETAIL = ("id, domain, upstream, status, status_detail, mode, paranoia_level,"
           " anomaly_threshold, inspect_body_limit, body_overflow, allow_plain_http,"
           " origin_tls_verify, maintenance, max_body_size, allow_trace, dns_token, owner_id,"
           " created_at, updated_at, dns_verified_at")

#: What L{SiteAdmin.update} may change: the origin and the switches of the
#: C{sites} row (L{veil.store.waf.WafAdmin.set_settings} and
#: L{veil.store.site_limits.SiteLimits.set} own the others).
SITE_COLUMNS = {"upstream": "upstream", "allow_plain_http": "allow_plain_http",
                "origin_tls_verify": "origin_tls_verify"}


@attrs.frozen
class AuditEntry:
    """One row of C{audit_log}, with the actor's address for people to read."""

    id: int
    ts: datetime
    actor_id: UUID | None
    actor_email: str | None
    action: str
    target_type: str | None
    target_id: str | None
    detail: dict[str, Any]
    ip: str | None
    site_id: UUID | None


# -- transactions (on a database thread) --------------------------------------


def _audit(cur: psycopg.Cursor, actor: UUID | None, action: str, target_type: str,
           target_id: str, detail: dict[str, Any]) -> None:
    cur.execute(
        "INSERT INTO audit_log (actor_user_id, action, target_type, target_id, detail)"
        " VALUES (%s, %s, %s, %s, %s)",
        (actor, action, target_type, target_id, Jsonb(detail)),
    )


def _ensure_operator(cur: psycopg.Cursor) -> UUID:
    cur.execute(
        "INSERT INTO users (email, display_name, is_admin) VALUES (%s, %s, true)"
        " ON CONFLICT ((lower(email))) DO NOTHING",
        (OPERATOR_EMAIL, "Veil operator (command line)"),
    )
    cur.execute("SELECT id FROM users WHERE lower(email) = lower(%s)", (OPERATOR_EMAIL,))
    return cur.fetchone()[0]


def _add_site(cur: psycopg.Cursor, domain: str, upstream: str, owner: UUID, verified: bool,
              mode: str, allow_plain_http: bool) -> SiteRecord:
    cur.execute(
        "INSERT INTO sites (owner_id, domain, upstream, status, dns_verified_at, mode,"
        " allow_plain_http)"
        " VALUES (%s, %s, %s, %s, CASE WHEN %s::boolean THEN now() END, %s, %s)"
        f" ON CONFLICT (domain) DO NOTHING RETURNING {_SITE}",
        (owner, domain, upstream, "active" if verified else "pending", verified, mode,
         allow_plain_http),
    )
    row = cur.fetchone()
    if row is None:
        raise SiteExists(domain)
    site = SiteRecord(*row)
    _audit(cur, owner, "site.create", "site", str(site.id),
           {"domain": domain, "status": site.status, "mode": mode})
    return site


def _all_sites(cur: psycopg.Cursor) -> list[SiteRecord]:
    cur.execute(f"SELECT {_SITE} FROM sites ORDER BY domain")
    return [SiteRecord(*row) for row in cur.fetchall()]


def _one_site(cur: psycopg.Cursor, domain: str) -> SiteRecord | None:
    cur.execute(f"SELECT {_SITE} FROM sites WHERE domain = %s", (domain,))
    row = cur.fetchone()
    return None if row is None else SiteRecord(*row)


def _remove_site(cur: psycopg.Cursor, domain: str, actor: UUID | None) -> SiteRecord:
    cur.execute(f"DELETE FROM sites WHERE domain = %s RETURNING {_SITE}", (domain,))
    row = cur.fetchone()
    if row is None:
        raise SiteNotFound(domain)
    site = SiteRecord(*row)
    _audit(cur, actor, "site.delete", "site", str(site.id), {"domain": domain})
    return site


def _set_site_maintenance(cur: psycopg.Cursor, domain: str, enabled: bool,
                          actor: UUID | None) -> tuple[SiteRecord, bool]:
    cur.execute(f"SELECT {_SITE} FROM sites WHERE domain = %s FOR UPDATE", (domain,))
    row = cur.fetchone()
    if row is None:
        raise SiteNotFound(domain)
    if SiteRecord(*row).maintenance == enabled:
        return SiteRecord(*row), False
    cur.execute(f"UPDATE sites SET maintenance = %s WHERE domain = %s RETURNING {_SITE}",
                (enabled, domain))
    site = SiteRecord(*cur.fetchone())
    _audit(cur, actor, "site.update", "site", str(site.id), {"maintenance": enabled})
    return site, True


def _maintenance_value(value: object) -> bool:
    # {"enabled": true}; a bare true (an older example in the data model) also counts.
    if isinstance(value, dict):
        return value.get("enabled") is True
    return value is True


def _maintenance_status(cur: psycopg.Cursor) -> MaintenanceStatus:
    cur.execute("SELECT value FROM settings WHERE key = %s", (MAINTENANCE_KEY,))
    row = cur.fetchone()
    cur.execute("SELECT domain FROM sites WHERE maintenance ORDER BY domain")
    sites = tuple(domain for (domain,) in cur.fetchall())
    return MaintenanceStatus(row is not None and _maintenance_value(row[0]), sites)


def _set_maintenance(cur: psycopg.Cursor, enabled: bool, actor: UUID | None) -> bool:
    cur.execute("SELECT value FROM settings WHERE key = %s FOR UPDATE", (MAINTENANCE_KEY,))
    row = cur.fetchone()
    if (row is not None and _maintenance_value(row[0])) == enabled:
        return False
    value = {"enabled": enabled}
    cur.execute(
        "INSERT INTO settings (key, value, updated_by) VALUES (%s, %s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value,"
        " updated_by = EXCLUDED.updated_by",
        (MAINTENANCE_KEY, Jsonb(value), actor),
    )
    _audit(cur, actor, "settings.update", "setting", MAINTENANCE_KEY, {"value": value})
    return True


def _add_decision(cur: psycopg.Cursor, target: Network, type_: str, site_id: UUID | None,
                  duration: timedelta | None, reason: str, source: str,
                  actor: UUID | None) -> DecisionRecord:
    if site_id is not None:
        cur.execute("SELECT 1 FROM sites WHERE id = %s FOR KEY SHARE", (site_id,))
        if cur.fetchone() is None:
            raise SiteNotFound(str(site_id))
    cur.execute(
        "INSERT INTO decisions (site_id, target, type, reason, source, created_by, expires_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, now() + %s::interval) RETURNING id",
        (site_id, target, type_, reason, source, actor, duration),
    )
    decision_id = cur.fetchone()[0]
    cur.execute(f"SELECT {_DECISION} WHERE d.id = %s", (decision_id,))
    decision = _decision(cur.fetchone())
    # No address in the audit detail (data model): the decision id leads to it.
    _audit(cur, actor, "decision.create", "decision", str(decision_id), {
        "type": type_, "source": source,
        "site_id": None if site_id is None else str(site_id),
        "expires_at": None if decision.expires_at is None else decision.expires_at.isoformat(),
    })
    return decision


def _all_decisions(cur: psycopg.Cursor, site_id: UUID | None,
                   include_expired: bool) -> list[DecisionRecord]:
    cur.execute(
        f"SELECT {_DECISION}"
        " WHERE (%s::uuid IS NULL OR d.site_id = %s::uuid)"
        " AND (%s::boolean OR d.expires_at IS NULL OR d.expires_at > now())"
        " ORDER BY d.created_at DESC, d.id",
        (site_id, site_id, include_expired),
    )
    return [_decision(row) for row in cur.fetchall()]


def _remove_decision(cur: psycopg.Cursor, decision_id: UUID, actor: UUID | None,
                     site_id: UUID | None = None) -> DecisionRecord:
    cur.execute(f"SELECT {_DECISION} WHERE d.id = %s FOR UPDATE OF d", (decision_id,))
    row = cur.fetchone()
    if row is None or (site_id is not None and row[5] != site_id):
        raise DecisionNotFound(decision_id)
    cur.execute("DELETE FROM decisions WHERE id = %s", (decision_id,))
    decision = _decision(row)
    _audit(cur, actor, "decision.delete", "decision", str(decision_id),
           {"type": decision.type, "source": decision.source})
    return decision


def _site_detail(cur: psycopg.Cursor, site_id: UUID) -> SiteDetail | None:
    cur.execute(f"SELECT {_DETAIL} FROM sites WHERE id = %s", (site_id,))
    row = cur.fetchone()
    if row is None:
        return None
    site = SiteDetail(*row)
    cur.execute(
        "SELECT issuer, serial, not_before, not_after,"
        " (SELECT min(created_at) FROM certificates WHERE name = %s)"
        " FROM certificates WHERE name = %s AND status = 'valid'"
        " ORDER BY not_after DESC LIMIT 1", (site.domain, site.domain))
    found = cur.fetchone()
    cur.execute("SELECT status, detail, at FROM site_status_changes WHERE site_id = %s"
                " ORDER BY id DESC LIMIT 20", (site_id,))
    history = tuple(StatusChange(*r) for r in reversed(cur.fetchall()))
    return attrs.evolve(site, certificate=None if found is None else CertificateSummary(*found),
                        history=history)


def _update_site(cur: psycopg.Cursor, domain: str, changes: dict[str, Any],
                 actor: UUID | None) -> SiteRecord:
    """The origin and switches of the C{sites} row: changed, audited with before and after."""
    columns = ", ".join(SITE_COLUMNS[field] for field in changes)
    cur.execute(f"SELECT {columns} FROM sites WHERE domain = %s FOR NO KEY UPDATE", (domain,))
    row = cur.fetchone()
    if row is None:
        raise SiteNotFound(domain)
    before = dict(zip(changes, row))
    changed = {field: value for field, value in changes.items() if before[field] != value}
    if changed:
        assignments = ", ".join(f"{SITE_COLUMNS[field]} = %s" for field in changed)
        cur.execute(f"UPDATE sites SET {assignments} WHERE domain = %s RETURNING id",
                    (*changed.values(), domain))
        site_id = cur.fetchone()[0]
        _audit(cur, actor, "site.update", "site", str(site_id), {
            "domain": domain,
            "changes": {SITE_COLUMNS[field]: {"from": before[field], "to": value}
                        for field, value in changed.items()}})
    cur.execute(f"SELECT {_SITE} FROM sites WHERE domain = %s", (domain,))
    return SiteRecord(*cur.fetchone())


def _change_site(cur: psycopg.Cursor, domain: str, site: dict[str, Any], waf: dict[str, Any],
                 limits: dict[str, Any], maintenance: bool | None, actor: UUID | None) -> None:
    """Every part of a settings change, in one transaction (see L{SiteAdmin.change})."""
    from veil.store import site_limits
    from veil.store import waf as waf_store

    if site:
        _update_site(cur, domain, site, actor)
    if waf:
        waf_store._set_settings(cur, domain, waf, actor)
    if limits:
        current = site_limits._get(cur, domain)
        wanted = {k: v for k, v in limits.items() if getattr(current, k) != v}
        if wanted:
            site_limits._set(cur, domain, wanted.get("max_body_size"),
                             wanted.get("allow_trace"), actor)
    if maintenance is not None:
        _set_site_maintenance(cur, domain, maintenance, actor)


def _decisions_page(cur: psycopg.Cursor, site_id: UUID, after: tuple[datetime, UUID] | None,
                    limit: int) -> list[DecisionRecord]:
    keyset = "" if after is None else " AND (d.created_at, d.id) < (%s, %s)"
    cur.execute(
        f"SELECT {_DECISION} WHERE d.site_id = %s"
        " AND (d.expires_at IS NULL OR d.expires_at > now())"
        f"{keyset} ORDER BY d.created_at DESC, d.id DESC LIMIT %s",
        (site_id, *(after or ()), limit))
    return [_decision(row) for row in cur.fetchall()]


def _audit_entries(cur: psycopg.Cursor, site_id: UUID | None, before: int | None, limit: int,
                   action: str | None, actor: UUID | None) -> list[AuditEntry]:
    where, params = [], []
    if site_id is not None:
        where.append("a.site_id = %s")
        params.append(site_id)
    if before is not None:
        where.append("a.id < %s")
        params.append(before)
    if action is not None:
        where.append("a.action LIKE %s")
        params.append(action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                      + "%")
    if actor is not None:
        where.append("a.actor_user_id = %s")
        params.append(actor)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    cur.execute(
        "SELECT a.id, a.ts, a.actor_user_id, u.email, a.action, a.target_type, a.target_id,"
        " a.detail, host(a.ip), a.site_id FROM audit_log a"
        f" LEFT JOIN users u ON u.id = a.actor_user_id{clause}"
        " ORDER BY a.id DESC LIMIT %s", (*params, limit))
    return [AuditEntry(*row) for row in cur.fetchall()]


# -- the store API -------------------------------------------------------------


class OperatorAccount:
    """The built-in account that command-line changes are made as."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def ensure(self) -> Deferred[UUID]:
        """The operator's user id, creating the account on first use."""
        return self._db.transact("admin.operator", _ensure_operator)


class SiteAdmin:
    """
    Adding, listing and removing sites, and their maintenance switch.

    @param origins: the origin policy new sites' origins must satisfy
        (L{OriginPolicy.from_config}); without one, only what is refused
        whatever the operator says.
    """

    def __init__(self, db: Database, origins: OriginPolicy | None = None) -> None:
        self._db = db
        self._origins = origins

    def add(self, domain: str, upstream: str, owner: UUID, *, verified: bool = False,
            mode: str = "block", allow_plain_http: bool = False) -> Deferred[SiteRecord]:
        """
        Add a site owned by C{owner}: C{active} with its DNS marked verified
        when C{verified}, else C{pending}.

        @raise InvalidValue: for a bad domain, origin or mode (at once).
        @raise SiteExists: (in the Deferred) when the domain is taken.
        """
        domain, upstream = normalise_domain(domain), normalise_upstream(upstream, self._origins)
        if mode not in SITE_MODES:
            raise InvalidValue(f"mode must be one of {', '.join(SITE_MODES)}, not {mode!r}")
        return self._db.transact("admin.sites.add", _add_site, domain, upstream, owner,
                                 verified, mode, allow_plain_http)

    def all(self) -> Deferred[list[SiteRecord]]:
        """Every site, by domain."""
        return self._db.transact("admin.sites.all", _all_sites)

    def get(self, domain: str) -> Deferred[SiteRecord | None]:
        """The site for C{domain}, or L{None}."""
        return self._db.transact("admin.sites.get", _one_site, normalise_domain(domain))

    def remove(self, domain: str, actor: UUID | None) -> Deferred[SiteRecord]:
        """Delete a site and everything that cascades from it; fires with what it was."""
        return self._db.transact("admin.sites.remove", _remove_site,
                                 normalise_domain(domain), actor)

    def set_maintenance(self, domain: str, enabled: bool,
                        actor: UUID | None) -> Deferred[tuple[SiteRecord, bool]]:
        """Switch a site's maintenance; fires with the site and whether it changed."""
        return self._db.transact("admin.sites.maintenance", _set_site_maintenance,
                                 normalise_domain(domain), enabled, actor)

    def detail(self, site_id: UUID) -> Deferred[SiteDetail | None]:
        """
        The site with every setting, its newest valid certificate and its
        last 20 status changes (oldest first); L{None} for no such site.
        """
        return self._db.transact("admin.sites.detail", _site_detail, site_id)

    def change(self, domain: str, actor: UUID | None, *, site: dict[str, Any] | None = None,
               waf: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
               maintenance: bool | None = None) -> Deferred[None]:
        """
        Change a site's settings in one transaction, each part by the store
        that owns it, each audited: C{site} (L{SITE_COLUMNS}: C{upstream},
        checked against the origin policy, C{allow_plain_http},
        C{origin_tls_verify}), C{waf} (L{veil.store.waf.SETTING_COLUMNS},
        already parsed), C{limits} (C{max_body_size}, C{allow_trace}) and
        C{maintenance}.

        @raise InvalidValue: (at once) for a bad value.
        @raise SiteNotFound: (in the Deferred) when the site is gone.
        """
        from veil.store.site_limits import check_max_body_size
        from veil.store.waf import SETTING_COLUMNS

        site = dict(site or {})
        for field in site:
            if field not in SITE_COLUMNS:
                raise InvalidValue(f"{field!r} is not a site setting")
        if "upstream" in site:
            site["upstream"] = normalise_upstream(site["upstream"], self._origins)
        for field in waf or {}:
            if field not in SETTING_COLUMNS:
                raise InvalidValue(f"{field!r} is not a WAF setting")
        limits = dict(limits or {})
        if "max_body_size" in limits:
            check_max_body_size(limits["max_body_size"])
        return self._db.transact("admin.sites.change", _change_site, normalise_domain(domain),
                                 site, dict(waf or {}), limits, maintenance, actor)


class DecisionAdmin:
    """Adding, listing and removing IP decisions."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, target: str | Network, type_: str, actor: UUID | None, *,
            duration: timedelta | None, site_id: UUID | None = None, reason: str = "",
            source: str = "manual") -> Deferred[DecisionRecord]:
        """
        Add a decision for C{target} (every site when C{site_id} is L{None}),
        expiring after C{duration} (never when L{None}).

        @raise InvalidValue: for a bad target, type or reason (at once).
        @raise SiteNotFound: (in the Deferred) when the site is gone.
        """
        network = parse_network(target) if isinstance(target, str) else target
        if type_ not in DECISION_TYPES:
            raise InvalidValue(f"type must be one of {', '.join(DECISION_TYPES)}, not {type_!r}")
        return self._db.transact("admin.decisions.add", _add_decision, network, type_,
                                 site_id, duration, normalise_reason(reason), source, actor)

    def all(self, site_id: UUID | None = None,
            include_expired: bool = False) -> Deferred[list[DecisionRecord]]:
        """Decisions, newest first: one site's when C{site_id} is given."""
        return self._db.transact("admin.decisions.all", _all_decisions, site_id,
                                 include_expired)

    def page(self, site_id: UUID, after: tuple[datetime, UUID] | None,
             limit: int) -> Deferred[list[DecisionRecord]]:
        """One site's decisions in force, newest first, after the key C{(created_at, id)}."""
        return self._db.transact("admin.decisions.page", _decisions_page, site_id, after, limit)

    def remove(self, decision_id: UUID, actor: UUID | None,
               site_id: UUID | None = None) -> Deferred[DecisionRecord]:
        """
        Delete a decision (only one of site C{site_id}'s, when given: another's
        is L{DecisionNotFound}); fires with what it was.
        """
        return self._db.transact("admin.decisions.remove", _remove_decision, decision_id,
                                 actor, site_id)


class AuditLog:
    """Reading C{audit_log}, newest first."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def entries(self, *, site_id: UUID | None = None, before: int | None = None,
                limit: int = 50, action: str | None = None,
                actor: UUID | None = None) -> Deferred[list[AuditEntry]]:
        """
        Rows (of one site, with C{site_id}) whose id is below C{before};
        C{action} is a prefix (C{site.}, C{auth.sign_in}).
        """
        return self._db.transact("admin.audit.entries", _audit_entries, site_id, before, limit,
                                 action, actor)


class SettingsAdmin:
    """Cluster-wide switches in C{settings}."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def maintenance(self) -> Deferred[MaintenanceStatus]:
        """The cluster-wide maintenance switch and the sites in maintenance."""
        return self._db.transact("admin.settings.maintenance", _maintenance_status)

    def set_maintenance(self, enabled: bool, actor: UUID | None) -> Deferred[bool]:
        """Switch maintenance for every site; fires with whether it changed."""
        return self._db.transact("admin.settings.set_maintenance", _set_maintenance,
                                 enabled, actor)

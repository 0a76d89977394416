"""
Changes to the WAF's configuration: per-site tuning, exclusions and endpoint
profiles (DESIGN §6, stages 3-5).

The C{veil sites set} and C{veil waf} commands use these, and the dashboard
will.  Every change runs in one transaction with its C{audit_log} row; the
tables' triggers then tell every process (C{veil_sites}, C{veil_rules},
C{veil_endpoint_profiles}), whose L{veil.store.policies.PolicyTable} swaps
the site's new policy in, without a restart.

Exclusions live in the site's rules document (the C{rules} table, versioned
per site, one version active; see C{schema/004_waf.sql}).  Each change
writes a new version with who made it and a comment saying what changed,
and makes it the active one; an exclusion keeps its id from version to
version, and an id is never given twice.  Changes to one site are
serialised by a lock on its C{sites} row.

The C{parse_*} and C{check_*} functions are pure: they check operator input
before anything touches the database, and raise L{InvalidValue} with a
message for a human.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from twisted.internet.defer import Deferred

from veil.errors import VeilError
from veil.store.admin import InvalidValue, SiteNotFound, normalise_domain
from veil.store.db import Database
from veil.store.policies import EXCLUSION_ID, exclusion_from_json, profile_precedence
from veil.waf.policy import (
    ATTACK_CLASSES,
    BODY_OVERFLOW,
    MAX_INSPECT_BODY_LIMIT,
    MODES,
    PROFILE_MODES,
    STRICTEST_PARANOIA,
    EndpointProfile,
    parse_target,
)

#: The longest comment kept with a change, in characters.
COMMENT_MAX = 500
#: Characters of exclusion ids: no 0, 1, i, l, o, which read like others.
_ID_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
_PATH_MAX = 1024
_PATTERN_MAX = 512
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
_SEGMENT = re.compile(r"\{[A-Za-z0-9_]{1,64}\}")
_SIZE = re.compile(r"(\d{1,9})\s*(|b|k|kb|kib|m|mb|mib)")
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024 ** 2, "mb": 1024 ** 2,
          "mib": 1024 ** 2}
#: Bidirectional and line-breaking formatting characters, refused like controls:
#: they make a comment display as something else than it says.
_FORMATTING = frozenset("\u2028\u2029\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                        "\u2066\u2067\u2068\u2069")


class ExclusionNotFound(VeilError):
    """No site's active rules document has an exclusion with this id."""

    def __init__(self, exclusion_id: str) -> None:
        self.exclusion_id = exclusion_id
        super().__init__(f"no exclusion {exclusion_id} (see `veil waf exclusions DOMAIN`)")


class ProfileNotFound(VeilError):
    """The site has no endpoint profile for this method and pattern."""

    def __init__(self, domain: str, method: str, pattern: str) -> None:
        super().__init__(f"{domain} has no endpoint profile for {method} {pattern}"
                         " (see `veil waf profiles DOMAIN`)")


# -- input ---------------------------------------------------------------------------


def _bad_character(text: str) -> str | None:
    for c in text:
        if ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 or c in _FORMATTING:
            return f"U+{ord(c):04X}"
    return None


def check_text(text: str, what: str, limit: int = COMMENT_MAX) -> str:
    """
    Free text an operator gives with a change (a comment): trimmed, at most
    C{limit} characters, without control or bidirectional formatting characters.
    """
    text = text.strip()
    if len(text) > limit:
        raise InvalidValue(f"{what} is {len(text)} characters long; at most {limit} are kept")
    bad = _bad_character(text)
    if bad is not None:
        raise InvalidValue(f"{what} must not contain control characters ({bad} found)")
    return text


def parse_mode(text: str) -> str:
    mode = text.strip().lower()
    if mode not in MODES:
        raise InvalidValue(f"mode must be one of {', '.join(MODES)}, not {text!r}")
    return mode


def parse_paranoia(text: str | int) -> int:
    """A paranoia level, 1 (fewest false positives) to 4 (strictest)."""
    value = str(text).strip()
    if not value.isdigit() or not 1 <= int(value) <= STRICTEST_PARANOIA:
        raise InvalidValue(f"the paranoia level is 1, 2, 3 or {STRICTEST_PARANOIA}, not {text!r}")
    return int(value)


def parse_threshold(text: str | int) -> int:
    """An anomaly threshold: the score, 1 to 1000, at which a request is malicious."""
    value = str(text).strip()
    if not value.isdigit() or not 1 <= int(value) <= 1000:
        raise InvalidValue(
            f"the anomaly threshold is a whole number from 1 to 1000 (a critical match"
            f" scores 5), not {text!r}")
    return int(value)


def parse_body_limit(text: str) -> int | None:
    """
    Bytes of a request body held for inspection: a number with an optional
    unit (C{16384}, C{64k}, C{256KiB}, C{1MiB}; k and M are 1024-based), at
    most 1 MiB; C{default} (L{None}) for Veil's configured default.
    """
    value = text.strip().lower()
    if value == "default":
        return None
    match = _SIZE.fullmatch(value)
    if match is None:
        raise InvalidValue(
            f"{text!r} is not a size: a number of bytes, optionally with k or M"
            " (64k, 256KiB, 1MiB), or 'default'")
    size = int(match.group(1)) * _UNITS[match.group(2)]
    if size > MAX_INSPECT_BODY_LIMIT:
        raise InvalidValue(f"{text!r} is more than the largest inspection limit, 1 MiB"
                           f" ({MAX_INSPECT_BODY_LIMIT} bytes)")
    return size


def parse_body_overflow(text: str) -> str:
    value = text.strip().lower()
    if value not in BODY_OVERFLOW:
        raise InvalidValue(f"body overflow must be one of {', '.join(BODY_OVERFLOW)},"
                           f" not {text!r}")
    return value


def parse_rule_id(text: str | int) -> int:
    """A rule's id: a positive whole number."""
    value = str(text).strip()
    if not value.isdigit() or not 0 < int(value) < 2 ** 31:
        raise InvalidValue(f"{text!r} is not a rule id (see `veil waf rules`)")
    return int(value)


def parse_attack_class(text: str) -> str:
    value = text.strip().lower()
    if value not in ATTACK_CLASSES:
        raise InvalidValue(f"{text!r} is not an attack class: one of {', '.join(ATTACK_CLASSES)}")
    return value


def parse_path_prefix(text: str) -> str:
    """
    A path prefix an exclusion is limited to, compared with the normalised
    (percent-decoded) path: starts with C{/}.
    """
    if not text.startswith("/"):
        raise InvalidValue(f"the path prefix {text!r} must start with /")
    if len(text) > _PATH_MAX:
        raise InvalidValue(f"the path prefix is longer than {_PATH_MAX} characters")
    bad = _bad_character(text)
    if bad is not None:
        raise InvalidValue(f"the path prefix must not contain control characters ({bad} found)")
    return text


def parse_exclusion_target(text: str) -> str:
    """A target such as C{args:q}, C{cookies:session} or C{headers:user-agent}."""
    try:
        return parse_target(text)
    except ValueError as e:
        raise InvalidValue(f"bad target: {e}") from None


def parse_exclusion_id(text: str) -> str:
    value = text.strip().lower()
    if not EXCLUSION_ID.fullmatch(value):
        raise InvalidValue(f"{text!r} is not an exclusion id (see `veil waf exclusions DOMAIN`)")
    return value


def parse_method(text: str) -> str:
    """An HTTP method in upper case, or C{*} for any."""
    value = text.strip().upper()
    if value != "*" and not _METHOD.fullmatch(value):
        raise InvalidValue(f"{text!r} is not an HTTP method (or * for any)")
    return value


def parse_profile_mode(text: str) -> str:
    value = text.strip().lower()
    if value not in PROFILE_MODES:
        raise InvalidValue(f"an endpoint profile's mode is one of {', '.join(PROFILE_MODES)},"
                           f" not {text!r}")
    return value


def parse_pattern(text: str, mode: str = "normal") -> str:
    """
    An endpoint profile's path pattern (see L{EndpointProfile}): an exact
    path (C{/healthz}), a prefix (C{/static/*}), a suffix (C{*.css}), with
    C{{name}} for one whole segment (C{/api/users/{id}}).  A C{skip}
    pattern may not cover every path.
    """
    pattern = text.strip()
    if not pattern.startswith(("/", "*")):
        raise InvalidValue(f"the pattern {text!r} must start with / (or * for a suffix"
                           " such as *.css)")
    if len(pattern) > _PATTERN_MAX:
        raise InvalidValue(f"the pattern is longer than {_PATTERN_MAX} characters")
    if _bad_character(pattern) is not None or any(c.isspace() for c in pattern):
        raise InvalidValue(f"the pattern {text!r} must not contain spaces or control characters")
    stars = pattern.count("*")
    if stars > 1 or (stars == 1 and not (pattern.startswith("*") or pattern.endswith("*"))):
        raise InvalidValue(f"the pattern {text!r} may have one *, at its start (a suffix)"
                           " or at its end (a prefix)")
    if "{" in pattern or "}" in pattern:
        if pattern.startswith("*"):
            raise InvalidValue(f"the suffix pattern {text!r} cannot have {{name}} segments")
        for segment in pattern.rstrip("*").split("/"):
            if ("{" in segment or "}" in segment) and not _SEGMENT.fullmatch(segment):
                raise InvalidValue(f"in {text!r}, {{name}} must be a whole segment, like"
                                   " /api/users/{id}")
    if mode == "skip" and pattern.replace("*", "") in ("", "/"):
        raise InvalidValue(
            f"{text!r} would turn inspection off for every request of the site; to stop"
            " blocking, use `veil sites set DOMAIN --mode monitor` instead")
    return pattern


# -- records ------------------------------------------------------------------------


@attrs.frozen
class WafSettings:
    """A site's WAF tuning (L{None} body limit: Veil's configured default)."""

    site_id: UUID
    domain: str
    mode: str
    paranoia: int
    threshold: int
    inspect_body_limit: int | None
    body_overflow: str


#: L{WafSettings} fields that C{set_settings} may change, and their columns.
SETTING_COLUMNS = {
    "mode": "mode", "paranoia": "paranoia_level", "threshold": "anomaly_threshold",
    "inspect_body_limit": "inspect_body_limit", "body_overflow": "body_overflow",
}
_SETTINGS = ("id, domain, mode, paranoia_level, anomaly_threshold, inspect_body_limit,"
             " body_overflow")


@attrs.frozen
class ExclusionRecord:
    """An exclusion as the operator sees it, with its site and history."""

    id: str
    site_id: UUID
    domain: str
    rule_id: int | None
    attack_class: str | None
    path_prefix: str | None
    target: str | None
    comment: str
    created_at: str | None
    created_by: str | None

    def describe(self) -> str:
        """What it turns off, where: C{rule 942100 under /search for args:q}."""
        what = f"rule {self.rule_id}" if self.rule_id is not None else f"class {self.attack_class}"
        if self.path_prefix is not None:
            what += f" under {self.path_prefix}"
        if self.target is not None:
            what += f" for {self.target}"
        return what


@attrs.frozen
class ProfileRecord:
    """An endpoint profile, with what the behaviour stage learned of it."""

    domain: str
    method: str
    pattern: str
    mode: str
    request_count: int
    last_seen: datetime | None


@attrs.frozen
class RulesVersion:
    """One version of a site's rules document."""

    version: int
    created_at: datetime
    created_by: str | None
    comment: str
    active: bool
    exclusions: int


# -- transactions (database threads) ------------------------------------------------------


def _audit(cur: psycopg.Cursor, actor: UUID | None, action: str, target_type: str,
           target_id: str, detail: dict[str, Any]) -> None:
    cur.execute(
        "INSERT INTO audit_log (actor_user_id, action, target_type, target_id, detail)"
        " VALUES (%s, %s, %s, %s, %s)",
        (actor, action, target_type, target_id, Jsonb(detail)))


def _lock_site(cur: psycopg.Cursor, domain: str) -> UUID:
    """The site's id, its row locked until the transaction ends (one change at a time)."""
    cur.execute("SELECT id FROM sites WHERE domain = %s FOR NO KEY UPDATE", (domain,))
    row = cur.fetchone()
    if row is None:
        raise SiteNotFound(domain)
    return row[0]


def _site_id(cur: psycopg.Cursor, domain: str) -> UUID:
    cur.execute("SELECT id FROM sites WHERE domain = %s", (domain,))
    row = cur.fetchone()
    if row is None:
        raise SiteNotFound(domain)
    return row[0]


def _settings(cur: psycopg.Cursor, domain: str) -> WafSettings:
    cur.execute(f"SELECT {_SETTINGS} FROM sites WHERE domain = %s", (domain,))
    row = cur.fetchone()
    if row is None:
        raise SiteNotFound(domain)
    return WafSettings(*row)


def _set_settings(cur: psycopg.Cursor, domain: str, changes: dict[str, Any],
                  actor: UUID | None) -> tuple[WafSettings, WafSettings]:
    cur.execute(f"SELECT {_SETTINGS} FROM sites WHERE domain = %s FOR NO KEY UPDATE",
                (domain,))
    row = cur.fetchone()
    if row is None:
        raise SiteNotFound(domain)
    before = WafSettings(*row)
    changed = {field: value for field, value in changes.items()
               if getattr(before, field) != value}
    if not changed:
        return before, before
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = %s").format(sql.Identifier(SETTING_COLUMNS[field])) for field in changed)
    cur.execute(sql.SQL("UPDATE sites SET {} WHERE id = %s RETURNING {}").format(
        assignments, sql.SQL(_SETTINGS)), (*changed.values(), before.site_id))
    after = WafSettings(*cur.fetchone())
    _audit(cur, actor, "site.update", "site", str(before.site_id), {
        "domain": domain,
        "changes": {SETTING_COLUMNS[field]: {"from": getattr(before, field), "to": value}
                    for field, value in changed.items()},
    })
    return before, after


def _document(cur: psycopg.Cursor, site_id: UUID) -> tuple[dict[str, Any], list[Any]]:
    """The site's active rules document (empty without one) and its exclusion entries."""
    cur.execute("SELECT body FROM rules WHERE site_id = %s AND is_active", (site_id,))
    row = cur.fetchone()
    body = {} if row is None else row[0]
    entries = body.get("exclusions", [])
    if not isinstance(entries, list):
        raise InvalidValue("the site's active rules document has a malformed 'exclusions'"
                           " entry; no change made")
    return body, entries


def _write_version(cur: psycopg.Cursor, site_id: UUID, body: dict[str, Any],
                   actor: UUID | None, comment: str) -> int:
    """Store C{body} as the site's next version and make it the active one."""
    cur.execute("SELECT coalesce(max(version), 0) + 1 FROM rules WHERE site_id = %s",
                (site_id,))
    version = cur.fetchone()[0]
    # Two statements: the unique index on the active version is checked row by row.
    cur.execute("UPDATE rules SET is_active = false WHERE site_id = %s AND is_active",
                (site_id,))
    cur.execute("INSERT INTO rules (site_id, version, body, comment, created_by, is_active)"
                " VALUES (%s, %s, %s, %s, %s, true)",
                (site_id, version, Jsonb(body), comment[:COMMENT_MAX * 2], actor))
    return version


def _record(entry: dict[str, Any], site_id: UUID, domain: str) -> ExclusionRecord:
    exclusion = exclusion_from_json(entry)
    return ExclusionRecord(
        exclusion.id, site_id, domain, exclusion.rule_id, exclusion.attack_class,
        exclusion.path_prefix, exclusion.target, entry.get("comment") or "",
        entry.get("created_at"), entry.get("created_by"))


def _holding(exclusion_id: str) -> Jsonb:
    return Jsonb([{"id": exclusion_id}])


def _new_exclusion_id(cur: psycopg.Cursor) -> str:
    """An id no version of any site's rules document has ever used."""
    while True:
        candidate = "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
        cur.execute("SELECT EXISTS (SELECT 1 FROM rules WHERE body -> 'exclusions' @> %s)",
                    (_holding(candidate),))
        if not cur.fetchone()[0]:
            return candidate


def _exclude(cur: psycopg.Cursor, domain: str, actor: UUID | None, rule_id: int | None,
             attack_class: str | None, path_prefix: str | None, target: str | None,
             comment: str) -> tuple[ExclusionRecord, bool]:
    site_id = _lock_site(cur, domain)
    body, entries = _document(cur, site_id)
    wanted = {"rule": rule_id, "class": attack_class, "path": path_prefix, "target": target}
    for entry in entries:
        if isinstance(entry, dict) and all(entry.get(k) == v for k, v in wanted.items()):
            return _record(entry, site_id, domain), False
    entry: dict[str, Any] = {"id": _new_exclusion_id(cur)}
    entry.update((k, v) for k, v in wanted.items() if v is not None)
    if comment:
        entry["comment"] = comment
    cur.execute("SELECT now()")
    entry["created_at"] = cur.fetchone()[0].isoformat()
    entry["created_by"] = None if actor is None else str(actor)
    record = _record(entry, site_id, domain)
    version = _write_version(cur, site_id, {**body, "exclusions": [*entries, entry]}, actor,
                             f"exclusion {record.id} added: {record.describe()}"
                             + (f" ({comment})" if comment else ""))
    _audit(cur, actor, "waf.exclusion.create", "exclusion", record.id, {
        "site_id": str(site_id), "domain": domain, "version": version,
        "exclusion": {k: v for k, v in entry.items() if k != "created_by"},
    })
    return record, True


def _unexclude(cur: psycopg.Cursor, exclusion_id: str, actor: UUID | None,
               comment: str, only: str | None = None) -> ExclusionRecord:
    cur.execute("SELECT s.domain FROM rules r JOIN sites s ON s.id = r.site_id"
                " WHERE r.is_active AND r.body -> 'exclusions' @> %s",
                (_holding(exclusion_id),))
    row = cur.fetchone()
    if row is None or (only is not None and row[0] != only):
        raise ExclusionNotFound(exclusion_id)
    domain = row[0]
    site_id = _lock_site(cur, domain)
    body, entries = _document(cur, site_id)  # again, now that the site is locked
    kept = [e for e in entries if not (isinstance(e, dict) and e.get("id") == exclusion_id)]
    if len(kept) == len(entries):
        raise ExclusionNotFound(exclusion_id)
    gone = next(e for e in entries if isinstance(e, dict) and e.get("id") == exclusion_id)
    try:
        record = _record(gone, site_id, domain)
        what = record.describe()
    except ValueError:
        record, what = None, "a malformed entry"
    version = _write_version(cur, site_id, {**body, "exclusions": kept}, actor,
                             f"exclusion {exclusion_id} removed: {what}"
                             + (f" ({comment})" if comment else ""))
    _audit(cur, actor, "waf.exclusion.delete", "exclusion", exclusion_id, {
        "site_id": str(site_id), "domain": domain, "version": version, "comment": comment,
    })
    if record is None:
        return ExclusionRecord(exclusion_id, site_id, domain, None, None, None, None, "",
                               None, None)
    return record


def _exclusions(cur: psycopg.Cursor, domain: str) -> list[ExclusionRecord]:
    site_id = _site_id(cur, domain)
    _body, entries = _document(cur, site_id)
    records = []
    for entry in entries:
        try:
            records.append(_record(entry, site_id, domain))
        except ValueError:
            continue  # the policy table leaves it out too, and logs why
    return records


def _history(cur: psycopg.Cursor, domain: str, limit: int) -> list[RulesVersion]:
    site_id = _site_id(cur, domain)
    cur.execute(
        "SELECT r.version, r.created_at, u.email, r.comment, r.is_active,"
        " jsonb_array_length(coalesce(r.body -> 'exclusions', '[]'))"
        " FROM rules r LEFT JOIN users u ON u.id = r.created_by"
        " WHERE r.site_id = %s ORDER BY r.version DESC LIMIT %s", (site_id, limit))
    return [RulesVersion(*row) for row in cur.fetchall()]


def _profiles(cur: psycopg.Cursor, domain: str, everything: bool) -> list[ProfileRecord]:
    site_id = _site_id(cur, domain)
    cur.execute("SELECT method, path_pattern, mode, request_count, last_seen"
                " FROM endpoint_profiles WHERE site_id = %s"
                + ("" if everything else " AND mode <> 'normal'"), (site_id,))
    rows = sorted(cur.fetchall(),
                  key=lambda r: (r[2] == "normal", profile_precedence(EndpointProfile(*r[:3]))))
    return [ProfileRecord(domain, *row) for row in rows]


def _set_profile(cur: psycopg.Cursor, domain: str, method: str, pattern: str, mode: str,
                 actor: UUID | None) -> tuple[ProfileRecord, str | None]:
    site_id = _lock_site(cur, domain)
    cur.execute("SELECT mode FROM endpoint_profiles"
                " WHERE site_id = %s AND method = %s AND path_pattern = %s FOR UPDATE",
                (site_id, method, pattern))
    row = cur.fetchone()
    before = None if row is None else row[0]
    if before != mode and not (before is None and mode == "normal"):
        if before is None:
            cur.execute("INSERT INTO endpoint_profiles (site_id, method, path_pattern, mode)"
                        " VALUES (%s, %s, %s, %s)", (site_id, method, pattern, mode))
        else:
            cur.execute("UPDATE endpoint_profiles SET mode = %s"
                        " WHERE site_id = %s AND method = %s AND path_pattern = %s",
                        (mode, site_id, method, pattern))
        _audit(cur, actor, "waf.profile.set", "site", str(site_id), {
            "domain": domain, "method": method, "pattern": pattern, "mode": mode,
            "before": before})
    cur.execute("SELECT method, path_pattern, mode, request_count, last_seen"
                " FROM endpoint_profiles"
                " WHERE site_id = %s AND method = %s AND path_pattern = %s",
                (site_id, method, pattern))
    row = cur.fetchone()
    record = (ProfileRecord(domain, *row) if row is not None
              else ProfileRecord(domain, method, pattern, "normal", 0, None))
    return record, before


def _remove_profile(cur: psycopg.Cursor, domain: str, method: str, pattern: str,
                    actor: UUID | None) -> ProfileRecord:
    site_id = _lock_site(cur, domain)
    cur.execute("DELETE FROM endpoint_profiles"
                " WHERE site_id = %s AND method = %s AND path_pattern = %s"
                " RETURNING method, path_pattern, mode, request_count, last_seen",
                (site_id, method, pattern))
    row = cur.fetchone()
    if row is None:
        raise ProfileNotFound(domain, method, pattern)
    _audit(cur, actor, "waf.profile.delete", "site", str(site_id), {
        "domain": domain, "method": method, "pattern": pattern, "mode": row[2]})
    return ProfileRecord(domain, *row)


# -- the store API ---------------------------------------------------------------------


class WafAdmin:
    """
    Changing and listing sites' WAF configuration.  The methods check their
    input at once (L{InvalidValue}); a missing site or exclusion fails the
    Deferred (L{SiteNotFound}, L{ExclusionNotFound}, L{ProfileNotFound}).
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- per-site tuning -----------------------------------------------------------

    def settings(self, domain: str) -> Deferred[WafSettings]:
        return self._db.transact("waf.settings", _settings, normalise_domain(domain))

    def set_settings(self, domain: str, actor: UUID | None,
                     **changes: Any) -> Deferred[tuple[WafSettings, WafSettings]]:
        """
        Change some of C{mode}, C{paranoia}, C{threshold},
        C{inspect_body_limit} (L{None}: Veil's default) and C{body_overflow};
        fires with the settings before and after (equal: nothing changed).
        """
        checked: dict[str, Any] = {}
        for field, value in changes.items():
            if field not in SETTING_COLUMNS:
                raise InvalidValue(f"{field!r} is not a WAF setting")
            checked[field] = {
                "mode": parse_mode, "paranoia": parse_paranoia, "threshold": parse_threshold,
                "body_overflow": parse_body_overflow,
                "inspect_body_limit": _body_limit_value,
            }[field](value)
        if not checked:
            raise InvalidValue("nothing to change")
        return self._db.transact("waf.set_settings", _set_settings, normalise_domain(domain),
                                 checked, actor)

    # -- exclusions ---------------------------------------------------------------------

    def exclusions(self, domain: str) -> Deferred[list[ExclusionRecord]]:
        """The exclusions of the site's active rules document, oldest first."""
        return self._db.transact("waf.exclusions", _exclusions, normalise_domain(domain))

    def exclude(self, domain: str, actor: UUID | None, *, rule_id: int | None = None,
                attack_class: str | None = None, path_prefix: str | None = None,
                target: str | None = None,
                comment: str = "") -> Deferred[tuple[ExclusionRecord, bool]]:
        """
        Turn a rule (or a whole class) off for the site, optionally under a
        path prefix and for one target; fires with the exclusion and whether
        it is new (the same exclusion already in force is returned as it is).
        """
        if (rule_id is None) == (attack_class is None):
            raise InvalidValue("an exclusion names a rule (--rule) or a class (--class)")
        return self._db.transact(
            "waf.exclude", _exclude, normalise_domain(domain), actor,
            None if rule_id is None else parse_rule_id(rule_id),
            None if attack_class is None else parse_attack_class(attack_class),
            None if path_prefix is None else parse_path_prefix(path_prefix),
            None if target is None else parse_exclusion_target(target),
            check_text(comment, "the comment"))

    def unexclude(self, exclusion_id: str, actor: UUID | None, comment: str = "",
                  domain: str | None = None) -> Deferred[ExclusionRecord]:
        """
        Remove an exclusion, whichever site it belongs to (only site
        C{domain}'s, when given); fires with what it was.
        """
        return self._db.transact("waf.unexclude", _unexclude,
                                 parse_exclusion_id(exclusion_id), actor,
                                 check_text(comment, "the comment"),
                                 None if domain is None else normalise_domain(domain))

    def history(self, domain: str, limit: int = 50) -> Deferred[list[RulesVersion]]:
        """The versions of the site's rules document, newest first."""
        return self._db.transact("waf.history", _history, normalise_domain(domain), limit)

    # -- endpoint profiles -------------------------------------------------------------

    def profiles(self, domain: str, everything: bool = False) -> Deferred[list[ProfileRecord]]:
        """
        The site's C{skip} and C{deep} profiles, most specific first (with
        C{everything}, the learned C{normal} ones after them).
        """
        return self._db.transact("waf.profiles", _profiles, normalise_domain(domain),
                                 everything)

    def set_profile(self, domain: str, pattern: str, mode: str, actor: UUID | None,
                    method: str = "*") -> Deferred[tuple[ProfileRecord, str | None]]:
        """
        Give requests matching C{method} and C{pattern} the profile C{mode};
        fires with the profile and its mode before (L{None}: it had none).
        """
        mode = parse_profile_mode(mode)
        return self._db.transact("waf.set_profile", _set_profile, normalise_domain(domain),
                                 parse_method(method), parse_pattern(pattern, mode), mode,
                                 actor)

    def remove_profile(self, domain: str, pattern: str, actor: UUID | None,
                       method: str = "*") -> Deferred[ProfileRecord]:
        """Delete an endpoint profile (and what was learned of it); fires with what it was."""
        return self._db.transact("waf.remove_profile", _remove_profile,
                                 normalise_domain(domain), parse_method(method),
                                 parse_pattern(pattern), actor)


def _body_limit_value(value: int | str | None) -> int | None:
    if value is None or isinstance(value, int):
        if value is not None and not 0 <= value <= MAX_INSPECT_BODY_LIMIT:
            raise InvalidValue(f"the inspection limit is 0 to {MAX_INSPECT_BODY_LIMIT} bytes")
        return value
    return parse_body_limit(value)

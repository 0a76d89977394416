"""
C{veil waf ...} and C{veil sites set}: the web application firewall's
per-site configuration (DESIGN §6).

    veil sites set DOMAIN [--mode block|monitor] [--paranoia 1-4] [--threshold N]
                          [--inspect-body-limit BYTES|default]
                          [--body-overflow inspect-prefix|block]
                          [--max-body-size BYTES] [--allow-trace|--no-allow-trace]
    veil waf policy DOMAIN [--json]        everything the WAF applies to the site
    veil waf exclude DOMAIN --rule ID|--class C [--path PREFIX] [--target args:q]
                            [--comment TEXT]
    veil waf exclusions DOMAIN [--json]
    veil waf unexclude ID [--comment TEXT]
    veil waf history DOMAIN [--json]       the versions of the site's exclusions
    veil waf profiles DOMAIN [--all] [--json]
    veil waf profile DOMAIN PATTERN --mode skip|deep|normal [--method M]
    veil waf unprofile DOMAIN PATTERN [--method M]

Every change is written to C{audit_log} in its transaction, and every running
Veil process applies it within a second (through NOTIFY), without a restart.

L{register} adds the C{waf} group; each family of subcommands is one entry
of L{SUBCOMMANDS}, so more (rules, checking a request) slot in beside them.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import IO, Any

from veil.commands.base import Stores, group, store_command, table, when
from veil.store import admin
from veil.store import waf as store
from veil.store.policies import PolicyStore
from veil.store.site_limits import SiteLimits, check_max_body_size
from veil.waf.policy import (
    ATTACK_CLASSES,
    BODY_OVERFLOW,
    MODES,
    PROFILE_MODES,
    SitePolicy,
)

#: Shown for a site that sets no inspection limit of its own.
DEFAULT_LIMIT = "default"


def _shown(text: str | None) -> str:
    """Text from the store as printed: control characters made visible."""
    if not text:
        return ""
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}"
                   if ord(c) < 0x100 else f"\\u{ord(c):04x}" for c in text)


def _size(limit: int | None) -> str:
    if limit is None:
        return DEFAULT_LIMIT
    if limit and limit % (1 << 30) == 0:
        return f"{limit >> 30} GiB"
    if limit and limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    if limit and limit % 1024 == 0:
        return f"{limit // 1024} KiB"
    return f"{limit} bytes"


def _admin(stores: Stores) -> store.WafAdmin:
    return store.WafAdmin(stores.db)


def policy_store(stores: Stores) -> PolicyStore:
    """Sites' policies as the running Veil builds them (its C{waf.inspect_body_limit})."""
    if stores.config is None:
        return PolicyStore(stores.db)
    return PolicyStore(stores.db, inspect_body_limit=stores.config.proxy.inspect_body_limit)


# -- veil sites set ---------------------------------------------------------------------

#: Option (attribute) -> (WafSettings field, parser).
_SETTINGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "mode": ("mode", store.parse_mode),
    "paranoia": ("paranoia", store.parse_paranoia),
    "threshold": ("threshold", store.parse_threshold),
    "inspect_body_limit": ("inspect_body_limit", store.parse_body_limit),
    "body_overflow": ("body_overflow", store.parse_body_overflow),
}


#: A body size: bytes, or a number with a 1024-based unit.
_BODY_SIZE = re.compile(r"(\d{1,13})\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)")
_BODY_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20,
               "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
               "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_max_body_size(text: str) -> int:
    """The largest request body a site accepts: C{104857600}, C{100MiB}, C{2G} (1024-based)."""
    match = _BODY_SIZE.fullmatch(text.strip().lower())
    if match is None:
        raise admin.InvalidValue(
            f"{text!r} is not a size: a number of bytes, optionally with k, M, G or T"
            " (512k, 100MiB, 2G)")
    return check_max_body_size(int(match.group(1)) * _BODY_UNITS[match.group(2)])


def _check_sites_set(args: argparse.Namespace) -> None:
    args.domain = admin.normalise_domain(args.domain)
    args.changes = {field: parse(getattr(args, option))
                    for option, (field, parse) in _SETTINGS.items()
                    if getattr(args, option) is not None}
    args.limits = {}
    if args.max_body_size is not None:
        args.limits["max_body_size"] = parse_max_body_size(args.max_body_size)
    if args.allow_trace is not None:
        args.limits["allow_trace"] = args.allow_trace
    if not args.changes and not args.limits:
        raise admin.InvalidValue(
            "nothing to change: give --mode, --paranoia, --threshold, --inspect-body-limit,"
            " --body-overflow, --max-body-size or --allow-trace/--no-allow-trace")


def _setting(settings: Any, field: str) -> str:
    value = getattr(settings, field)
    if field in ("inspect_body_limit", "max_body_size"):
        return _size(value)
    if field == "allow_trace":
        return "on" if value else "off"
    return str(value)


#: How C{sites set} names what it changed.
_NAMES = {"inspect_body_limit": "inspect body limit", "body_overflow": "body overflow",
          "max_body_size": "max body size", "allow_trace": "TRACE"}


def _changed(before: Any, after: Any, fields: Any) -> tuple[list[str], list[str]]:
    """What changed (C{name value (was ...)}) and what did not (C{name already value})."""
    changed, same = [], []
    for f in fields:
        if getattr(before, f) != getattr(after, f):
            changed.append(f"{_NAMES.get(f, f)} {_setting(after, f)} (was {_setting(before, f)})")
        else:
            same.append(f"{_NAMES.get(f, f)} already {_setting(after, f)}")
    return changed, same


async def sites_set(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    actor = await stores.operator.ensure()
    changed: list[str] = []
    same: list[str] = []
    domain = args.domain
    if args.changes:
        before, after = await _admin(stores).set_settings(args.domain, actor, **args.changes)
        domain = after.domain
        more = _changed(before, after, args.changes)
        changed += more[0]
        same += more[1]
    if args.limits:
        limits = SiteLimits(stores.db)
        before_limits = await limits.get(args.domain)
        after_limits = before_limits
        if any(getattr(before_limits, f) != v for f, v in args.limits.items()):
            # Audited in its transaction (veil/store/site_limits.py).
            after_limits = await limits.set(args.domain, actor, **args.limits)
        domain = after_limits.domain
        more = _changed(before_limits, after_limits, args.limits)
        changed += more[0]
        same += more[1]
    if not changed:
        print(f"{domain}: nothing changed (" + ", ".join(same) + ").", file=out)
        return 0
    print(f"{domain}: " + ", ".join(changed) + ".", file=out)
    print("Every running Veil process applies it within a second.", file=out)
    return 0


def add_sites_set(sites: argparse._SubParsersAction) -> None:
    """C{veil sites set}, in the C{sites} group."""
    parser = sites.add_parser("set", help="change a site's WAF and body settings")
    parser.add_argument("domain", metavar="DOMAIN")
    parser.add_argument("--mode", metavar="|".join(MODES),
                        help="block attacks, or only log them as 'would block'")
    parser.add_argument("--paranoia", metavar="1-4",
                        help="1 (fewest false positives) to 4 (strictest rules)")
    parser.add_argument("--threshold", metavar="N",
                        help="anomaly score at which a request is malicious (1-1000; a"
                        " critical match scores 5)")
    parser.add_argument("--inspect-body-limit", metavar="BYTES",
                        help="bytes of a body held and inspected: 16384, 64k, 1MiB (at most"
                        " 1 MiB), or 'default'")
    parser.add_argument("--body-overflow", metavar="|".join(BODY_OVERFLOW),
                        help="for a body over the limit: inspect its start, or refuse it (413)")
    parser.add_argument("--max-body-size", metavar="BYTES",
                        help="the largest request body accepted (413 beyond): 512k, 100MiB, 2G"
                        " (default for new sites: 100 MiB)")
    parser.add_argument("--allow-trace", action=argparse.BooleanOptionalAction, default=None,
                        help="forward TRACE requests (otherwise they get 405)")
    store_command(parser, sites_set, _check_sites_set)


# -- veil waf policy ----------------------------------------------------------------------


def _check_domain(args: argparse.Namespace) -> None:
    args.domain = admin.normalise_domain(args.domain)


def _policy_data(policy: SitePolicy, settings: store.WafSettings) -> dict[str, Any]:
    return {
        "site_id": str(policy.site_id), "domain": settings.domain, "mode": policy.mode,
        "paranoia": policy.paranoia, "threshold": policy.threshold,
        "inspect_body_limit": policy.inspect_body_limit,
        "inspect_body_limit_is_default": settings.inspect_body_limit is None,
        "body_overflow": policy.body_overflow,
        "exclusions": [{"id": e.id, "rule": e.rule_id, "class": e.attack_class,
                        "path": e.path_prefix, "target": e.target} for e in policy.exclusions],
        "profiles": [{"method": p.method, "pattern": p.path_pattern, "mode": p.mode}
                     for p in policy.profiles],
    }


async def waf_policy(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    settings = await _admin(stores).settings(args.domain)
    loaded = await policy_store(stores).one(settings.site_id)
    policy = loaded.policies.get(settings.site_id)
    if policy is None:  # removed since
        raise admin.SiteNotFound(settings.domain)
    if args.json:
        json.dump(_policy_data(policy, settings), out, indent=2)
        print(file=out)
        return 0
    default = " (Veil's default)" if settings.inspect_body_limit is None else ""
    print(f"{settings.domain} (site {policy.site_id})", file=out)
    print(f"  mode {policy.mode}, paranoia {policy.paranoia}, threshold {policy.threshold}",
          file=out)
    print(f"  bodies: inspect {_size(policy.inspect_body_limit)}{default}, beyond that"
          f" {policy.body_overflow}", file=out)
    print(f"  exclusions: {len(policy.exclusions) or 'none'}", file=out)
    for e in policy.exclusions:
        what = f"rule {e.rule_id}" if e.rule_id is not None else f"class {e.attack_class}"
        where = "".join([f" under {_shown(e.path_prefix)}" if e.path_prefix else "",
                         f" for {_shown(e.target)}" if e.target else ""])
        print(f"    {e.id}  {what}{where}", file=out)
    print(f"  endpoint profiles (first match wins): {len(policy.profiles) or 'none'}",
          file=out)
    for p in policy.profiles:
        print(f"    {p.method} {_shown(p.path_pattern)}  {p.mode}", file=out)
    for problem in loaded.problems.get(settings.site_id, ()):
        print(f"  left out: {_shown(problem)}", file=out)
    return 0


# -- exclusions ------------------------------------------------------------------------------


def _check_exclude(args: argparse.Namespace) -> None:
    args.domain = admin.normalise_domain(args.domain)
    args.rule = None if args.rule is None else store.parse_rule_id(args.rule)
    args.attack_class = (None if args.attack_class is None
                         else store.parse_attack_class(args.attack_class))
    args.path = None if args.path is None else store.parse_path_prefix(args.path)
    args.target = None if args.target is None else store.parse_exclusion_target(args.target)
    args.comment = store.check_text(args.comment, "the comment")


async def waf_exclude(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    actor = await stores.operator.ensure()
    record, created = await _admin(stores).exclude(
        args.domain, actor, rule_id=args.rule, attack_class=args.attack_class,
        path_prefix=args.path, target=args.target, comment=args.comment)
    what = _shown(record.describe())
    if not created:
        print(f"{record.domain} already has this exclusion ({what}): {record.id}."
              " Nothing changed.", file=out)
        return 0
    print(f"Excluded {what} on {record.domain}: exclusion {record.id}.", file=out)
    print(f"Every running Veil process applies it within a second; undo it with"
          f" `veil waf unexclude {record.id}`.", file=out)
    return 0


def _exclusion_data(e: store.ExclusionRecord) -> dict[str, Any]:
    return {"id": e.id, "site": e.domain, "rule": e.rule_id, "class": e.attack_class,
            "path": e.path_prefix, "target": e.target, "comment": e.comment,
            "created_at": e.created_at, "created_by": e.created_by}


async def waf_exclusions(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    records = await _admin(stores).exclusions(args.domain)
    if args.json:
        json.dump([_exclusion_data(e) for e in records], out, indent=2)
        print(file=out)
    elif not records:
        print(f"{args.domain} has no exclusions.", file=out)
    else:
        table(out, ("ID", "TURNS OFF", "PATH", "TARGET", "ADDED", "COMMENT"), [
            (e.id, f"rule {e.rule_id}" if e.rule_id is not None else f"class {e.attack_class}",
             _shown(e.path_prefix) or "*", _shown(e.target) or "*",
             _added(e.created_at), _shown(e.comment))
            for e in records])
    return 0


def _added(created_at: str | None) -> str:
    try:
        return when(datetime.fromisoformat(created_at or ""))
    except ValueError:
        return "-"


def _check_unexclude(args: argparse.Namespace) -> None:
    args.id = store.parse_exclusion_id(args.id)
    args.comment = store.check_text(args.comment, "the comment")


async def waf_unexclude(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    actor = await stores.operator.ensure()
    record = await _admin(stores).unexclude(args.id, actor, comment=args.comment)
    malformed = record.rule_id is None and record.attack_class is None
    what = "a malformed entry" if malformed else _shown(record.describe())
    print(f"Removed exclusion {record.id} ({what}) from {record.domain}.", file=out)
    print("Every running Veil process applies it within a second.", file=out)
    return 0


async def waf_history(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    versions = await _admin(stores).history(args.domain)
    if args.json:
        json.dump([{"version": v.version, "created_at": v.created_at.isoformat(),
                    "created_by": v.created_by, "comment": v.comment, "active": v.active,
                    "exclusions": v.exclusions} for v in versions], out, indent=2)
        print(file=out)
    elif not versions:
        print(f"{args.domain} has never had exclusions.", file=out)
    else:
        table(out, ("VERSION", "ACTIVE", "CREATED", "BY", "EXCLUSIONS", "CHANGE"), [
            (str(v.version), "yes" if v.active else "", when(v.created_at),
             _shown(v.created_by) or "-", str(v.exclusions), _shown(v.comment))
            for v in versions])
    return 0


def exclusion_commands(waf: argparse._SubParsersAction) -> None:
    exclude = waf.add_parser("exclude", help="turn a rule or a class off for a site")
    exclude.add_argument("domain", metavar="DOMAIN")
    which = exclude.add_mutually_exclusive_group(required=True)
    which.add_argument("--rule", metavar="ID", help="the rule's id")
    which.add_argument("--class", dest="attack_class", metavar="CLASS",
                       help=f"every rule of a class: {', '.join(ATTACK_CLASSES)}")
    exclude.add_argument("--path", metavar="PREFIX",
                         help="only for paths starting with PREFIX (the decoded path)")
    exclude.add_argument("--target", metavar="TARGET",
                         help="only for one value: args:NAME, cookies:NAME, headers:NAME, ..."
                         " or a whole collection (cookies)")
    exclude.add_argument("--comment", default="", metavar="TEXT",
                         help=f"why (at most {store.COMMENT_MAX} characters)")
    store_command(exclude, waf_exclude, _check_exclude)

    listing = waf.add_parser("exclusions", help="list a site's exclusions")
    listing.add_argument("domain", metavar="DOMAIN")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    store_command(listing, waf_exclusions, _check_domain)

    remove = waf.add_parser("unexclude", help="remove an exclusion")
    remove.add_argument("id", metavar="ID")
    remove.add_argument("--comment", default="", metavar="TEXT", help="why")
    store_command(remove, waf_unexclude, _check_unexclude)

    history = waf.add_parser("history", help="who changed a site's exclusions, and how")
    history.add_argument("domain", metavar="DOMAIN")
    history.add_argument("--json", action="store_true", help="JSON instead of a table")
    store_command(history, waf_history, _check_domain)


# -- endpoint profiles ---------------------------------------------------------------------------


def _check_profile(args: argparse.Namespace) -> None:
    args.domain = admin.normalise_domain(args.domain)
    args.method = store.parse_method(args.method)
    mode = getattr(args, "mode", None)
    if mode is not None:
        args.mode = store.parse_profile_mode(mode)
    args.pattern = store.parse_pattern(args.pattern, args.mode if mode is not None else "normal")


async def waf_profiles(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    profiles = await _admin(stores).profiles(args.domain, everything=args.all)
    if args.json:
        json.dump([{"method": p.method, "pattern": p.pattern, "mode": p.mode,
                    "requests": p.request_count,
                    "last_seen": None if p.last_seen is None else p.last_seen.isoformat()}
                   for p in profiles], out, indent=2)
        print(file=out)
    elif not profiles:
        print(f"{args.domain} has no endpoint profiles that skip or deepen inspection.",
              file=out)
    else:
        table(out, ("METHOD", "PATTERN", "MODE", "REQUESTS", "LAST SEEN"), [
            (p.method, _shown(p.pattern), p.mode, str(p.request_count), when(p.last_seen))
            for p in profiles])
    return 0


async def waf_profile(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    actor = await stores.operator.ensure()
    record, before = await _admin(stores).set_profile(args.domain, args.pattern, args.mode,
                                                      actor, method=args.method)
    subject = f"{record.domain}: {record.method} {_shown(record.pattern)}"
    if (before or "normal") == record.mode:
        print(f"{subject} is already {record.mode}. Nothing changed.", file=out)
        return 0
    meaning = {"skip": "not inspected", "deep": "inspected at the strictest paranoia level",
               "normal": "inspected as the rest of the site"}[record.mode]
    print(f"{subject} is now {record.mode} (was {before or 'normal'}): {meaning}.", file=out)
    return 0


async def waf_unprofile(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    actor = await stores.operator.ensure()
    record = await _admin(stores).remove_profile(args.domain, args.pattern, actor,
                                                 method=args.method)
    print(f"Removed the endpoint profile {record.method} {_shown(record.pattern)}"
          f" ({record.mode}) of {record.domain}.", file=out)
    return 0


def profile_commands(waf: argparse._SubParsersAction) -> None:
    listing = waf.add_parser("profiles", help="list a site's endpoint profiles")
    listing.add_argument("domain", metavar="DOMAIN")
    listing.add_argument("--all", action="store_true",
                         help="also the learned endpoints without a mode of their own")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    store_command(listing, waf_profiles, _check_domain)

    pattern_help = ("an exact path (/healthz), a prefix (/static/*), a suffix (*.css);"
                    " {name} for one segment (/api/users/{id})")
    profile = waf.add_parser("profile", help="skip inspection of an endpoint, or inspect it"
                             " at the strictest level")
    profile.add_argument("domain", metavar="DOMAIN")
    profile.add_argument("pattern", metavar="PATTERN", help=pattern_help)
    profile.add_argument("--mode", required=True, metavar="|".join(PROFILE_MODES),
                         help="skip: not inspected; deep: strictest paranoia; normal: as"
                         " the rest of the site")
    profile.add_argument("--method", default="*", metavar="M",
                         help="only requests with this method (default: any)")
    store_command(profile, waf_profile, _check_profile)

    remove = waf.add_parser("unprofile", help="delete an endpoint profile")
    remove.add_argument("domain", metavar="DOMAIN")
    remove.add_argument("pattern", metavar="PATTERN", help=pattern_help)
    remove.add_argument("--method", default="*", metavar="M",
                        help="the profile's method (default: the one for any method)")
    store_command(remove, waf_unprofile, _check_profile)


def policy_commands(waf: argparse._SubParsersAction) -> None:
    policy = waf.add_parser("policy", help="everything the WAF applies to a site")
    policy.add_argument("domain", metavar="DOMAIN")
    policy.add_argument("--json", action="store_true", help="JSON instead of text")
    store_command(policy, waf_policy, _check_domain)


#: The families of C{veil waf} subcommands, each adding its parsers to the group.
SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    policy_commands, exclusion_commands, profile_commands,
)


def register(commands: argparse._SubParsersAction) -> None:
    waf = group(commands, "waf", "the web application firewall: exclusions, endpoint"
                " profiles, a site's policy")
    for add in SUBCOMMANDS:
        add(waf)

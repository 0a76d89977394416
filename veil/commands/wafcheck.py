"""
C{veil waf check} and C{veil waf rules}: the signature engine from the
command line, for triage and for reading the rules.

    veil waf check [--site DOMAIN] [--paranoia N] [--threshold N] [--mode M] [--json]
                   REQUEST-FILE|-
    veil waf rules [--class C] [--paranoia N] [--json]

C{check} reads a raw HTTP request (as a proxy receives it; bare LF line ends
and a missing Content-Length are accepted in a hand-written file) and prints
the verdict with every rule that matched, the target, the transformations and
the transformed value it matched, and the score against the threshold.  It
exits 0 when the request is not malicious and 1 when it is (blocked, or
logged as "would block" on a site in monitor mode).  Without C{--site} it uses
the default policy (paranoia 1, threshold 5, block) and needs no database;
with C{--site} it applies the site's policy from the store, as every running
Veil process holds it: mode, paranoia level, threshold, exclusions and
endpoint profiles.  C{--mode}, C{--paranoia} and C{--threshold} override the
policy's.

The engine is built (the rules compiled) before anything connects.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any
from uuid import UUID

import attrs

from veil.commands.base import Stores, group, store_command
from veil.commands.waf import policy_store
from veil.errors import VeilError
from veil.store import admin
from veil.waf.engine import Engine
from veil.waf.policy import ATTACK_CLASSES, MODES, STRICTEST_PARANOIA, SitePolicy
from veil.waf.rawrequest import Refused, parse
from veil.waf.request import Request
from veil.waf.rules import SEVERITY_NAMES, Rule
from veil.waf.verdict import MALICIOUS, Verdict, printable

#: The site id of the default policy (no site).
NO_SITE = UUID(int=0)
#: The largest request file read.
MAX_REQUEST = 16 * 1024 * 1024


class CheckError(VeilError):
    """The request to check cannot be read or would not reach the WAF."""


class _StoreSite(argparse.Action):
    """C{--site}: the check needs the database, so it is a store command."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        namespace.site = values
        namespace.run = None


def register(commands: argparse._SubParsersAction) -> None:
    waf = group(commands, "waf", "the web application firewall: rules, checks, exclusions")
    check = waf.add_parser("check", help="inspect a raw HTTP request and explain the verdict")
    check.add_argument("request", metavar="REQUEST-FILE",
                       help="a raw HTTP/1.1 request, or - to read it from standard input")
    check.add_argument("--site", metavar="DOMAIN", action=_StoreSite, default=None,
                       help="apply this site's policy: mode, paranoia, threshold, exclusions,"
                       " endpoint profiles (needs the database)")
    check.add_argument("--paranoia", type=int, choices=range(1, STRICTEST_PARANOIA + 1),
                       help="paranoia level (default: the site's, or 1)")
    check.add_argument("--threshold", type=int,
                       help="anomaly threshold (default: the site's, or 5)")
    check.add_argument("--mode", choices=MODES, help="block or monitor (default: the site's,"
                       " or block)")
    check.add_argument("--json", action="store_true", help="the verdict as JSON")
    check.set_defaults(run=check_offline)
    store_command(check, check_site, prepare_check)
    rules = waf.add_parser("rules", help="list the signature rules")
    rules.add_argument("--class", dest="attack_class", choices=ATTACK_CLASSES,
                       help="only the rules of this attack class")
    rules.add_argument("--paranoia", type=int, choices=range(1, STRICTEST_PARANOIA + 1),
                       help="only the rules that run at this paranoia level")
    rules.add_argument("--json", action="store_true", help="JSON instead of a table")
    rules.set_defaults(run=list_rules)


# -- check ---------------------------------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_REQUEST + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_REQUEST + 1)
    except OSError as e:
        raise CheckError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_REQUEST:
        raise CheckError(f"{path} is larger than {MAX_REQUEST} bytes")
    if not data.strip():
        raise CheckError(f"{path} is empty")
    return data


def _request(path: str) -> Request:
    try:
        return parse(_read(path), lenient=True).request()
    except Refused as e:
        raise CheckError(f"the proxy answers this request itself ({e.status}: {e.reason}),"
                         " it never reaches the WAF") from None


def _policy(args: argparse.Namespace, base: SitePolicy | None = None) -> SitePolicy:
    """C{base} (the default policy without one) with the command line's overrides."""
    try:
        if base is None:
            base = SitePolicy(NO_SITE)
        return attrs.evolve(base, mode=args.mode or base.mode,
                            paranoia=args.paranoia or base.paranoia,
                            threshold=args.threshold or base.threshold)
    except ValueError as e:
        raise CheckError(str(e)) from None


def check_offline(args: argparse.Namespace, env: Any) -> int:
    """C{veil waf check} without C{--site}: the default policy, no database."""
    request = _request(args.request)
    policy = _policy(args)
    engine = Engine()
    verdict = engine.inspect(request, policy, explain=True)
    return _report(engine, verdict, request, "the default policy", args.json, env.out)


def prepare_check(args: argparse.Namespace) -> None:
    """Before connecting: read the request, check the domain, compile the rules."""
    args.site = admin.normalise_domain(args.site)
    args.parsed = _request(args.request)
    _policy(args)
    args.engine = Engine()


async def check_site(stores: Stores, args: argparse.Namespace, out: IO[str]) -> int:
    """
    C{veil waf check --site}: the site's policy as the running proxy holds it
    (mode, paranoia, threshold, exclusions, endpoint profiles), with the
    command line's overrides.
    """
    site = await stores.sites.get(args.site)
    if site is None:
        raise admin.SiteNotFound(args.site)
    loaded = await policy_store(stores).one(site.id)
    policy = loaded.policies.get(site.id)
    if policy is None:  # removed since
        raise admin.SiteNotFound(args.site)
    request = args.parsed
    policy = _policy(args, policy).as_sent(request.method, request.path, request.raw_path)
    verdict = args.engine.inspect(request, policy, explain=True)
    source = f"site {args.site}"
    if policy.exclusions:
        source += f" ({len(policy.exclusions)} exclusion{'s' if len(policy.exclusions) > 1 else ''})"
    return _report(args.engine, verdict, args.parsed, source, args.json, out)


def _report(engine: Engine, verdict: Verdict, request: Request, source: str, as_json: bool,
            out: IO[str]) -> int:
    rules = {rule.id: rule for rule in engine.rules}
    if as_json:
        json.dump(_as_json(verdict, rules), out, indent=2)
        print(file=out)
    else:
        _print(verdict, request, source, rules, out)
    return 1 if verdict.classification == MALICIOUS else 0


def _as_json(verdict: Verdict, rules: dict[int, Rule]) -> dict[str, Any]:
    return {
        "classification": verdict.classification, "classifier": verdict.classifier,
        "score": verdict.score, "threshold": verdict.threshold,
        "attack_type": verdict.attack_type, "confidence": verdict.confidence,
        "blocked": verdict.blocked, "mode": verdict.mode, "paranoia": verdict.paranoia,
        "profile": verdict.profile, "rule_ids": list(verdict.rule_ids),
        "matches": [{
            "rule": m.rule_id, "class": m.attack_class, "severity": m.severity,
            "target": m.target, "transforms": list(m.transforms), "value": m.value,
            "detail": m.detail, "excluded_by": m.excluded_by,
            "description": rules[m.rule_id].description if m.rule_id in rules else None,
        } for m in verdict.matches],
        "excerpt": verdict.excerpt,
    }


def _print(verdict: Verdict, request: Request, source: str, rules: dict[int, Rule],
           out: IO[str]) -> None:
    body = f", {len(request.body)} bytes of body" if request.body else ""
    media = request.media_type[0]
    print(f"request: {printable(request.method)} {printable(request.uri)[:200]}{body}"
          + (f" ({media})" if media else ""), file=out)
    print(f"policy: {source}: mode {verdict.mode}, paranoia {verdict.paranoia},"
          f" threshold {verdict.threshold}"
          + (f", endpoint profile {verdict.profile}" if verdict.profile != "normal" else ""),
          file=out)
    outcome = {"malicious": "blocked" if verdict.blocked else "would block (monitor mode)",
               "suspicious": "forwarded", "benign": "forwarded"}[verdict.classification]
    print(f"verdict: {verdict.classification}, score {verdict.score} (threshold"
          f" {verdict.threshold}), attack type {verdict.attack_type or '-'}, confidence"
          f" {verdict.confidence:.2f}: {outcome}", file=out)
    if not verdict.matches:
        print("no rule matched", file=out)
        return
    print("matches:", file=out)
    for match in verdict.matches:
        rule = rules.get(match.rule_id)
        status = f"  EXCLUDED by {match.excluded_by}" if match.excluded_by else ""
        print(f"  rule {match.rule_id} ({match.attack_class}, {SEVERITY_NAMES[match.severity]}"
              f" {match.severity}) on {printable(match.target)}{status}", file=out)
        if rule is not None:
            print(f"    {rule.description}", file=out)
        chain = " > ".join(match.transforms) if match.transforms else "none"
        print(f"    transformations: {chain}", file=out)
        if match.detail:
            print(f"    detail: {printable(match.detail)}", file=out)
        if match.value:
            print(f"    value: {printable(match.value)}", file=out)
    if verdict.excerpt:
        print("excerpt (as logged):", file=out)
        for line in verdict.excerpt.splitlines():
            print(f"  {line}", file=out)


# -- rules ---------------------------------------------------------------------------------


def list_rules(args: argparse.Namespace, env: Any) -> int:
    """C{veil waf rules}."""
    engine = Engine()
    unavailable = {u.rule.id: u.reason for u in engine.unavailable}
    selected = [r for r in engine.rules
                if (args.attack_class is None or r.attack_class == args.attack_class)
                and (args.paranoia is None or r.paranoia <= args.paranoia)]
    out = env.out
    if args.json:
        json.dump([{
            "id": r.id, "class": r.attack_class, "severity": r.severity_name,
            "score": r.severity, "paranoia": r.paranoia,
            "targets": [str(t) for t in r.targets], "transforms": list(r.transforms),
            "operator": r.operator, "argument": _plain(r.argument),
            "conditions": len(r.conditions), "description": r.description,
            "tags": list(r.tags), "file": r.source,
            "confirmed_in_python": r.id in engine.confirmed,
            "unavailable": unavailable.get(r.id),
        } for r in selected], out, indent=2)
        print(file=out)
        return 0
    for r in selected:
        note = f"  [unavailable: {unavailable[r.id]}]" if r.id in unavailable else ""
        print(f"{r.id:>6}  {r.attack_class:<10} {r.severity_name:<8} PL{r.paranoia}  "
              f"{r.description}{note}", file=out)
        targets = ", ".join(str(t) for t in r.targets) or "(the request's anomalies)"
        print(f"        targets: {targets}", file=out)
        if r.transforms:
            print(f"        transforms: {' > '.join(r.transforms)}", file=out)
        operator = r.operator_text()
        print(f"        operator: {operator[:160]}{'...' if len(operator) > 160 else ''}",
              file=out)
    print(f"{len(selected)} rules", file=out)
    return 0


def _plain(argument: Any) -> Any:
    if isinstance(argument, tuple):
        return [_plain(a) for a in argument]
    return argument

#!/usr/bin/env python3
"""
Offline efficacy of Veil's signature engine: attack and benign corpora run
through the engine in-process, scored as the proxy would answer them.

The cases are built by the shared replay scorer's own loaders (its
C{waf_score.py}, given with --scorer), so every request is byte for byte
the one the real replay sends through the proxy; they are then parsed as
the proxy parses them (veil.waf.rawrequest: a request the proxy refuses
with 400 counts as not blocked, as the replay would count it), inspected
with the body prefix the proxy holds (64 KiB), and counted blocked when the
verdict blocks.  The corpora are read from where they are: nothing is
copied.

    .venv/bin/python bench/waf/efficacy.py --scorer ../shared/bench/tools/waf_score.py \\
        --gotestwaf ../shared/corpora/gotestwaf/testcases \\
        --crs ../shared/corpora/coreruleset/tests/regression/tests \\
        --crs-rules ../shared/corpora/coreruleset/rule-paranoia-levels.tsv \\
        --libinjection ../shared/corpora/libinjection/data \\
        --jsonl bench/waf/benign/benign.jsonl \\
        --heldout bench/waf/heldout/heldout.jsonl

Prints the scorer's own tables, then a summary against issue 11's targets,
and with --heldout the held-out set's TPR per class and FPR (a set written
for Veil and never used to tune its rules: see bench/waf/heldout/).
--no-detectors measures the pattern rules alone (without the SQLi and XSS
detectors); --misses FILE writes every wrong verdict with its matches.
"""

from __future__ import annotations

import argparse
import collections
import glob
import importlib.util
import json
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from veil.waf.engine import Engine
from veil.waf.operators import default_registry
from veil.waf.policy import SitePolicy
from veil.waf.rawrequest import Refused, parse


def load_scorer(path: str):
    spec = importlib.util.spec_from_file_location("waf_score", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_host(raw: bytes, host: str) -> bytes:
    """What the scorer's send() does to a case without a Host header."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    if b"\r\n" in raw and not any(line.lower().startswith(b"host:")
                                  for line in head.split(b"\r\n")[1:]):
        line, rest = raw.split(b"\r\n", 1)
        return line + b"\r\nHost: " + host.encode() + b"\r\n" + rest
    return raw


def cases(args, scorer):
    found = []
    if args.crs:
        pl = scorer.load_pl_map(args.crs_rules) if args.crs_rules else None
        found += list(scorer.load_crs(args.crs, pl))
    if args.gotestwaf:
        found += list(scorer.load_gotestwaf(args.gotestwaf))
    specs = list(args.lines)
    if args.libinjection:
        for path in sorted(glob.glob(os.path.join(args.libinjection, "*.txt"))):
            name = os.path.basename(path)
            if name.startswith("sqli-"):
                specs.append(f"{path}:attack:libinjection/sqli")
            elif name.startswith("xss-"):
                specs.append(f"{path}:attack:libinjection/xss")
            elif name == "false_positives.txt":
                specs.append(f"{path}:benign:libinjection/false_positives")
    for spec in specs:
        found += list(scorer.load_lines(spec))
    for path in args.jsonl:
        found += list(scorer.load_jsonl(path, source="own"))
    for path in args.heldout:
        found += list(scorer.load_jsonl(path, source="heldout"))
    return [c for c in found if c.kind != "skipped"]


def run(args) -> int:
    scorer = load_scorer(args.scorer)
    detectors = {} if args.no_detectors else default_registry()
    started = time.perf_counter()
    engine = Engine(detectors=detectors)
    compiled = time.perf_counter() - started
    policy = SitePolicy(uuid.uuid4(), paranoia=args.paranoia, threshold=args.threshold)
    todo = cases(args, scorer)
    rows, misses = [], []
    elapsed = 0.0
    for case in todo:
        raw = with_host(case.raw, args.default_host)
        status, verdict = 200, None
        try:
            request = parse(raw).request()
        except Refused as e:
            status = e.status
        else:
            begin = time.perf_counter()
            verdict = engine.inspect(request, policy)
            elapsed += time.perf_counter() - begin
            if verdict.blocked:
                status = 403
        blocked = status == 403
        rows.append({"source": case.source, "class": case.cls, "id": case.ident,
                     "kind": case.kind, "pl": case.pl, "status": status, "blocked": blocked})
        wrong = (case.kind == "attack") != blocked if case.kind in ("attack", "benign") else False
        if wrong and args.misses:
            misses.append({
                "source": case.source, "class": case.cls, "id": case.ident, "kind": case.kind,
                "pl": case.pl, "status": status,
                "score": verdict.score if verdict else None,
                "matches": [[m.rule_id, m.target] for m in verdict.matches] if verdict else [],
                "raw": raw[:3000].decode("utf-8", "replace"),
            })
    table = scorer.report(rows, "403 (in-process engine)")
    print(f"\nengine: {len(engine.rules)} rules ({len(engine.unavailable)} unavailable:"
          f" {', '.join(str(u.rule.id) for u in engine.unavailable) or 'none'}),"
          f" compiled in {compiled:.2f} s; detectors: {', '.join(sorted(detectors)) or 'none'};"
          f" paranoia {args.paranoia}, threshold {args.threshold}")
    print(f"{len(todo)} cases inspected in {elapsed:.2f} s of engine time")
    summarise(rows)
    if args.heldout:
        summarise_heldout(rows)
    if args.misses:
        with open(args.misses, "w") as out:
            out.writelines(json.dumps(miss) + "\n" for miss in misses)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(scorer.summary(rows, [403], False), out, indent=1)
    del table
    return 0


def summarise(rows) -> None:
    """The figures issue 11 sets targets for."""
    def rate(selected):
        n = len(selected)
        b = sum(r["blocked"] for r in selected)
        return f"{b / n:6.1%} ({b}/{n})" if n else "   -"

    by = collections.defaultdict(list)
    for r in rows:
        by[(r["source"], r["kind"])].append(r)
    lines = [
        ("GoTestWAF attacks blocked", rate(by[("gotestwaf", "attack")]), ">= 90 %"),
        ("GoTestWAF false-pos texts blocked", rate(by[("gotestwaf", "benign")]), "<= 2 %"),
        ("CRS PL1 tests expecting detection", rate([r for r in by[("crs", "attack")]
                                                    if r["pl"] == 1]), ">= 80 %"),
        ("CRS all tests expecting detection", rate(by[("crs", "attack")]), ""),
        ("libinjection SQLi", rate([r for r in by[("lines", "attack")]
                                    if r["class"].endswith("sqli")]), ">= 99 %"),
        ("libinjection XSS", rate([r for r in by[("lines", "attack")]
                                   if r["class"].endswith("xss")]), ">= 99 %"),
        ("libinjection false_positives", rate(by[("lines", "benign")]), "<= 3 %"),
        ("own benign corpus", rate(by[("own", "benign")]), "<= 0.5 %"),
    ]
    print("\n## Against the targets of issue 11")
    print(f"{'corpus':40} {'blocked':>18}  target")
    for name, value, target in lines:
        print(f"{name:40} {value:>18}  {target}")


def summarise_heldout(rows) -> None:
    """TPR per attack class and FPR per benign group of the held-out set."""
    held = [r for r in rows if r["source"] == "heldout"]
    by = collections.defaultdict(list)
    for r in held:
        by[(r["kind"], r["class"])].append(r)
    print("\n## Held-out set (bench/waf/heldout)")
    print(f"{'class':28} {'blocked':>16}")
    for kind in ("attack", "benign"):
        for (k, cls), selected in sorted(by.items()):
            if k == kind:
                b = sum(r["blocked"] for r in selected)
                print(f"{cls:28} {b / len(selected):6.1%} ({b}/{len(selected)})")
        selected = [r for r in held if r["kind"] == kind]
        if selected:
            b = sum(r["blocked"] for r in selected)
            name = "all attacks (TPR)" if kind == "attack" else "all benign (FPR)"
            print(f"{name:28} {b / len(selected):6.1%} ({b}/{len(selected)})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scorer", required=True, help="the shared replay scorer, waf_score.py")
    ap.add_argument("--gotestwaf", help="GoTestWAF testcases/ directory")
    ap.add_argument("--crs", help="CRS tests/regression/tests directory")
    ap.add_argument("--crs-rules", help="CRS rules/ or the rule-paranoia-levels.tsv")
    ap.add_argument("--libinjection", help="libinjection data/ directory (sqli-*, xss-*,"
                    " false_positives.txt)")
    ap.add_argument("--lines", action="append", default=[], help="FILE:attack|benign:CLASS")
    ap.add_argument("--jsonl", action="append", default=[],
                    help="JSON-lines cases (the scorer's --jsonl format), e.g. the own benign corpus")
    ap.add_argument("--heldout", action="append", default=[],
                    help="JSON-lines cases labelled by class (bench/waf/heldout/heldout.jsonl):"
                    " TPR per class and FPR, reported on their own")
    ap.add_argument("--paranoia", type=int, default=1)
    ap.add_argument("--threshold", type=int, default=5)
    ap.add_argument("--default-host", default="localhost")
    ap.add_argument("--no-detectors", action="store_true",
                    help="without the SQLi/XSS detectors: the pattern rules alone")
    ap.add_argument("--misses", help="write wrong verdicts here (JSON lines)")
    ap.add_argument("--json", help="write the scorer's summary JSON here")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""
The engine's fast path against its reference, over the corpora: every case
is inspected by an engine with the fast path (one scan of the values
untransformed, change flags, rescans, the memo of entries) and by one
without it (every chain applied to every value, each result scanned alone,
nothing remembered), at each paranoia level asked for, and the matches
(rule, target, detector detail) must be the same.  Prints the cases that
differ and exits 1 if there are any.

    .venv/bin/python bench/waf/equivalence.py --scorer ../shared/bench/tools/waf_score.py \\
        --gotestwaf ../shared/corpora/gotestwaf/testcases \\
        --crs ../shared/corpora/coreruleset/tests/regression/tests \\
        --libinjection ../shared/corpora/libinjection/data \\
        --jsonl bench/waf/benign/benign.jsonl [--paranoia 1 --paranoia 4]

The corpora are loaded as bench/waf/efficacy.py loads them; cases are
inspected twice by the fast engine (the second time from its memo), so the
memo is checked as well.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT / "waf"))

from efficacy import cases, load_scorer, with_host

from veil.waf.engine import Engine
from veil.waf.policy import SitePolicy
from veil.waf.rawrequest import Refused, parse


def matches(verdict) -> list[tuple]:
    return sorted((m.rule_id, m.target, m.detail or "") for m in verdict.matches)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scorer", required=True)
    ap.add_argument("--gotestwaf")
    ap.add_argument("--crs")
    ap.add_argument("--crs-rules")
    ap.add_argument("--libinjection")
    ap.add_argument("--lines", action="append", default=[])
    ap.add_argument("--jsonl", action="append", default=[])
    ap.add_argument("--paranoia", type=int, action="append")
    ap.add_argument("--default-host", default="localhost")
    ap.add_argument("--limit", type=int, default=0, help="at most this many cases")
    args = ap.parse_args(argv)
    scorer = load_scorer(args.scorer)
    todo = cases(args, scorer)
    if args.limit:
        todo = todo[:args.limit]
    fast = Engine()
    reference = Engine(fast=False)
    levels = args.paranoia or [1]
    differences = 0
    compared = 0
    started = time.perf_counter()
    for case in todo:
        raw = with_host(case.raw, args.default_host)
        try:
            request = parse(raw).request
        except Refused:
            continue
        for level in levels:
            policy = SitePolicy(uuid.uuid4(), paranoia=level)
            expected = matches(reference.inspect(request(), policy))
            for attempt in ("first", "memo"):
                got = matches(fast.inspect(request(), policy))
                compared += 1
                if got != expected:
                    differences += 1
                    print(f"DIFFERENT {case.source}/{case.cls}/{case.ident} paranoia {level}"
                          f" ({attempt}):\n  fast      {got}\n  reference {expected}")
    print(f"{compared} inspections compared in {time.perf_counter() - started:.0f} s:"
          f" {differences} different")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""
Writes the held-out evaluation set (heldout.jsonl beside this file) from
attacks.py and benign.py: each case becomes one request in the shared replay
scorer's JSON-lines format, {"id", "kind", "class", "method", "path",
"headers", "body"}.  Attacks are labelled with their class, benign requests
with "benign/<group>".  Deterministic: re-running rewrites the same file.

    python3 bench/waf/heldout/generate.py

Scored with bench/waf/efficacy.py --heldout bench/waf/heldout/heldout.jsonl
(TPR per class and FPR at the chosen paranoia level).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from attacks import CLASSES
from benign import GROUPS
from placements import build


def rows():
    n = 0
    for label, kind, table in ([(c, "attack", t) for c, t in CLASSES.items()]
                               + [(f"benign/{g}", "benign", t) for g, t in GROUPS.items()]):
        route, names, cases = table
        for i, case in enumerate(cases):
            placement, payload = case[0], case[1]
            name = case[2] if len(case) > 2 else names[i % len(names)]
            row = {"id": f"{label.replace('/', '-')}-{i + 1}", "kind": kind, "class": label}
            row.update(build(n, placement, payload, name, route))
            row["placement"] = placement
            n += 1
            yield row


def main() -> int:
    out = HERE / "heldout.jsonl"
    with out.open("w", encoding="utf-8") as f:
        for row in rows():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

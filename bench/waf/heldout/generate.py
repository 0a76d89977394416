#!/usr/bin/env python3
"""
Writes the held-out evaluation sets beside this file: heldout.jsonl from
attacks.py and benign.py (the set that showed what the rules missed), and
blind.jsonl from blind.py (written at the same time, scored only after the
rule changes, so still unseen by them).  Each case becomes one request in the
shared replay scorer's JSON-lines format, {"id", "kind", "class", "method",
"path", "headers", "body"}.  Attacks are labelled with their class, benign
requests with "benign/<group>".  Deterministic: re-running rewrites the same
files.

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

import blind
from attacks import CLASSES
from benign import GROUPS
from placements import build


def rows(attacks: dict, benign: dict):
    n = 0
    for label, kind, table in ([(c, "attack", t) for c, t in attacks.items()]
                               + [(f"benign/{g}", "benign", t) for g, t in benign.items()]):
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
    for name, attacks, benign in (("heldout.jsonl", CLASSES, GROUPS),
                                  ("blind.jsonl", blind.ATTACKS, blind.BENIGN)):
        with (HERE / name).open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n"
                         for row in rows(attacks, benign))
    return 0


if __name__ == "__main__":
    sys.exit(main())

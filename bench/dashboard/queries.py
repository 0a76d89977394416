"""
The dashboard's request-log queries (veil/store/logquery.py) on the
generated request log (generate.py), through L{RequestLogQueries} on a real
L{Database} and reactor, as the API calls them:

    .venv/bin/python bench/dashboard/queries.py [--rounds 20] [--explain]

Each round runs every shape below once for three sites: the busiest (about a
fifth of all rows), the tenth and the hundredth.  Shapes: the requests
list's first page over the last 24 hours and over 30 days, unfiltered and
with each filter (blocked, status class 5xx, status 404, a busy client
address, an attacker's address, a /16, a path prefix, a path prefix that
matches nothing, method DELETE, attack type, classification), five pages
deep by cursor; stats over 1 hour, 24 hours, 7 days and 30 days.  Prints
p50, p95 and the worst per shape and site, and the p95 over everything;
C{--explain} adds the plans (EXPLAIN ANALYZE) of the statements behind a
few shapes.  The machine's other load moves these figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
from twisted.internet import task
from twisted.internet.defer import Deferred

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdb

from veil.store.db import Database
from veil.store.logquery import RequestFilter, RequestLogQueries


def shapes(meta: dict, site: uuid.UUID, rank: int) -> list[tuple[str, str, dict]]:
    heavy = meta["heavy_clients"][0]
    attacker = meta["attackers"][rank % len(meta["attackers"])]
    net = ".".join(heavy.split(".")[:2]) + ".0.0/16" if "." in heavy else "2001:db8::/32"
    filters = [
        ("none", {}), ("blocked", {"blocked": "true"}), ("5xx", {"status": "5xx"}),
        ("404", {"status": "404"}), ("busy client", {"client": heavy}),
        ("attacker", {"client": attacker}), ("/16", {"client": net}),
        ("path prefix", {"path": "/checkout/"}), ("no such path", {"path": "/nothing-here"}),
        ("DELETE", {"method": "DELETE"}), ("sqli", {"attack_type": "sqli"}),
        ("malicious", {"classification": "malicious"}),
    ]
    out = []
    for label, params in filters:
        out.append(("requests", f"24h {label}", {"params": params, "hours": 24}))
        out.append(("requests", f"30d {label}", {"params": params, "hours": 24 * 30}))
    out.append(("requests", "24h 5 pages deep", {"params": {}, "hours": 24, "pages": 5}))
    for hours in (1, 24, 24 * 7, 24 * 30):
        out.append(("stats", f"{hours}h", {"hours": hours}))
    return out


async def one(queries: RequestLogQueries, site: uuid.UUID, kind: str, spec: dict,
              now: datetime) -> float:
    began = time.perf_counter()
    since = now - timedelta(hours=spec["hours"])
    if kind == "stats":
        await queries.stats(site, since, now)
    else:
        params = dict(spec["params"], since=since.isoformat())
        flt = RequestFilter.from_params(site, params)
        cursor = None
        for _ in range(spec.get("pages", 1)):
            page = await queries.requests(flt, 50, cursor=cursor)
            cursor = page.next_cursor
            if cursor is None:
                break
    return (time.perf_counter() - began) * 1000


async def run(reactor, args: argparse.Namespace) -> None:
    conninfo = benchdb.url(args.db)
    meta = json.loads((benchdb.BASE / f"{args.db}.json").read_text())
    db = Database(conninfo, reactor, min_size=2, max_size=4, statement_timeout=60)
    db.start()
    queries = RequestLogQueries(db)
    now = datetime.fromisoformat(meta["end"])
    sites = [(rank, uuid.UUID(meta["sites"][rank])) for rank in (0, 9, 99)]
    times: dict[tuple[int, str], list[float]] = {}
    try:
        # Warm the caches once (the first rounds read from disk otherwise).
        for rank, site in sites:
            for kind, label, spec in shapes(meta, site, rank):
                await one(queries, site, kind, spec, now)
        for _ in range(args.rounds):
            for rank, site in sites:
                for kind, label, spec in shapes(meta, site, rank):
                    spent = await one(queries, site, kind, spec, now)
                    times.setdefault((rank, f"{kind} {label}"), []).append(spent)
    finally:
        await db.close()
    print(f"{args.rounds} rounds; ms per call (through Database, on the reactor)\n")
    print("| shape | site | p50 | p95 | max |")
    print("|---|---|---|---|---|")
    every: dict[str, list[float]] = {"requests": [], "stats": []}
    for (rank, label), spent in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        every[label.split()[0]].extend(spent)
        p95 = statistics.quantiles(spent, n=20)[18] if len(spent) > 1 else spent[0]
        print(f"| {label} | #{rank + 1} | {statistics.median(spent):.1f} | {p95:.1f} |"
              f" {max(spent):.1f} |")
    for kind, spent in every.items():
        p95 = statistics.quantiles(spent, n=20)[18]
        print(f"\n{kind}: {len(spent)} calls, p50 {statistics.median(spent):.1f} ms,"
              f" p95 {p95:.1f} ms, max {max(spent):.1f} ms")
    if args.explain:
        explain(conninfo, meta, now)


def explain(conninfo: str, meta: dict, now: datetime) -> None:
    """The plans of the statements behind a few shapes, for the busiest site."""
    site = meta["sites"][0]
    since = now - timedelta(days=30)
    statements = [
        ("requests, 30 days, first page (slice planning)",
         ("SELECT bucket, requests FROM request_log_hourly WHERE site_id = %s AND bucket >= %s"
         " AND bucket < %s ORDER BY bucket DESC"), (site, since, now)),
        ("requests, a busy client on the site",
         ("SELECT id, ts FROM request_log WHERE site_id = %s AND client_ip = %s::inet"
         " AND ts >= %s ORDER BY ts DESC, id DESC LIMIT 51"),
         (site, meta["heavy_clients"][0], since)),
        ("requests, blocked",
         ("SELECT id, ts FROM request_log WHERE site_id = %s AND blocked AND ts >= %s"
         " ORDER BY ts DESC, id DESC LIMIT 51"), (site, since)),
        ("stats, 30 days, series from the hourly rollup",
         ("SELECT date_bin(make_interval(secs => 10800), bucket, TIMESTAMPTZ 'epoch'),"
         " requests, latency FROM request_log_hourly WHERE site_id = %s AND bucket >= %s"
         " AND bucket < %s"), (site, since, now)),
    ]
    with psycopg.connect(conninfo) as conn:
        for label, statement, params in statements:
            print(f"\n### {label}\n")
            for (line,) in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params):
                print("    " + line)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--db", default="veil_bench")
    parser.add_argument("--explain", action="store_true")
    args = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor, args)))


if __name__ == "__main__":
    main()

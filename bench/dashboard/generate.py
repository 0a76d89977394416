"""
A request log of realistic shape for the dashboard's query benchmarks,
written with COPY in the flusher's own format (L{veil.store.logrows.copy_line}):

    .venv/bin/python bench/dashboard/generate.py [ROWS] [--days 30] [--sites 100] [--seed 1]

ROWS (default 10,000,000) over the last C{--days} days, in time order, with a
daily cycle; C{--sites} sites whose traffic falls off as 1/rank (the busiest
has about a fifth of all rows); per site a few hundred paths of Zipf
popularity, clients drawn from 100,000 IPv4 and 5,000 IPv6 addresses (a few
heavy hitters), 6% WAF-flagged requests (attack types sqli, xss,
traversal, rce, scanner, lfi) from a smaller pool of addresses, most of
them blocked (403), 4% 404s, 1.7% 5xx, log-normal durations.  Ids ascend
with time as the flusher's do.  The database is C{benchdb.url()} (see
benchdb.py); rows already there are removed first.  The sites and their
weights are written to C{sites.json} beside the cluster for the query
benchmark.  Ends with C{VACUUM ANALYZE}, as autovacuum would have done.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdb

from veil.store.logrows import COLUMNS, LogRow, copy_line

ATTACKS = ["sqli", "xss", "traversal", "rce", "scanner", "lfi"]
PROBES = ["/wp-login.php", "/.env", "/admin/config.php", "/cgi-bin/test.cgi",
          "/index.php?id=1%27%20OR%201=1", "/../../etc/passwd", "/phpmyadmin/",
          "/search?q=%3Cscript%3Ealert(1)%3C/script%3E", "/.git/config", "/xmlrpc.php"]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 Version/17.2"
    " Safari/605.1.15"),
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "curl/8.5.0", "python-requests/2.31.0", "Go-http-client/1.1",
    "Googlebot/2.1 (+http://www.google.com/bot.html)", "sqlmap/1.7.12", "Nuclei - Open-source",
]
STATUSES = [(200, 850), (304, 60), (301, 15), (302, 15), (404, 40), (400, 3), (500, 8),
            (502, 6), (503, 3)]
METHODS = [("GET", 860), ("POST", 100), ("HEAD", 20), ("PUT", 10), ("DELETE", 5),
           ("OPTIONS", 5)]
SECTIONS = ["products", "api/v1/items", "api/v1/cart", "blog", "static/js", "static/css",
            "images", "account", "search", "checkout", "docs", "category"]


def cumulative(weights: list[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def zipf(n: int, s: float = 1.0) -> list[float]:
    return [1.0 / (rank ** s) for rank in range(1, n + 1)]


class Shape:
    """The random choices, precomputed."""

    def __init__(self, rng: random.Random, sites: int) -> None:
        self.rng = rng
        self.sites = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(sites)]
        self.hosts = [f"site{rank + 1}.example" for rank in range(sites)]
        self.site_cw = cumulative(zipf(sites))
        self.paths = []
        for _ in range(sites):
            paths = ["/"] + [f"/{rng.choice(SECTIONS)}/{rng.randrange(1, 5000)}"
                             for _ in range(rng.randrange(150, 400))]
            self.paths.append(paths)
        self.path_cw = {len(p): cumulative(zipf(len(p), 1.1)) for p in self.paths}
        v4 = [f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}."
              f"{rng.randrange(1, 255)}" for _ in range(100_000)]
        v6 = [f"2001:db8:{rng.randrange(65536):x}:{rng.randrange(65536):x}::"
              f"{rng.randrange(1, 65536):x}" for _ in range(5_000)]
        self.clients = v4 + v6
        rng.shuffle(self.clients)
        self.client_cw = cumulative(zipf(len(self.clients), 0.8))
        self.attackers = self.clients[-2000:]
        self.status_values = [s for s, _ in STATUSES]
        self.status_cw = cumulative([w for _, w in STATUSES])
        self.method_values = [m for m, _ in METHODS]
        self.method_cw = cumulative([w for _, w in METHODS])

    def pick(self, cw: list[float]) -> int:
        return bisect.bisect(cw, self.rng.random() * cw[-1])


def rows_for(shape: Shape, start: datetime, seconds: float, count: int, ids: itertools.count,
             request_ids: itertools.count, prefix: str) -> list[str]:
    rng = shape.rng
    base = start.timestamp()
    times = sorted(base + rng.random() * seconds for _ in range(count))
    lines = []
    for t in times:
        rank = shape.pick(shape.site_cw)
        site, host = shape.sites[rank], shape.hosts[rank]
        paths = shape.paths[rank]
        roll = rng.random()
        method = shape.method_values[shape.pick(shape.method_cw)]
        if roll < 0.06:
            # WAF-flagged: mostly blocked malicious requests, some suspicious.
            attack = ATTACKS[rng.randrange(len(ATTACKS))]
            path = rng.choice(PROBES)
            client = rng.choice(shape.attackers)
            malicious = roll < 0.045
            blocked = malicious and rng.random() < 0.9
            classification = "malicious" if malicious else "suspicious"
            classifier = "signatures"
            confidence = round(0.6 + rng.random() * 0.4, 3)
            status = 403 if blocked else (404 if rng.random() < 0.5 else 200)
            agent = AGENTS[rng.randrange(7, 10)]
        else:
            attack, classifier, confidence, blocked = None, None, None, False
            classification = "benign"
            path = paths[shape.pick(shape.path_cw[len(paths)])]
            client = shape.clients[shape.pick(shape.client_cw)]
            status = shape.status_values[shape.pick(shape.status_cw)]
            agent = AGENTS[rng.randrange(0, 8)]
        path, _, query = path.partition("?")
        if not query and rng.random() < 0.3:
            query = f"page={rng.randrange(1, 50)}&sort=price"
        if blocked:
            duration, origin = 0.2 + rng.random() * 0.3, None
        else:
            duration = math.exp(rng.gauss(math.log(40.0), 0.9))
            origin = duration * 0.85
        row = LogRow(
            ts=datetime.fromtimestamp(t, UTC), site_id=site, host=host,
            method=method, path=path, query=query or None, status=status,
            bytes_in=rng.randrange(180, 900), bytes_out=int(math.exp(rng.gauss(8.5, 1.2))),
            duration_ms=duration, origin_ms=origin, client_ip=client,
            request_id=f"{prefix}{next(request_ids):016x}", user_agent=agent,
            classification=classification, classifier=classifier, confidence=confidence,
            attack_type=attack, blocked=blocked)
        lines.append(f"{next(ids)}\t{copy_line(row)}")
    return lines


def months(first: datetime, last: datetime) -> list[datetime]:
    out, at = [], first.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    while at <= last:
        out.append(at)
        at = (at + timedelta(days=32)).replace(day=1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="?", type=int, default=10_000_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", default="veil_bench")
    args = parser.parse_args()

    conninfo = benchdb.url(args.db)
    rng = random.Random(args.seed)
    shape = Shape(rng, args.sites)
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(days=args.days)
    window = 600.0
    windows = int(args.days * 86400 / window)
    # A daily cycle: the busiest hour carries about three times the quietest.
    weights = [1.0 + 0.5 * math.sin(2 * math.pi * ((i * window / 3600.0) % 24 - 9) / 24)
               for i in range(windows)]
    total = sum(weights)
    ids, request_ids = itertools.count(1), itertools.count(1)
    prefix = os.urandom(8).hex()
    statement = "COPY request_log ({}) FROM STDIN".format(", ".join(("id",) + COLUMNS))

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("TRUNCATE request_log")
        for month in months(start, end):
            conn.execute("SELECT veil_request_log_maintain(1200, %s)", (month,))
        began = time.monotonic()
        written, owed = 0, 0.0
        with conn.cursor() as cur, cur.copy(statement) as copy:
            for i in range(windows):
                owed += args.rows * weights[i] / total
                count = int(owed) if i < windows - 1 else args.rows - written
                owed -= count
                at = start + timedelta(seconds=i * window)
                lines = rows_for(shape, at, window, count, ids, request_ids, prefix)
                copy.write("".join(lines).encode("utf-8"))
                written += count
                if i % 144 == 0:
                    rate = written / max(1e-9, time.monotonic() - began)
                    print(f"{at:%Y-%m-%d %H:%M} {written:,} rows ({rate:,.0f}/s)",
                          file=sys.stderr, flush=True)
        conn.execute("SELECT setval('request_log_id_seq', %s)", (written,))
        print(f"{written:,} rows in {time.monotonic() - began:.0f} s; VACUUM ANALYZE",
              file=sys.stderr, flush=True)
        conn.execute("VACUUM ANALYZE request_log")
        size = conn.execute("SELECT pg_size_pretty(sum(total_bytes)) FROM"
                            " veil_request_log_partitions()").fetchone()[0]
    site_rows = {str(site): args.rows * w / sum(zipf(args.sites))
                 for site, w in zip(shape.sites, zipf(args.sites))}
    meta = {"rows": written, "start": start.isoformat(), "end": end.isoformat(),
            "sites": [str(s) for s in shape.sites], "expected_rows": site_rows,
            "attackers": shape.attackers[:50], "heavy_clients": shape.clients[:50],
            "paths": {str(s): p[:20] for s, p in zip(shape.sites, shape.paths)}}
    (benchdb.BASE / f"{args.db}.json").write_text(json.dumps(meta))
    print(f"request_log: {written:,} rows, {size}", file=sys.stderr)


if __name__ == "__main__":
    main()

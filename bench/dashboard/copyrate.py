"""
What the request log's indexes and triggers cost the proxy's writer: the
flusher's own write path (ids drawn in one block, then C{COPY} of the
batch's text from L{veil.store.requestlog.copy_text} and the
announcement's C{pg_notify}, in one transaction) timed batch by batch, in
a fresh database per variant:

    .venv/bin/python bench/dashboard/copyrate.py [--batches 200] [--batch 5000] [VARIANT ...]

Variants (default: all): C{bare} (the primary key only); C{seed} (schema
001's five indexes, no rollup); C{seed-minus-site-id-idx} (without the
(site_id, id) index that schema 007 drops: against the previous line, its
price); C{current-minus-rollup} (with 007's wider client_ip index: against
the previous line, the widening's price); C{current} (as shipped: against
the previous line, the rollup trigger's price);
C{current-plus-site-client-idx} (with a (site_id, client_ip, ts) index
besides, measured and not kept).  Each variant writes the same
rows, C{--batches} batches of C{--batch} rows (the flusher's cap), of the
generator's shape (generate.py) with times in the last hour; the first 10
batches warm up and are not counted.  Prints rows per second (the median
batch) and the batch time's median and 95th percentile.  The variants take
turns batch by batch, so that the machine's other load falls on all of them
alike: compare variants within a run, not across runs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdb
from generate import Shape, rows_for

from veil.store.logrows import COLUMNS
from veil.store.requestlog import CHANNEL, ID_LOCK_KEY

#: The secondary indexes as shipped (schema 001's, as schema 007 leaves them).
CURRENT_INDEXES = ["request_log_site_ts_idx", "request_log_request_id_idx",
                   "request_log_client_ip_idx", "request_log_attacks_idx"]
NO_ROLLUP = ["DROP TRIGGER request_log_rollup ON request_log"]
SITE_ID_IDX = "CREATE INDEX request_log_site_id_idx ON request_log (site_id, id)"
OLD_CLIENT_IDX = ["DROP INDEX request_log_client_ip_idx",
                  "CREATE INDEX request_log_client_ip_idx ON request_log (client_ip, ts)"]


def variants() -> dict[str, list[str]]:
    """What to run after the migrations, per variant (in the order printed)."""
    return {
        "bare": NO_ROLLUP + [f"DROP INDEX {name}" for name in CURRENT_INDEXES],
        "seed": [*NO_ROLLUP, *OLD_CLIENT_IDX, SITE_ID_IDX],
        "seed-minus-site-id-idx": NO_ROLLUP + OLD_CLIENT_IDX,
        "current-minus-rollup": NO_ROLLUP,
        "current": [],
        "current-plus-site-client-idx": [
            "CREATE INDEX request_log_site_client_idx ON request_log (site_id, client_ip, ts)"],
        "current-site-ts-asc": [
            "DROP INDEX request_log_site_ts_idx",
            "CREATE INDEX request_log_site_ts_idx ON request_log (site_id, ts)"],
    }


def batches(count: int, size: int, seed: int) -> list[list[str]]:
    """The COPY lines of every batch, without ids (made once, shared by the variants)."""
    shape = Shape(random.Random(seed), 100)
    start = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for i in range(count):
        at = start + timedelta(seconds=i * 3600 / count)
        lines = rows_for(shape, at, 3600 / count, size, itertools.count(), itertools.count(),
                         "bench")
        out.append([line.split("\t", 1)[1] for line in lines])
    return out


class Writer:
    """One variant's database and connection, writing batches as the flusher does."""

    def __init__(self, conninfo: str) -> None:
        self.conn = psycopg.connect(conninfo)
        self.statement = sql.SQL("COPY request_log ({}) FROM STDIN").format(
            sql.SQL(", ").join(map(sql.Identifier, ("id",) + COLUMNS)))
        self.spent: list[float] = []

    def write(self, lines: list[str]) -> None:
        conn = self.conn
        began = time.perf_counter()
        with conn.transaction():
            [first] = conn.execute("SELECT veil_request_log_reserve_ids(%s, %s)",
                                   (len(lines), ID_LOCK_KEY)).fetchone()
        data = "".join(f"{first + i}\t{line}" for i, line in enumerate(lines))
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(self.statement) as copy:
                copy.write(data.encode("utf-8"))
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, '{"v":1}'))
        self.spent.append(time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="*")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    known = variants()
    chosen = args.variants or list(known)
    for name in chosen:
        if name not in known:
            sys.exit(f"unknown variant {name}; known: {', '.join(known)}")
    print(f"making {args.batches} batches of {args.batch} rows", file=sys.stderr)
    work = batches(args.batches, args.batch, args.seed)
    writers: dict[str, Writer] = {}
    for name in chosen:
        dbname = f"veil_copyrate_{name.replace('-', '_')}"
        benchdb.drop(dbname)
        conninfo = benchdb.url(dbname)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for statement in known[name]:
                conn.execute(statement)
        writers[name] = Writer(conninfo)
    # Batch by batch, every variant in turn: the machine's other load falls on all alike.
    for lines in work:
        for writer in writers.values():
            writer.write(lines)
    print("| variant | rows/s (median batch) | batch ms p50 | batch ms p95 | indexes MiB |")
    print("|---|---|---|---|---|")
    for name, writer in writers.items():
        [index_bytes] = writer.conn.execute(
            "SELECT sum(pg_relation_size(t.relid)) FROM pg_index AS i,"
            " pg_partition_tree(i.indexrelid) AS t"
            " WHERE i.indrelid = 'request_log'::regclass AND t.isleaf").fetchone()
        writer.conn.close()
        benchdb.drop(f"veil_copyrate_{name.replace('-', '_')}")
        spent = writer.spent[10:]
        median = statistics.median(spent)
        p95 = statistics.quantiles(spent, n=20)[18]
        print(f"| {name} | {args.batch / median:,.0f} | {median * 1000:.1f} |"
              f" {p95 * 1000:.1f} | {index_bytes / 2 ** 20:.1f} |", flush=True)
    load = os.getloadavg()
    print(f"\nLoad average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          f" ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()

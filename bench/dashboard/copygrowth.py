"""
Does the request log's write cost grow with the table?  The flusher's write
path (copyrate.py's L{Writer}: ids in one block, COPY, NOTIFY) into one
fresh database, batch after batch, rows of the generator's shape (100 sites,
Zipf-distributed client addresses, times in the last hours, one monthly
partition) until C{--rows}; every C{--every} rows, what the last slice of
batches cost:

    .venv/bin/python bench/dashboard/copygrowth.py [--rows 3000000] [--batch 2000] [--every 250000]

Columns: rows so far; the median batch time and per row; WAL bytes per row;
shared-buffer misses per row (blocks PostgreSQL had to read, from the OS
cache or the disk); the table's and each index's size.  The database is
benchdb's (C{VEIL_BENCH_SHARED_BUFFERS=32MB} for the embedded cluster's
setting).  Only the trend within a run means anything on a shared machine.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdb
from copyrate import Writer
from generate import Shape, rows_for

_FACTS = """
SELECT pg_current_wal_lsn() - '0/0'::pg_lsn,
       (SELECT blks_read FROM pg_stat_database WHERE datname = current_database()),
       (SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('request_log') WHERE isleaf),
       (SELECT json_object_agg(i.indexrelid::regclass::text,
                               (SELECT sum(pg_relation_size(t.relid))
                                FROM pg_partition_tree(i.indexrelid) AS t WHERE t.isleaf))
        FROM pg_index AS i WHERE i.indrelid = 'request_log'::regclass),
       current_setting('shared_buffers'),
       (SELECT json_object_agg(parent, reads) FROM (
            SELECT inh.inhparent::regclass::text AS parent, sum(s.idx_blks_read) AS reads
            FROM pg_statio_user_indexes AS s JOIN pg_inherits AS inh ON inh.inhrelid = s.indexrelid
            GROUP BY 1) AS per_index)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250_000)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    dbname = "veil_copygrowth"
    benchdb.drop(dbname)
    conninfo = benchdb.url(dbname)
    writer = Writer(conninfo)
    facts = psycopg.connect(conninfo, autocommit=True)
    shape = Shape(random.Random(args.seed), 100)
    batches = args.rows // args.batch
    start = datetime.now(UTC) - timedelta(hours=3)
    span = 3 * 3600 / batches
    ids, request_ids = itertools.count(), itertools.count()
    wal, reads, _, _, shared, index_reads = facts.execute(_FACTS).fetchone()
    index_reads = index_reads or {}
    print(f"shared_buffers {shared}; batches of {args.batch} rows")
    print("| rows | batch ms p50 | µs/row | WAL B/row | buffer reads/row | of which per index"
          " | heap MiB | indexes MiB |")
    print("|---|---|---|---|---|---|---|---|")
    written = 0
    for number in range(batches):
        lines = rows_for(shape, start + timedelta(seconds=number * span), span, args.batch,
                         ids, request_ids, "grow")
        writer.write([line.split("\t", 1)[1] for line in lines])
        written += args.batch
        if written % args.every < args.batch or number == batches - 1:
            spent = writer.spent
            rows = len(spent) * args.batch
            wal2, reads2, heap, indexes, _, index_reads2 = facts.execute(_FACTS).fetchone()
            index_reads2 = index_reads2 or {}
            per_index = ", ".join(
                f"{name.removeprefix('request_log_').removesuffix('_idx')}"
                f" {(index_reads2[name] - index_reads.get(name, 0)) / rows:.2f}"
                for name in sorted(index_reads2)
                if index_reads2[name] - index_reads.get(name, 0) >= 0.01 * rows)
            median = statistics.median(spent)
            sizes = ", ".join(f"{name.removeprefix('request_log_').removesuffix('_idx')}"
                              f" {size / 2 ** 20:.0f}" for name, size in sorted(indexes.items()))
            print(f"| {written:,} | {median * 1000:.1f} | {median * 1e6 / args.batch:.1f} |"
                  f" {(wal2 - wal) / rows:.0f} | {(reads2 - reads) / rows:.2f} |"
                  f" {per_index or '-'} | {heap / 2 ** 20:.0f} | {sizes} |", flush=True)
            writer.spent = []
            wal, reads, index_reads = wal2, reads2, index_reads2
    writer.conn.close()
    facts.close()
    benchdb.drop(dbname)


if __name__ == "__main__":
    main()

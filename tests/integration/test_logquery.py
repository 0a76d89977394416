"""
L{veil.store.logquery} against a real PostgreSQL: rows go in as the
request log's flusher writes them (its COPY text, schema 007's rollup
trigger firing), and come back through L{RequestLogQueries} on a
L{Database}.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from tests.integration.test_migrate import empty_database
from tests.support.postgres import fresh_database, started_database
from tests.support.waiting import until
from veil.store.logquery import (
    LATENCY_BOUNDS,
    RECORD_COLUMNS,
    QueryError,
    QueryTooSlow,
    RequestFilter,
    RequestLogQueries,
)
from veil.store.logrows import COLUMNS, Batch, LogRow
from veil.store.migrate import default_schema_dir, migrate_sync
from veil.store.requestlog import ID_LOCK_KEY, copy_text

SITE = uuid.UUID("0b3f2a4e-7c1d-4e59-9a51-3f0c2d1e8a77")
OTHER = uuid.UUID("5d6e7f80-1a2b-4c3d-8e9f-a0b1c2d3e4f5")


def hour_ago() -> datetime:
    """The start of the hour before the current one (UTC)."""
    now = datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)


def row(ts: datetime, n: int, site: uuid.UUID | None = SITE, **changes: object) -> LogRow:
    base = LogRow(ts=ts, site_id=site, host="shop.test", method="GET", path="/a", query=None,
                  status=200, bytes_in=100, bytes_out=1000, duration_ms=5.0, origin_ms=4.0,
                  client_ip="192.0.2.1", request_id=f"r{n}", user_agent="curl/8",
                  classification="benign")
    return base._replace(**changes)


def write(conninfo: str, rows: Sequence[LogRow]) -> list[int]:
    """Write C{rows} as the flusher does (ids in one block, COPY); their ids."""
    statement = sql.SQL("COPY request_log ({}) FROM STDIN").format(
        sql.SQL(", ").join(map(sql.Identifier, ("id",) + COLUMNS)))
    with psycopg.connect(conninfo) as conn:
        for r in rows:
            conn.execute("SELECT veil_request_log_maintain(1200, %s)", (r.ts,))
        [first] = conn.execute("SELECT veil_request_log_reserve_ids(%s, %s)",
                               (len(rows), ID_LOCK_KEY)).fetchone()
        ids = list(range(first, first + len(rows)))
        with conn.cursor() as cur, cur.copy(statement) as copy:
            copy.write(copy_text(Batch.of(rows), ids))
    return ids


class QueryCase(TestCase):
    """A fresh database, a Database on it, and the queries."""

    timeout = 60

    def setUp(self) -> None:
        self.conninfo = fresh_database(self)
        self.db = started_database(self, self.conninfo, max_size=2)
        self.queries = RequestLogQueries(self.db)


class RequestsTests(QueryCase):
    """A site's requests, newest first, by filter and by page."""

    def setUp(self) -> None:
        super().setUp()
        t = self.t = hour_ago()
        s = timedelta(seconds=1)
        self.ids = write(self.conninfo, [
            row(t, 1),
            row(t + s, 2, status=404, path="/missing"),
            row(t + 2 * s, 3, status=503, method="POST", path="/api/cart"),
            row(t + 3 * s, 4, status=403, blocked=True, attack_type="sqli",
                classification="malicious", client_ip="203.0.113.9", path="/api/q",
                rule_ids=(942100, 942190), anomaly_score=10, excerpt="q=1' OR 1=1 --"),
            row(t + 4 * s, 5, client_ip="2001:db8::7", path="/api_old"),
            row(t + 5 * s, 6, site=OTHER),
            row(t + 6 * s, 7, status=200, attack_type="xss", classification="suspicious",
                client_ip="203.0.113.200"),
            row(t + 7 * s, 8, site=None),
        ])

    async def ids_for(self, **params: str) -> list[str]:
        flt = RequestFilter.from_params(SITE, params)
        page = await self.queries.requests(flt, 50)
        self.assertIsNone(page.next_cursor)
        return [r.request_id for r in page.rows]

    async def test_newest_first_and_only_the_site(self) -> None:
        """Without filters: every row of the site, newest first, nothing of other sites."""
        self.assertEqual(await self.ids_for(), ["r7", "r5", "r4", "r3", "r2", "r1"])

    async def test_filters(self) -> None:
        """Each filter selects exactly the rows it names."""
        cases = {
            (("status", "404"),): ["r2"],
            (("status", "5xx"),): ["r3"],
            (("status", "4XX"),): ["r4", "r2"],
            (("blocked", "true"),): ["r4"],
            (("blocked", "false"),): ["r7", "r5", "r3", "r2", "r1"],
            (("client", "203.0.113.9"),): ["r4"],
            (("client", "203.0.113.0/24"),): ["r7", "r4"],
            (("client", "203.0.113.128/25"),): ["r7"],
            (("client", "2001:db8::/32"),): ["r5"],
            (("path", "/api/"),): ["r4", "r3"],
            # LIKE's wildcards in a prefix are plain characters.
            (("path", "/api_"),): ["r5"],
            (("method", "post"),): ["r3"],
            (("attack_type", "sqli"),): ["r4"],
            (("classification", "suspicious"),): ["r7"],
            (("status", "4xx"), ("path", "/api")): ["r4"],
            (("since", (self.t + timedelta(seconds=2)).isoformat()),
             ("until", (self.t + timedelta(seconds=4)).isoformat())): ["r4", "r3"],
        }
        for params, expected in cases.items():
            self.assertEqual(await self.ids_for(**dict(params)), expected, params)

    async def test_record(self) -> None:
        """A record carries the row's columns and its id; its JSON form is plain."""
        flt = RequestFilter.from_params(SITE, {"attack_type": "sqli"})
        [record] = (await self.queries.requests(flt)).rows
        self.assertEqual(record.id, self.ids[3])
        self.assertEqual((record.ts, record.site_id, record.status, record.client_ip,
                          record.blocked, record.path), (self.t + timedelta(seconds=3), SITE,
                                                         403, "203.0.113.9", True, "/api/q"))
        self.assertEqual((record.rule_ids, record.anomaly_score, record.excerpt),
                         ([942100, 942190], 10, "q=1' OR 1=1 --"))
        data = json.loads(json.dumps(record.to_json()))
        self.assertEqual(data["site_id"], str(SITE))
        self.assertEqual(data["ts"], record.ts.isoformat())
        self.assertEqual(data["rule_ids"], [942100, 942190])
        logged = record.log_row()
        self.assertEqual((logged.request_id, logged.rule_ids), ("r4", (942100, 942190)))

    async def test_latest(self) -> None:
        """latest(): the most recent rows of the site by time, newest first."""
        rows = await self.queries.latest(SITE, 3)
        self.assertEqual([r.request_id for r in rows], ["r7", "r5", "r4"])


class CursorTests(QueryCase):
    """Pages continue exactly after the last row seen, whatever arrives meanwhile."""

    async def collect(self, flt: RequestFilter, limit: int, **kwargs: object) -> list[str]:
        seen, cursor = [], None
        for _ in range(100):
            page = await self.queries.requests(flt, limit, cursor=cursor, **kwargs)
            seen += [r.request_id for r in page.rows]
            cursor = page.next_cursor
            if cursor is None:
                return seen
        raise AssertionError("more than 100 pages")

    async def test_equal_times_across_pages(self) -> None:
        """
        Seven rows with one timestamp, pages of three: ordered by id within
        the time, no row twice, none skipped; a newer row written between
        pages does not shift them.
        """
        t = hour_ago()
        write(self.conninfo, [row(t - timedelta(seconds=1), 0)])
        write(self.conninfo, [row(t, n) for n in range(1, 8)])
        flt = RequestFilter(SITE)
        first = await self.queries.requests(flt, 3)
        self.assertEqual([r.request_id for r in first.rows], ["r7", "r6", "r5"])
        write(self.conninfo, [row(t + timedelta(seconds=5), 99), row(t, 98)])
        second = await self.queries.requests(flt, 3, cursor=first.next_cursor)
        self.assertEqual([r.request_id for r in second.rows], ["r4", "r3", "r2"])
        third = await self.queries.requests(flt, 3, cursor=second.next_cursor)
        self.assertEqual([r.request_id for r in third.rows], ["r1", "r0"])
        self.assertIsNone(third.next_cursor)

    async def test_search_cut_short(self) -> None:
        """
        With tiny slices and no more rows to search than one holds, every
        page stops after one slice: a page may be short or empty, it says how
        far back it searched, and following the cursors finds every match
        once, in order.
        """
        base = hour_ago() - timedelta(hours=10)
        rows = [row(base + timedelta(hours=h, minutes=m), h * 10 + m,
                    status=500 if (h + m) % 4 == 0 else 200)
                for h in range(10) for m in range(3)]
        write(self.conninfo, rows)
        queries = RequestLogQueries(self.db, search_rows=1, slice_rows=3)
        flt = RequestFilter.from_params(SITE, {"status": "5xx"})
        expected = [r.request_id for r in sorted(rows, key=lambda r: r.ts, reverse=True)
                    if r.status == 500]
        page = await queries.requests(flt, 50)
        self.assertLess(len(page.rows), len(expected))
        self.assertIsNotNone(page.searched_to)
        self.assertTrue(all(r.ts >= page.searched_to for r in page.rows))
        seen, cursor, pages = [], None, 0
        while True:
            page = await queries.requests(flt, 2, cursor=cursor)
            pages += 1
            seen += [r.request_id for r in page.rows]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        self.assertEqual(seen, expected)
        self.assertGreater(pages, len(expected) / 2)
        # Searching to the end, the same search is two rows a page.
        self.assertEqual(await self.collect(flt, 2, search_rows=math.inf), expected)

    async def test_until_is_exclusive_with_a_cursor(self) -> None:
        """A cursor at the range's end does not bring back rows at that end."""
        t = hour_ago()
        write(self.conninfo, [row(t, 1), row(t + timedelta(seconds=1), 2)])
        flt = RequestFilter(SITE, until=t + timedelta(seconds=1))
        page = await self.queries.requests(flt, 1)
        self.assertEqual([r.request_id for r in page.rows], ["r1"])
        self.assertEqual(await self.collect(flt, 1), ["r1"])

    def test_bad_cursor(self) -> None:
        """A cursor not made by the list is a QueryError naming the cursor."""
        for cursor in ("nonsense", "", "e30", "W3sidCI6IjIwMjYifSwgLTFd", "x" * 300):
            e = self.assertRaises(QueryError, self.queries.requests, RequestFilter(SITE),
                                  cursor=cursor)
            self.assertEqual(e.field, "cursor")


class ExportTests(QueryCase):
    """Exports are written page by page, pausing when the consumer is full."""

    def setUp(self) -> None:
        super().setUp()
        t = hour_ago()
        self.rows = [row(t + timedelta(seconds=n), n, path=p)
                     for n, p in enumerate(["/x", "=cmd|' /C calc'!A0", "+1", "-2", "@SUM(1)",
                                            "/comma,and\"quote", "/line\nbreak"])]
        write(self.conninfo, self.rows)

    async def test_csv_paused_between_pages(self) -> None:
        """
        A consumer that is full after every write gets one page, then
        nothing until it resumes the producer; the CSV has every row,
        newest first, with formula-like cells defused and quoting intact.
        """
        class Full(StringTransport):
            """A consumer whose buffer is full after every write."""

            writes: list[bytes]

            def write(self, data: bytes) -> None:
                super().write(data)
                self.writes.append(data)
                self.producer.pauseProducing()

        consumer = Full()
        consumer.writes = []
        done = self.queries.export(RequestFilter(SITE), "csv", consumer, page_size=3)
        self.assertEqual(len(consumer.writes), 1)      # the header, then paused
        for pages in (1, 2, 3):
            consumer.producer.resumeProducing()
            await until(lambda n=1 + pages: len(consumer.writes) == n, what="the next page")
            # A round trip to the database: had the export not paused, the
            # next page would be on its way.
            await self.db.query("t", "SELECT 1")
            self.assertEqual(len(consumer.writes), 1 + pages)
        count = await done
        self.assertEqual(count, 7)
        self.assertIsNone(consumer.producer)
        table = list(csv.reader(io.StringIO(consumer.value().decode("utf-8"))))
        self.assertEqual(tuple(table[0]), RECORD_COLUMNS)
        paths = [r[RECORD_COLUMNS.index("path")] for r in table[1:]]
        self.assertEqual(paths, ["/line\nbreak", "/comma,and\"quote", "'@SUM(1)", "'-2",
                                 "'+1", "'=cmd|' /C calc'!A0", "/x"])
        self.assertEqual(table[1][RECORD_COLUMNS.index("blocked")], "false")
        self.assertEqual(table[1][RECORD_COLUMNS.index("site_id")], str(SITE))

    async def test_json(self) -> None:
        """The JSON export is one array of the records, newest first."""
        consumer = StringTransport()
        count = await self.queries.export(RequestFilter.from_params(SITE, {"path": "/"}),
                                          "json", consumer, page_size=2)
        self.assertEqual(count, 3)
        data = json.loads(consumer.value())
        self.assertEqual([d["path"] for d in data],
                         ["/line\nbreak", "/comma,and\"quote", "/x"])
        self.assertEqual(data[0]["request_id"], "r6")

    async def test_empty_json(self) -> None:
        """No matching row: an empty array."""
        consumer = StringTransport()
        count = await self.queries.export(RequestFilter.from_params(SITE, {"path": "/none"}),
                                          "json", consumer)
        self.assertEqual((count, json.loads(consumer.value())), (0, []))

    async def test_stopped(self) -> None:
        """A consumer that goes away stops the export after the page in flight."""
        class Gone(StringTransport):
            """A consumer that goes away after its first page."""

            def write(self, data: bytes) -> None:
                super().write(data)
                if data.count(b"\n") > 1:
                    self.producer.stopProducing()

        consumer = Gone()
        count = await self.queries.export(RequestFilter(SITE), "csv", consumer, page_size=2)
        self.assertEqual(count, 2)

    def test_bad_format(self) -> None:
        """An unknown format is refused before anything is written."""
        consumer = StringTransport()
        e = self.assertRaises(QueryError, self.queries.export, RequestFilter(SITE), "xml",
                              consumer)
        self.assertEqual(e.field, "format")
        self.assertEqual(consumer.value(), b"")


class StatsTests(QueryCase):
    """Stats of a small hand-made data set, from the rows and from the rollups."""

    def setUp(self) -> None:
        super().setUp()
        h = self.h = hour_ago()
        rows = []
        # Minute 0: 20 requests taking 1..20 ms; 13 answered 200, two blocked
        # sqli (403), two 404, two 500, one 503; one xss let through.
        statuses = [200] * 13 + [403, 403, 404, 404, 500, 500, 503]
        for n in range(20):
            rows.append(row(h + timedelta(seconds=n), n, duration_ms=float(n + 1),
                            status=statuses[n], blocked=statuses[n] == 403,
                            attack_type="sqli" if statuses[n] == 403 else
                            ("xss" if n == 0 else None),
                            path="/a" if n < 10 else ("/b" if n < 16 else "/c"),
                            client_ip="192.0.2.1" if n < 12 else "192.0.2.2"))
        # Minute 2: four slow ones from IPv6.
        for n, ms in enumerate((100.0, 200.0, 300.0, 400.0)):
            rows.append(row(h + timedelta(minutes=2, seconds=n), 100 + n, duration_ms=ms,
                            client_ip="2001:db8::1"))
        # Noise: another site, and one row of ours without a duration.
        rows.append(row(h + timedelta(seconds=30), 200, site=OTHER, duration_ms=9999.0))
        rows.append(row(h + timedelta(minutes=3), 201, duration_ms=None, path="/d"))
        write(self.conninfo, rows)

    async def test_from_rows(self) -> None:
        """Minute buckets: exact counts, error rate and percentiles, and exact tops."""
        h = self.h
        stats = await self.queries.stats(SITE, h, h + timedelta(minutes=5), bucket=60)
        self.assertTrue(stats.latency_exact)
        self.assertTrue(stats.tops_exact)
        self.assertEqual([b.start for b in stats.buckets],
                         [h + timedelta(minutes=m) for m in range(5)])
        first, _, third, fourth, _ = stats.buckets
        self.assertEqual((first.requests, first.blocked, first.client_errors,
                          first.server_errors), (20, 2, 4, 3))
        self.assertAlmostEqual(first.error_rate, 0.15)
        self.assertAlmostEqual(first.p50_ms, 10.5)
        self.assertAlmostEqual(first.p95_ms, 19.05)
        self.assertEqual(stats.buckets[1].requests, 0)
        self.assertIsNone(stats.buckets[1].p50_ms)
        self.assertEqual(stats.buckets[1].error_rate, 0.0)
        self.assertAlmostEqual(third.p50_ms, 250.0)
        self.assertAlmostEqual(third.p95_ms, 385.0)
        self.assertEqual((fourth.requests, fourth.p50_ms), (1, None))
        totals = stats.totals
        self.assertEqual((totals.requests, totals.blocked, totals.server_errors), (25, 2, 3))
        self.assertAlmostEqual(totals.p50_ms, 12.5)
        self.assertAlmostEqual(totals.p95_ms, 285.0)
        self.assertEqual([(c.key, c.requests) for c in stats.top_paths],
                         [("/a", 14), ("/b", 6), ("/c", 4), ("/d", 1)])
        self.assertEqual([(c.key, c.requests) for c in stats.top_clients],
                         [("192.0.2.1", 13), ("192.0.2.2", 8), ("2001:db8::1", 4)])
        self.assertEqual([(c.key, c.requests) for c in stats.top_attack_types],
                         [("sqli", 2), ("xss", 1)])
        self.assertEqual(stats.tops_rows, 25)
        self.assertEqual(json.loads(json.dumps(stats.to_json()))["totals"]["requests"], 25)

    async def test_from_rollups(self) -> None:
        """
        Five-minute and hourly buckets: the same counts from the rollups, and
        percentiles estimated inside the histogram bucket of the duration of
        rank ceil(q * n) (of 24 durations: the 12th, 12 ms, and the 23rd, 300 ms).
        """
        h = self.h
        for bucket in (300, 3600):
            stats = await self.queries.stats(SITE, h, h + timedelta(hours=1), bucket=bucket)
            self.assertFalse(stats.latency_exact)
            first = stats.buckets[0]
            self.assertEqual((first.requests, first.blocked, first.client_errors,
                              first.server_errors), (25, 2, 4, 3))
            self.assertEqual(sum(b.requests for b in stats.buckets), 25)
            self.assertTrue(10 <= first.p50_ms < 15, first.p50_ms)
            self.assertTrue(300 <= first.p95_ms < 500, first.p95_ms)
            self.assertEqual([(c.key, c.requests) for c in stats.top_attack_types],
                             [("sqli", 2), ("xss", 1)])
            self.assertEqual(stats.top_paths[0].key, "/a")

    async def test_range_widened_to_buckets(self) -> None:
        """A range that does not fall on bucket edges is widened to whole buckets."""
        h = self.h
        stats = await self.queries.stats(SITE, h + timedelta(seconds=90),
                                         h + timedelta(seconds=150), bucket=60)
        self.assertEqual((stats.since, stats.until),
                         (h + timedelta(minutes=1), h + timedelta(minutes=3)))
        self.assertEqual([b.requests for b in stats.buckets], [0, 4])

    async def test_sampled_tops(self) -> None:
        """
        Over more rows than the tops may read, they are estimated from a
        sample spread over the range, said so, and still find the heavy hitter.
        """
        h = self.h - timedelta(hours=2)
        write(self.conninfo, [row(h + timedelta(minutes=m, seconds=s), 1000 + m * 10 + s,
                                  path="/heavy" if s % 3 else f"/p{m}")
                              for m in range(60) for s in range(6)])
        queries = RequestLogQueries(self.db, top_rows=40, top_slices=8)
        stats = await queries.stats(SITE, h, h + timedelta(hours=1), bucket=300)
        self.assertFalse(stats.tops_exact)
        self.assertLessEqual(stats.tops_rows, 40)
        self.assertEqual(stats.top_paths[0].key, "/heavy")
        self.assertTrue(200 <= stats.top_paths[0].requests <= 280, stats.top_paths)

    def test_bad_arguments(self) -> None:
        """Unusable ranges and buckets are QueryErrors naming the argument."""
        h = self.h
        cases = [
            ((h, h), {}, "until"),
            ((h.replace(tzinfo=None), h + timedelta(hours=1)), {}, "since"),
            ((h, h + timedelta(hours=1)), {"bucket": 90}, "bucket"),
            ((h, h + timedelta(hours=1)), {"bucket": 420}, "bucket"),
            ((h, h + timedelta(days=1)), {"bucket": 60}, "bucket"),
            ((h, h + timedelta(days=30)), {"bucket": 300}, "bucket"),
            ((h, h + timedelta(hours=1)), {"top": 0}, "top"),
        ]
        for args, kwargs, field in cases:
            e = self.assertRaises(QueryError, self.queries.stats, SITE, *args, **kwargs)
            self.assertEqual(e.field, field, (args, kwargs))


class SlowQueryTests(QueryCase):
    """A query past its statement time-out is a QueryTooSlow."""

    async def test_timeout(self) -> None:
        """The database cancels it; the caller gets QueryTooSlow, not a psycopg error."""
        queries = RequestLogQueries(self.db, timeout=0.05)
        d = queries._run("t", lambda cur: cur.execute("SELECT pg_sleep(2)"))
        with self.assertRaises(QueryTooSlow):
            await d


class RollupSchemaTests(TestCase):
    """Schema 007's rollups: the trigger, the backfill, the bounds and the pruning."""

    timeout = 120

    def rollups(self, conninfo: str) -> list[tuple]:
        with psycopg.connect(conninfo) as conn:
            return [conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()
                    for table in ("request_log_5min", "request_log_hourly",
                                  "request_log_attacks_hourly")]

    def sample(self) -> list[LogRow]:
        t = hour_ago() - timedelta(hours=1)
        return [row(t + timedelta(minutes=7 * n), n, site=(SITE, OTHER, None)[n % 3],
                    duration_ms=None if n % 5 == 0 else 0.05 * 1.7 ** n,
                    status=(200, 404, 503, 403)[n % 4], blocked=n % 4 == 3,
                    attack_type=("sqli", None, "xss")[n % 3] if n % 2 else None,
                    bytes_out=n * 10)
                for n in range(30)]

    def test_backfill_matches_trigger(self) -> None:
        """
        Rows logged before schema 007 are rolled up by the migration exactly
        as the trigger rolls up rows logged after it, batch by batch.
        """
        rows = self.sample()
        before = empty_database(self)
        partial = Path(self.mktemp())
        partial.mkdir()
        for path in sorted(default_schema_dir().glob("*.sql")):
            if path.name < "007":
                shutil.copy(path, partial / path.name)
        migrate_sync(before, partial)
        write(before, rows[:10])
        write(before, rows[10:])
        migrate_sync(before, default_schema_dir())
        after = fresh_database(self)
        for start in range(0, len(rows), 7):
            write(after, rows[start:start + 7])
        self.assertEqual(self.rollups(before), self.rollups(after))
        five, hourly, attacks = self.rollups(after)
        self.assertEqual(sum(r[2] for r in five), 20)
        self.assertEqual(sum(r[2] for r in hourly), 20)
        self.assertEqual(sum(sum(r[8]) for r in five),
                         sum(1 for r in rows if r.site_id and r.duration_ms is not None))
        self.assertEqual(sum(r[3] for r in attacks), sum(
            1 for r in rows if r.site_id and r.attack_type))

    def test_bounds_match(self) -> None:
        """The histogram bounds of the code are the schema's."""
        with psycopg.connect(fresh_database(self)) as conn:
            [bounds] = conn.execute("SELECT veil_request_log_latency_bounds()").fetchone()
        self.assertEqual(tuple(bounds), LATENCY_BOUNDS)

    def test_pruned_with_partitions(self) -> None:
        """
        Partition maintenance drops old months as before and deletes the
        rollups older than the oldest partition kept.
        """
        conninfo = fresh_database(self)
        now = datetime.now(UTC)
        old = (now.replace(day=1) - timedelta(days=70)).replace(day=10)
        write(conninfo, [row(old, 1), row(now - timedelta(minutes=1), 2)])
        with psycopg.connect(conninfo) as conn:
            changes = conn.execute("SELECT * FROM veil_request_log_maintain(1)").fetchall()
            self.assertIn("dropped", [action for action, _ in changes])
            for table in ("request_log_5min", "request_log_hourly"):
                buckets = [b for (b,) in conn.execute(f"SELECT bucket FROM {table}")]
                self.assertEqual(len(buckets), 1, table)
                self.assertGreater(buckets[0], old + timedelta(days=20))
            self.assertEqual(conn.execute("SELECT count(*) FROM request_log").fetchone(), (1,))

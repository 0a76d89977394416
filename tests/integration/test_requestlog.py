"""Tests for L{veil.store.requestlog.RequestLog} against a real PostgreSQL."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.support.postgres import cluster, fresh_database
from tests.support.waiting import until
from veil.metrics import Registry
from veil.store.logrows import copy_line
from veil.store.requestlog import ID_LOCK_KEY, Announcement, LogRow, RequestLog, Spool


def row(n: int, site: uuid.UUID | None = None, ts: datetime | None = None) -> LogRow:
    return LogRow(
        ts=ts or datetime.now(timezone.utc), site_id=site, host="shop.test", method="GET",
        path=f"/item/{n}", query="a=1", status=200, bytes_in=120, bytes_out=2048,
        duration_ms=1.5, origin_ms=1.1, client_ip="192.0.2.10", request_id=f"req-{n}",
        user_agent="curl/8", classification="clean", classifier="signatures",
        confidence=0.1, attack_type=None, blocked=False)


def count(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT count(*) FROM request_log").fetchone()[0]


class RequestLogTests(TestCase):
    """Rows are written in batches with COPY, announced, and never lost."""

    timeout = 120

    def setUp(self) -> None:
        self.conninfo = fresh_database(self)
        self.spool = Path(self.mktemp()).resolve()
        self.published: list[LogRow] = []

    def start(self, **kwargs) -> RequestLog:
        log = RequestLog(self.conninfo, reactor, self.spool, publish=self.published.append,
                         connect_timeout=1.0, **kwargs)
        log.startService()
        self.addCleanup(lambda: log.running and log.stopService())
        return log

    async def test_rows_written_with_fields(self) -> None:
        """Appended rows reach request_log with every field, and the live hub at once."""
        site = uuid.uuid4()
        log = self.start()
        log.append(row(1, site))
        self.assertEqual(len(self.published), 1)
        await until(lambda: count(self.conninfo) == 1, what="the row written")
        with psycopg.connect(self.conninfo) as conn:
            got = conn.execute(
                "SELECT site_id, host, method, path, query, status, bytes_in, bytes_out,"
                " duration_ms, origin_ms, host(client_ip), request_id, classification,"
                " blocked, id IS NOT NULL FROM request_log").fetchone()
        self.assertEqual(got, (site, "shop.test", "GET", "/item/1", "a=1", 200, 120, 2048,
                               1.5, 1.1, "192.0.2.10", "req-1", "clean",
                               False, True))

    async def test_batch_time_metric(self) -> None:
        """
        Every batch written is timed in C{veil_request_log_batch_seconds} (what
        C{bench/veil/staying.sh} compares minute by minute), one observation
        per batch, and the histogram is on C{/metrics}.
        """
        metrics = Registry()
        log = self.start(metrics=metrics)
        batches = metrics.histogram("veil_request_log_batch_seconds", "")
        log.append(row(1, uuid.uuid4()))
        await until(lambda: batches.count() == 1, what="the first batch timed")
        self.assertEqual(count(self.conninfo), 1)
        log.append(row(2, uuid.uuid4()))
        log.append(row(3, uuid.uuid4()))
        await until(lambda: count(self.conninfo) == 3, what="the second batch written")
        await until(lambda: batches.count() == 2, what="the second batch timed")
        self.assertIn("veil_request_log_batch_seconds_count 2\n", metrics.render())

    async def test_awkward_text_round_trips(self) -> None:
        """
        Text with COPY's special characters (backslash, tab, newline, CR)
        comes back as it was sent; a NUL, which PostgreSQL text cannot hold,
        becomes U+FFFD; NULLs, a timestamp and an IPv6 address survive.
        """
        ts = datetime(2026, 12, 1, 18, 0, 1, 250000, tzinfo=timezone.utc)
        log = self.start()
        log.append(LogRow(ts=ts, site_id=None, host="h\\\tst", method="GET",
                          path="/a\\b\tc\nd\re", query=None, status=None, bytes_in=0,
                          bytes_out=None, duration_ms=0.25, origin_ms=None,
                          client_ip="2001:db8::1", request_id="r\\N",
                          user_agent="agent\x00x", blocked=True))
        await until(lambda: count(self.conninfo) == 1, what="the row written")
        with psycopg.connect(self.conninfo) as conn:
            got = conn.execute(
                "SELECT ts, site_id, host, path, query, status, bytes_out, duration_ms,"
                " host(client_ip), request_id, user_agent, blocked FROM request_log").fetchone()
        self.assertEqual(got, (ts, None, "h\\\tst", "/a\\b\tc\nd\re", None, None, None, 0.25,
                               "2001:db8::1", "r\\N", "agent\ufffdx", True))

    async def test_verdict_columns(self) -> None:
        """A signature verdict's rule ids, score and excerpt reach their columns."""
        log = self.start()
        log.append(row(1)._replace(classification="malicious", attack_type="sqli",
                                   blocked=True, rule_ids=(942100, 942190), anomaly_score=10,
                                   excerpt="GET /?id=[args:id]\tmatched"))
        log.append(row(2))
        await until(lambda: count(self.conninfo) == 2, what="the rows written")
        with psycopg.connect(self.conninfo) as conn:
            got = conn.execute("SELECT rule_ids, anomaly_score, excerpt FROM request_log"
                               " ORDER BY request_id").fetchall()
        self.assertEqual(got, [([942100, 942190], 10, "GET /?id=[args:id]\tmatched"),
                               (None, None, None)])

    async def test_spool_from_before_verdict_columns_replayed(self) -> None:
        """COPY lines spooled before the verdict columns existed are replayed with NULLs."""
        site = uuid.uuid4()
        self.spool.mkdir(parents=True)
        line = copy_line(row(7, site))
        earlier = "\t".join(line.split("\t")[:-3]) + "\n"
        (self.spool / "000000000000.rows").write_text(earlier)
        self.start()
        await until(lambda: count(self.conninfo) == 1, what="the spooled row written")
        with psycopg.connect(self.conninfo) as conn:
            got = conn.execute("SELECT request_id, site_id, rule_ids, excerpt"
                               " FROM request_log").fetchall()
        self.assertEqual(got, [("req-7", site, None, None)])

    async def test_spool_of_earlier_versions_replayed(self) -> None:
        """A spool file in the JSON form earlier versions wrote is replayed too."""
        site = uuid.uuid4()
        self.spool.mkdir(parents=True)
        (self.spool / "000000000000.rows").write_text(
            '[{"t":"2026-11-22T02:00:00+00:00"},{"u":"%s"},"shop.test","GET","/old",null,'
            '200,0,10,1.0,0.5,"192.0.2.1","old-1",null,null,null,null,null,false]\n' % site)
        log = self.start()
        log.append(row(1, site))
        await until(lambda: count(self.conninfo) == 2, what="spool and row written")
        with psycopg.connect(self.conninfo) as conn:
            got = conn.execute("SELECT request_id, path, site_id FROM request_log"
                               " ORDER BY id").fetchall()
        self.assertEqual(got, [("old-1", "/old", site), ("req-1", "/item/1", site)])

    async def test_one_notify_per_batch(self) -> None:
        """
        A batch is announced once on veil_requests with the writer's origin,
        its count, its sites and its ids (one range, the ids the rows got).
        """
        site = uuid.uuid4()
        with psycopg.connect(self.conninfo, autocommit=True) as listen:
            listen.execute("LISTEN veil_requests")
            log = self.start(interval=0.5)
            for n in range(50):
                log.append(row(n, site))
            await until(lambda: count(self.conninfo) == 50, what="the batch written")
            notes = list(listen.notifies(timeout=2.0, stop_after=1))
        self.assertEqual(len(notes), 1)
        note = Announcement.parse(notes[0].payload)
        self.assertEqual((note.origin, note.count, note.sites), (log.origin, 50, (site,)))
        with psycopg.connect(self.conninfo) as conn:
            ids = conn.execute("SELECT min(id), max(id) FROM request_log").fetchone()
        self.assertEqual(note.ranges, (ids,))
        self.assertEqual(ids[1] - ids[0], 49)

    def test_id_blocks(self) -> None:
        """
        veil_request_log_reserve_ids hands out consecutive blocks that never
        overlap, also to writers racing on several connections, and refuses
        a bad size.
        """
        def reserve(conn: psycopg.Connection, n: int) -> range:
            [first] = conn.execute("SELECT veil_request_log_reserve_ids(%s, %s)",
                                   (n, ID_LOCK_KEY)).fetchone()
            return range(first, first + n)

        with psycopg.connect(self.conninfo, autocommit=True) as a, \
                psycopg.connect(self.conninfo, autocommit=True) as b:
            blocks = [reserve(a, 5), reserve(b, 1), reserve(a, 1000), reserve(b, 7)]
            with self.assertRaises(psycopg.errors.InvalidParameterValue):
                reserve(a, 0)
        self.assertEqual(blocks[1].start, blocks[0].stop)
        self.assertEqual(blocks[2].start, blocks[1].stop)
        self.assertEqual(blocks[3].start, blocks[2].stop)

        def race(n: int) -> list[range]:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                return [reserve(conn, n) for _ in range(200)]

        with ThreadPoolExecutor(4) as pool:
            raced = [r for rs in pool.map(race, (3, 10, 1, 50)) for r in rs]
        ids = [i for r in raced for i in r]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(len(ids), 200 * (3 + 10 + 1 + 50))

    async def test_batch_max_cuts_early(self) -> None:
        """Reaching batch_max starts a write without waiting for the interval."""
        log = self.start(interval=3600, batch_max=100)
        for n in range(100):
            log.append(row(n))
        await until(lambda: count(self.conninfo) == 100, what="the full batch written")

    async def test_missing_partition_created(self) -> None:
        """A row for a month with no partition yet makes the partition and is written."""
        log = self.start()
        log.append(row(1, ts=datetime(2031, 7, 4, 12, 0, tzinfo=timezone.utc)))
        await until(lambda: count(self.conninfo) == 1, what="the row written")

    async def test_zero_loss_through_outage(self) -> None:
        """
        PostgreSQL stopped under load and started again: every row appended
        arrives exactly once, in order of spooling, and the spool is empty.
        """
        log = self.start(memory_cap=2000, batch_max=1000)
        pg = cluster()
        total = 0
        try:
            for chunk in range(60):
                for n in range(500):
                    log.append(row(total + n))
                total += 500
                if chunk == 20:
                    pg.stop("immediate")
                if chunk == 45:
                    pg.start()
                await deferLater(reactor, 0.02, lambda: None)
        finally:
            if not pg.running():
                pg.start()
        await log.stopService()
        self.assertEqual(count(self.conninfo), total)
        with psycopg.connect(self.conninfo) as conn:
            distinct = conn.execute("SELECT count(DISTINCT request_id) FROM request_log").fetchone()
        self.assertEqual(distinct, (total,))
        self.assertGreater(log.metrics.counter("veil_request_log_spooled_total", "").value(), 0)
        self.assertEqual(log.metrics.counter("veil_request_log_dropped_total", "").value(), 0)
        self.assertFalse(Spool(self.spool))
        self.flushLoggedErrors()

    async def test_stop_with_database_down_spools_then_replays(self) -> None:
        """Stopping while the database is away spools everything; the next start replays it."""
        log = self.start()
        pg = cluster()
        pg.stop("immediate")
        try:
            for n in range(1500):
                log.append(row(n))
            await log.stopService()
        finally:
            pg.start()
        self.assertEqual(Spool(self.spool).rows(), 1500)
        self.assertEqual(count(self.conninfo), 0)

        again = self.start()
        again.append(row(99999))
        await until(lambda: count(self.conninfo) == 1501, what="the spool replayed")
        await again.stopService()
        self.assertFalse(Spool(self.spool))
        with psycopg.connect(self.conninfo) as conn:
            first_written = conn.execute(
                "SELECT request_id FROM request_log ORDER BY id LIMIT 1").fetchone()
        # The spooled rows went in before the new one.
        self.assertEqual(first_written, ("req-0",))

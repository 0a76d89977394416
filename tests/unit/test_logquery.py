"""L{veil.store.logquery}'s pure parts: filters, cursors, CSV cells, percentiles, buckets."""

from __future__ import annotations

import csv
import io
import ipaddress
import uuid
from datetime import UTC, datetime, timedelta

from twisted.trial.unittest import SynchronousTestCase

from veil.store.logquery import (
    LATENCY_BOUNDS,
    Bucket,
    QueryError,
    RequestFilter,
    RequestRecord,
    _sample_slices,
    choose_bucket,
    csv_cell,
    csv_rows,
    decode_cursor,
    encode_cursor,
    parse_limit,
    percentile,
)

SITE = uuid.UUID("0b3f2a4e-7c1d-4e59-9a51-3f0c2d1e8a77")
T = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)


class FilterParsingTests(SynchronousTestCase):
    """Query parameters become filters, or QueryErrors naming the parameter."""

    def test_parsed(self) -> None:
        """Every parameter, with blank and unknown ones ignored."""
        flt = RequestFilter.from_params(SITE, {
            "since": "2026-12-01T10:00:00Z", "until": "2026-12-01T12:00:00+01:00",
            "status": "4xx", "blocked": "yes", "client": "10.1.2.3/8", "path": "/api",
            "method": "get", "attack_type": "sqli", "classification": "malicious",
            "ignored": "x", "empty": " "})
        self.assertEqual(flt.since, datetime(2026, 12, 1, 10, tzinfo=UTC))
        self.assertEqual(flt.until, datetime(2026, 12, 1, 11, tzinfo=UTC))
        self.assertEqual((flt.status, flt.status_class, flt.blocked, flt.method),
                         (None, 4, True, "GET"))
        self.assertEqual(flt.client, ipaddress.ip_network("10.0.0.0/8"))
        self.assertEqual(RequestFilter.from_params(SITE, {"status": "404", "blocked": "0",
                                                          "path": ""}),
                         RequestFilter(SITE, status=404, blocked=False))

    def test_refused(self) -> None:
        """Each malformed parameter is named in the error."""
        cases = [
            ("since", {"since": "yesterday"}),
            ("until", {"until": "2026-12-01T10:00:00"}),
            ("status", {"status": "4x"}),
            ("status", {"status": "600"}),
            ("status", {"status": "6xx"}),
            ("blocked", {"blocked": "maybe"}),
            ("client", {"client": "10.0.0.300"}),
            ("path", {"path": "api"}),
            ("method", {"method": "G" * 65}),
            ("attack_type", {"attack_type": "bad\x00type"}),
            ("until", {"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}),
        ]
        for field, params in cases:
            e = self.assertRaises(QueryError, RequestFilter.from_params, SITE, params)
            self.assertEqual(e.field, field, params)

    def test_limit(self) -> None:
        """Page sizes from 1 to the most; anything else names the limit."""
        self.assertEqual((parse_limit(None), parse_limit(" "), parse_limit("500")), (50, 50, 500))
        for text in ("0", "501", "-1", "ten", "1.5"):
            self.assertEqual(self.assertRaises(QueryError, parse_limit, text).field, "limit")


class CursorTests(SynchronousTestCase):
    """Cursors are opaque, round-trip exactly, and anything else is refused."""

    def test_round_trip(self) -> None:
        """A position comes back as it went, microseconds and all, in URL-safe text."""
        cursor = encode_cursor(T, 123456789012)
        self.assertTrue(all(c.isalnum() or c in "-_" for c in cursor))
        self.assertEqual(decode_cursor(cursor), (T, 123456789012))

    def test_record_cursor(self) -> None:
        """A record's cursor is its (ts, id)."""
        record = RequestRecord(7, T, SITE, *([None] * 16), False)
        self.assertEqual(decode_cursor(record.cursor), (T, 7))

    def test_refused(self) -> None:
        """Tampered or foreign cursors are QueryErrors on the cursor."""
        naive = encode_cursor(T.replace(tzinfo=None), 1)
        negative = encode_cursor(T, 1).replace("MV0", "LTFd")
        for cursor in ("", "!!!", "e30", naive, negative, "W10", "x" * 201):
            self.assertEqual(self.assertRaises(QueryError, decode_cursor, cursor).field,
                             "cursor", cursor)


class CsvTests(SynchronousTestCase):
    """CSV cells are safe to open in a spreadsheet, and the quoting is intact."""

    def test_formula_cells_defused(self) -> None:
        """Text starting with = + - @ tab or CR gets a leading apostrophe; nothing else."""
        for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "=cmd|' /C calc'!A0"):
            self.assertEqual(csv_cell(text), "'" + text)
        for text in ("/path", "a=b", " =x", "", "'quoted"):
            self.assertEqual(csv_cell(text), text)

    def test_values(self) -> None:
        """None is empty; numbers, booleans, UUIDs, times and rule ids are written plainly."""
        self.assertEqual([csv_cell(v) for v in (None, -3, 1.5, True, False, SITE, T,
                                                [942100, 941100])],
                         ["", "-3", "1.5", "true", "false", str(SITE), T.isoformat(),
                          "942100 941100"])

    def test_rows(self) -> None:
        """Commas, quotes and line breaks are quoted by RFC 4180 and read back the same."""
        record = RequestRecord(1, T, SITE, "h", "GET", '/a,"b"\nc', "=x", 200, 1, 2, 0.5, None,
                               "192.0.2.1", "id", "agent", None, None, None, None, False)
        [read] = list(csv.reader(io.StringIO(csv_rows([record]).decode("utf-8"))))
        self.assertEqual(read[5:7], ['/a,"b"\nc', "'=x"])
        self.assertEqual(read[1], T.isoformat())


class PercentileTests(SynchronousTestCase):
    """Percentiles from the rollup's latency histogram."""

    def histogram(self, **counts: int) -> list[int]:
        out = [0] * (len(LATENCY_BOUNDS) + 1)
        for key, n in counts.items():
            out[int(key[1:])] = n
        return out

    def test_inside_the_bucket(self) -> None:
        """The quantile falls in its bucket, interpolated geometrically."""
        # Bucket 9 is [10, 15) ms: ten values; the median is half-way, geometrically.
        histogram = self.histogram(b9=10)
        self.assertAlmostEqual(percentile(histogram, 0.5), 10 * 1.5 ** 0.5)
        self.assertAlmostEqual(percentile(histogram, 1.0), 15.0)
        mixed = self.histogram(b4=50, b18=50)   # [1, 2) ms and [300, 500) ms
        self.assertTrue(1 <= percentile(mixed, 0.5) <= 2)
        self.assertTrue(300 <= percentile(mixed, 0.95) < 500)

    def test_edges(self) -> None:
        """Empty: None; the first bucket is linear from 0; the last answers 60 s."""
        self.assertIsNone(percentile(self.histogram(), 0.5))
        self.assertAlmostEqual(percentile(self.histogram(b0=4), 0.5), 0.05)
        self.assertEqual(percentile(self.histogram(b30=3), 0.95), 60000.0)


class BucketTests(SynchronousTestCase):
    """Bucket widths and the sample's slices."""

    def test_choose(self) -> None:
        """At most 300 buckets, the finest that allows it."""
        cases = {timedelta(hours=1): 60, timedelta(hours=5): 60, timedelta(hours=6): 300,
                 timedelta(days=1): 300, timedelta(days=7): 3600,
                 timedelta(days=30): 10800, timedelta(days=400): 86400}
        for span, seconds in cases.items():
            self.assertEqual(choose_bucket(T, T + span), seconds, span)

    def test_sample_slices(self) -> None:
        """Runs of buckets, empty ones left out, each with the rows it holds."""
        buckets = [Bucket(T + timedelta(minutes=5 * i), n, 0, 0, 0, None, None)
                   for i, n in enumerate([3, 0, 0, 0, 2, 2, 1])]
        self.assertEqual(_sample_slices(buckets, 300, 3), [
            (T, T + timedelta(minutes=15), 3),
            (T + timedelta(minutes=15), T + timedelta(minutes=30), 4),
            (T + timedelta(minutes=30), T + timedelta(minutes=35), 1)])

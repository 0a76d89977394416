"""L{veil.store.logrows}: request-log rows as COPY text, and batches of them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from twisted.trial.unittest import SynchronousTestCase

from veil.store.logrows import (
    COLUMNS,
    EXCERPT_MAX,
    RULE_IDS_MAX,
    Batch,
    LogRow,
    copy_line,
    upgrade_line,
)

SITE = uuid.UUID("6f1c0e1e-8d0a-4c36-9d0e-2f5a4f3b9a11")
TS = datetime(2026, 12, 1, 18, 30, 0, 123456, tzinfo=UTC)


def row(**changes: object) -> LogRow:
    base = LogRow(ts=TS, site_id=SITE, host="shop.test", method="GET", path="/p",
                  query="q=1", status=200, bytes_in=0, bytes_out=1300, duration_ms=1.5,
                  origin_ms=0.75, client_ip="192.0.2.1", request_id="abc", user_agent="ua")
    return base._replace(**changes)


class CopyLineTests(SynchronousTestCase):
    """A row becomes one COPY text line with every column in order."""

    def test_fields_in_order(self) -> None:
        """Every column, in COLUMNS order, tab-separated, ending in a newline."""
        line = copy_line(row())
        self.assertTrue(line.endswith("\n"))
        fields = line[:-1].split("\t")
        self.assertEqual(len(fields), len(COLUMNS))
        self.assertEqual(fields, [
            "2026-12-01T18:30:00.123456+00:00", str(SITE), "shop.test", "GET", "/p", "q=1",
            "200", "0", "1300", "1.500", "0.750", "192.0.2.1", "abc", "ua",
            "\\N", "\\N", "\\N", "\\N", "f", "\\N", "\\N", "\\N"])

    def test_escapes(self) -> None:
        """Backslash, tab, newline and CR are escaped; NUL becomes U+FFFD; None is \\N."""
        line = copy_line(row(path="a\\b\tc\nd\re\x00", site_id=None, status=None,
                             blocked=True))
        fields = line[:-1].split("\t")
        self.assertEqual(fields[4], "a\\\\b\\tc\\nd\\re\ufffd")
        self.assertEqual((fields[1], fields[6], fields[COLUMNS.index("blocked")]),
                         ("\\N", "\\N", "t"))

    def test_escapes_every_text_column(self) -> None:
        """
        Every text column is escaped, whichever character needs it (each
        column has its own check for text that needs no escaping).
        """
        for column in ("host", "method", "path", "query", "client_ip", "request_id",
                       "user_agent", "classification", "classifier", "attack_type", "excerpt"):
            for special, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"),
                                     ("\r", "\\r"), ("\x00", "\ufffd")):
                line = copy_line(row(**{column: f"a{special}b\x01é"}))
                self.assertEqual(line[:-1].split("\t")[COLUMNS.index(column)],
                                 f"a{escaped}b\x01é", (column, special))
            plain = copy_line(row(**{column: "a/b c=é"}))
            self.assertEqual(plain[:-1].split("\t")[COLUMNS.index(column)], "a/b c=é")

    def test_times(self) -> None:
        """
        A UTC time is written with its microseconds (also when they are 0),
        whether or not the row before was in the same second; a time in
        another zone or without one is written as its C{isoformat}.
        """
        def stamp(ts: datetime) -> str:
            return copy_line(row(ts=ts)).split("\t", 1)[0]

        for ts in (TS, TS.replace(microsecond=999999), TS.replace(microsecond=0),
                   TS.replace(second=1, microsecond=7), TS, TS.replace(year=2027, second=1),
                   TS.replace(microsecond=1)):
            self.assertEqual(stamp(ts), ts.isoformat(timespec="microseconds"))
        east = TS.astimezone(timezone(timedelta(hours=2)))
        self.assertEqual(stamp(TS), "2026-12-01T18:30:00.123456+00:00")
        self.assertEqual(stamp(east), "2026-12-01T20:30:00.123456+02:00")
        self.assertEqual(stamp(TS.replace(tzinfo=None)), "2026-12-01T18:30:00.123456")

    def test_site_ids(self) -> None:
        """Equal site ids that are different objects give the same text; None is \\N."""
        again = uuid.UUID(str(SITE))
        other = uuid.uuid4()
        self.assertEqual([copy_line(row(site_id=s)).split("\t")[1]
                          for s in (SITE, again, other, SITE, None)],
                         [str(SITE), str(SITE), str(other), str(SITE), "\\N"])


    def test_verdict_fields(self) -> None:
        """
        Rule ids become an integer array, the score a number, the excerpt
        escaped text; excerpt and ids are cut to their bounds.
        """
        line = copy_line(row(classification="malicious", attack_type="sqli", blocked=True,
                             rule_ids=(942100, 941100), anomaly_score=10,
                             excerpt="GET /?id=1'\tOR"))
        self.assertEqual(line[:-1].split("\t")[-5:],
                         ["sqli", "t", "{942100,941100}", "10", "GET /?id=1'\\tOR"])
        long = copy_line(row(rule_ids=tuple(range(1000)), excerpt="x" * (EXCERPT_MAX + 10)))
        ids, _, excerpt = long[:-1].split("\t")[-3:]
        self.assertEqual(ids.count(",") + 1, RULE_IDS_MAX)
        self.assertEqual(len(excerpt), EXCERPT_MAX)

    def test_earlier_lines_upgraded(self) -> None:
        """A line written before the verdict columns existed gets them as NULL."""
        current = copy_line(row())
        earlier = "\t".join(current.split("\t")[:-3]) + "\n"
        self.assertEqual(upgrade_line(earlier), current)
        self.assertEqual(upgrade_line(current), current)
        self.assertEqual(Batch.from_lines([earlier]).lines, [current])


class BatchTests(SynchronousTestCase):
    """A batch knows its sites and months, also when read back from its lines."""

    def test_sites_and_months(self) -> None:
        """Sites (without None) and (year, month) pairs are collected."""
        other = uuid.uuid4()
        rows = [row(), row(site_id=None), row(site_id=other, ts=TS.replace(month=11))]
        batch = Batch.of(rows)
        self.assertEqual(len(batch), 3)
        self.assertEqual(batch.sites, {SITE, other})
        self.assertEqual(batch.months, {(2026, 12), (2026, 11)})
        again = Batch.from_lines(batch.lines)
        self.assertEqual((again.lines, again.sites, again.months),
                         (batch.lines, batch.sites, batch.months))

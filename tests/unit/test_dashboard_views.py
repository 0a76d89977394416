"""
The pure parts of the dashboard's pages: the SVG chart's geometry, top
lists, the request rebuilt from a logged excerpt and what an exclusion
covers, sizes in forms, the status steps, and the templates' filters.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from twisted.trial.unittest import SynchronousTestCase

from veil.dashboard import charts
from veil.dashboard.explain import Hit, RuleExplained, covers, request_from_excerpt
from veil.dashboard.pages.sites import parse_size, show_size, timeline
from veil.dashboard.render import detail, milliseconds, number, percent, size, when
from veil.store.admin import SiteDetail, StatusChange
from veil.store.logquery import Bucket, Count

START = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def bucket(n: int, requests: int, blocked: int = 0) -> Bucket:
    return Bucket(START + timedelta(hours=n), requests, blocked, 0, 0, None, None)


class SeriesTests(SynchronousTestCase):
    """The traffic chart's bars, grid and labels."""

    def test_stacked_bars(self) -> None:
        """Each bucket is a passed bar with its blocked part on top, scaled to a round peak."""
        chart = charts.series([bucket(0, 8, 2), bucket(1, 0), bucket(2, 4)], 3600)
        self.assertEqual([(b.css, b.height) for b in chart.bars],
                         [("bar-pass", 93.6), ("bar-block", 31.2), ("bar-pass", 62.4)])
        passed, blocked, third = chart.bars
        self.assertEqual(blocked.y + blocked.height, passed.y)
        self.assertEqual(passed.y + passed.height, charts.HEIGHT)
        self.assertEqual(third.x, 481.0)
        self.assertEqual([t.label for t in chart.y_ticks], ["10", "5", "0"])
        self.assertEqual(chart.x_labels, ("10:00", "11:00", "12:00"))
        self.assertEqual(blocked.title, "2026-12-01 10:00 UTC: 2 blocked")
        self.assertEqual(chart.summary, "12 requests, 2 blocked, in 3 buckets of 1 hour")
        self.assertFalse(chart.empty)

    def test_empty_and_labels(self) -> None:
        """No traffic draws no bar; long series get at most six labels, first and last."""
        chart = charts.series([bucket(n, 0) for n in range(48)], 1800)
        self.assertEqual(chart.bars, ())
        self.assertTrue(chart.empty)
        self.assertEqual(len(chart.x_labels), charts.X_LABELS)
        self.assertEqual(chart.x_labels[0], "10:00")
        self.assertEqual(chart.x_labels[-1], "09:00")
        days = charts.series([bucket(24 * n, 1) for n in range(3)], 86400)
        self.assertEqual(days.x_labels, ("01 Dec", "02 Dec", "03 Dec"))

    def test_top(self) -> None:
        """Top lists carry each entry's share of the first."""
        rows = charts.top([Count("/a", 40), Count("/b", 10)])
        self.assertEqual([(r.key, r.share) for r in rows], [("/a", 1.0), ("/b", 0.25)])
        self.assertEqual(charts.top([]), ())


class ExcerptTests(SynchronousTestCase):
    """The request a logged excerpt shows, and what a proposed exclusion covers."""

    def test_request_from_excerpt(self) -> None:
        """Request line, headers and body come back as the WAF reads them."""
        request = request_from_excerpt(
            "POST /search?q=1%27+or+1%3D1\nhost: shop.test\ncookie: session=***\n\nname=x")
        self.assertEqual(request.method, "POST")
        self.assertEqual(request.path, "/search")
        self.assertEqual(request.header("host"), "shop.test")
        self.assertEqual(request.body, b"name=x")
        bare = request_from_excerpt("")
        self.assertEqual(bare.path, "/")

    def test_covers(self) -> None:
        """An exclusion covers a rule's hits only if its path and target take them all."""
        rule = RuleExplained(3010, "sqli", 5, "critical", 1, "", (),
                             (Hit("args:q", "x"), Hit("uri", "/search?q=x")))
        self.assertTrue(covers(3010, rule, "/search", None, "/search/x"))
        self.assertFalse(covers(3010, rule, "/search", "args:q", "/search/x"))
        self.assertFalse(covers(3010, rule, "/admin", None, "/search/x"))
        cookies = RuleExplained(1, "xss", 5, "critical", 1, "", (),
                                (Hit("cookies:a", None), Hit("cookies:b", None)))
        self.assertTrue(covers(1, cookies, None, "cookies", "/"))


class FormValueTests(SynchronousTestCase):
    """Sizes as the settings form takes and shows them, and the status steps."""

    def test_sizes(self) -> None:
        """Units are 1024-based and case-insensitive; out of range or garbage is refused."""
        self.assertEqual(parse_size("100M"), 100 << 20)
        self.assertEqual(parse_size(" 512k "), 512 << 10)
        self.assertEqual(parse_size("2gib"), 2 << 30)
        self.assertEqual(parse_size("1234"), 1234)
        for bad in ("", "0", "lots", "5T", "-1", "2000g"):
            self.assertRaises(ValueError, parse_size, bad)
        self.assertEqual([show_size(v) for v in (None, 100 << 20, 65536, 1000, 3 << 30)],
                         ["default", "100M", "64k", "1000", "3G"])

    def test_timeline(self) -> None:
        """Steps before the current status are done, with the time each was entered."""
        verified = START + timedelta(minutes=5)
        site = SiteDetail(uuid.uuid4(), "shop.test", "http://o", "active", None, "block", 1, 5,
                          None, "inspect-prefix", False, True, False, 1, False, "t",
                          uuid.uuid4(), START, verified, verified,
                          history=(StatusChange("pending", None, START),
                                   StatusChange("active", None, verified)))
        steps = timeline(site)
        self.assertEqual([(s["key"], s["state"], s["at"]) for s in steps], [
            ("pending", "done", START), ("active", "current", verified),
            ("ssl_provisioning", "todo", None), ("live", "todo", None)])


class FilterTests(SynchronousTestCase):
    """The templates' filters: numbers, durations, shares, sizes, audit details, times."""

    def test_filters(self) -> None:
        """Each formats for people, and shows a dash for nothing."""
        self.assertEqual((number(12345), number(None)), ("12,345", "—"))
        self.assertEqual([milliseconds(v) for v in (0.42, 12.6, 1500.0, None)],
                         ["0.4 ms", "13 ms", "1.5 s", "—"])
        self.assertEqual([percent(v) for v in (0.0, 0.034, 0.5)], ["0 %", "3.4 %", "50 %"])
        self.assertEqual([size(v) for v in (512, 65536, 1536, 100 << 20)],
                         ["512 B", "64 KiB", "1.5 KiB", "100 MiB"])
        self.assertEqual(detail({"from": 1, "to": "two", "list": [1]}),
                         'from: 1, to: two, list: [1]')
        self.assertEqual(len(detail({"x": "y" * 400})), 300)
        self.assertEqual(detail({"site_id": "d3e01b0e-60a2-4f64-b9ac-c0e2e12f54ba"}),
                         "site_id: d3e01b0e…")
        self.assertEqual(when("2026-12-01T10:00:00+00:00"), "2026-12-01 10:00 UTC")
        self.assertEqual(when("not a time"), "not a time")

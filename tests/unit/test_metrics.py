"""Tests for L{veil.metrics}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from veil.metrics import Registry


class RegistryTests(SynchronousTestCase):
    """Counters and histograms render in Prometheus' text format."""

    def test_counter(self) -> None:
        """Counters add per label set and render with escaped labels."""
        registry = Registry()
        c = registry.counter("veil_bad_hellos_total", "Malformed ClientHellos")
        c.inc(reason="garbage")
        c.inc(2, reason='a"b')
        self.assertEqual(c.value(reason="garbage"), 1)
        text = registry.render()
        self.assertIn("# TYPE veil_bad_hellos_total counter", text)
        self.assertIn('veil_bad_hellos_total{reason="garbage"} 1', text)
        self.assertIn('veil_bad_hellos_total{reason="a\\"b"} 2', text)

    def test_histogram_cumulative(self) -> None:
        """Histogram buckets are cumulative, with a sum and a count."""
        registry = Registry()
        h = registry.histogram("veil_t_seconds", "t")
        for value in (0.0001, 0.003, 0.003, 50.0):
            h.observe(value, desc="x")
        text = registry.render()
        self.assertIn('veil_t_seconds_bucket{desc="x",le="0.0005"} 1', text)
        self.assertIn('veil_t_seconds_bucket{desc="x",le="0.005"} 3', text)
        self.assertIn('veil_t_seconds_bucket{desc="x",le="30"} 3', text)
        self.assertIn('veil_t_seconds_bucket{desc="x",le="+Inf"} 4', text)
        self.assertIn('veil_t_seconds_count{desc="x"} 4', text)
        self.assertEqual(h.count(desc="x"), 4)

    def test_same_name_same_metric(self) -> None:
        """Asking twice for a name gives the same metric."""
        registry = Registry()
        self.assertIs(registry.counter("a", "x"), registry.counter("a", "y"))

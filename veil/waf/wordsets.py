"""
Word sets for the SQLi and XSS detectors' tables, written as text.
"""

from __future__ import annotations


def words(text: str) -> frozenset[str]:
    """The whitespace-separated words of C{text}, as a set."""
    return frozenset(text.split())
